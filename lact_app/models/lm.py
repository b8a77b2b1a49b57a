"""The LaCT language model (LACT_SPEC.md §3.1) and its cached generation.

embedding → N × :class:`~lact_app.nn.hybrid.HybridBlock` (window attention + LaCT, shared qkv)
→ RMSNorm → untied LM head. Logits at position t depend on tokens ≤ t only: the window attention
is causal and the fast weights a token reads have seen earlier chunks only.

Generation streams: the prompt is prefilled in one pass into a cache (one
:class:`~lact_app.nn.MixerCache` per layer: fast weights, the incomplete chunk and a KV ring of the
window, preallocated and written in place), then tokens are decoded one at a time against it, so
memory and per-token time stay flat as the context grows.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ..nn import BackboneConfig, FastWeightConfig, MixerCache
from ..nn.hybrid import HybridBlock, HybridLaCTAttention
from ..nn.packing import Packing

#: The reference LM's LaCT layer (LACT_SPEC.md §3.2): 4 heads of D = H = d / 4, momentum,
#: low-rank + 0.5·I initial w0/w2; chunks of 512 tokens at this project's CPU scale (2048 there).
LM_FAST_WEIGHT = FastWeightConfig(chunk=512, heads=4, inter_multi=1.0, use_momentum=True, w_init="low_rank")

#: The LM trunk at this project's CPU scale (the reference: d = 1536, 24 layers, 24 heads): the
#: reference's SwiGLU width rule and RoPE base 10⁶.
LM_BACKBONE = BackboneConfig(mlp_ratio=None, rope_theta=1e6)


def default_mlp_hidden(dim: int) -> int:
    """The SwiGLU width of the reference (fla ``GatedMLP``, ratio 4): 256·⌈⌊8d/3⌋ / 256⌉."""
    return 256 * math.ceil(int(dim * 4 * 2 / 3) / 256)


class LMCache(list):
    """The decoding state of a model: one :class:`~lact_app.nn.MixerCache` per layer, advanced in
    place by :meth:`LaCTLM.forward` (its preallocated buffers too: a copy of the list taken earlier
    does not keep an earlier state)."""

    @property
    def pos(self) -> int:
        """Tokens consumed so far (the position of the next token)."""
        return self[0].pos


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """The next token from logits: [B, V] -> [B, 1] (greedy at temperature 0)."""
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)


class LaCTLM(nn.Module):
    """Decoder-only LM with hybrid LaCT + sliding-window layers.

    Args:
        vocab_size: size of the embedding and of the output head.
        backbone: width d, layers, attention heads, SwiGLU width (``mlp_ratio`` None: the
            reference's rule, :func:`default_mlp_hidden`) and RoPE base (default :data:`LM_BACKBONE`).
        window: sliding-window size w of the attention.
        memory: ``"lact"`` (window attention + LaCT), ``"full_attention"`` (plain causal attention,
            the Transformer baseline) or ``"none"`` (window attention only).
        fast_weight: the LaCT layers' knobs (default: the reference's, :data:`LM_FAST_WEIGHT`).
        fast_rope: RoPE on the fast q, k.
        fast_v_silu: silu on the fast v (False: the official ``no_v_silu``).
        tie_embeddings: the output head shares the embedding matrix (official ``tie_word_embeddings``).
        norm_eps: eps of the block and final RMSNorms.
        initializer_range: std of the normal init of every Linear and the embedding (biases zero).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        backbone: BackboneConfig = LM_BACKBONE,
        window: int = 512,
        memory: str = "lact",
        fast_weight: FastWeightConfig = LM_FAST_WEIGHT,
        fast_rope: bool = True,
        fast_v_silu: bool = True,
        tie_embeddings: bool = False,
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
    ):
        super().__init__()
        self.vocab_size = vocab_size
        dim = backbone.dim
        self.embed = nn.Embedding(vocab_size, dim)
        hidden = backbone.mlp_hidden(default_mlp_hidden)
        self.blocks = nn.ModuleList(
            HybridBlock(
                HybridLaCTAttention(backbone, window=window, memory=memory, fast_weight=fast_weight, fast_rope=fast_rope,
                                    fast_v_silu=fast_v_silu),
                dim, hidden, norm_eps=norm_eps,
            )  # fmt: skip
            for _ in range(backbone.depth)
        )
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.initializer_range = initializer_range
        self.apply(self._init_linear)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def _init_linear(self, module: nn.Module) -> None:
        """N(0, initializer_range) for Linear and Embedding weights, zero biases (LACT_SPEC.md §3.1)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.initializer_range)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, input_ids: torch.Tensor, cache: Optional[LMCache] = None, cu_seqlens: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """input_ids: [B, T] -> logits [B, T, V].

        Without a cache the tokens are whole sequences from position 0; with one they continue
        the cached sequence and the cache is advanced in place. With ``cu_seqlens`` ([N + 1] int,
        0 … T; B = 1, no cache) the row packs N documents ``[cu_seqlens[i], cu_seqlens[i + 1])``,
        each computed as if alone: its own RoPE positions from 0, attention inside it, LaCT chunks
        aligned to its start from fresh fast weights. Documents of one length L (a row of windows
        cut from long texts) run as the batch [T / L, L]: the same maths without per-document
        masks and schedules (a third less time per training step at L = 256).
        """
        packing = None
        if cu_seqlens is not None:
            if cache is not None or input_ids.size(0) != 1:
                raise ValueError(f"packed documents (cu_seqlens) need one row [1, T] and no cache, "
                                 f"got input_ids {tuple(input_ids.shape)} and cache={cache is not None}")
            packing = Packing(cu_seqlens, input_ids.size(1), input_ids.device)
            if packing.uniform_length is not None:
                return self(input_ids.view(-1, packing.uniform_length)).reshape(1, input_ids.size(1), -1)
        x = self.embed(input_ids)
        # every layer rotates the same positions with the same RoPE: the angles are computed once
        rotation = self.blocks[0].mixer.rotation(x, None if cache is None else cache[0], packing)
        for i, block in enumerate(self.blocks):
            x, layer_cache = block(x, None if cache is None else cache[i], packing, rotation=rotation)
            if cache is not None:
                cache[i] = layer_cache
        return self.head(self.norm(x))

    def new_cache(self) -> LMCache:
        """An empty cache to stream a sequence through :meth:`forward`."""
        return LMCache(MixerCache() for _ in self.blocks)

    def generate(
        self,
        prompt_ids: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: Optional[int] = None,
        use_cache: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Continue prompts: prompt_ids: [B, P] (P >= 1) -> new tokens [B, max_new_tokens].

        With ``use_cache`` the prompt is prefilled in one pass and each new token costs one
        single-token step; without it every step recomputes the whole sequence (same result).
        """
        if prompt_ids.size(1) < 1:
            raise ValueError("generate needs a prompt of at least one token (e.g. the BOS token)")
        # inference mode, not just no_grad: no autograd bookkeeping at all, ~8 % of a decoding step
        with torch.inference_mode():
            cache = self.new_cache() if use_cache else None
            tokens, step_input = prompt_ids, prompt_ids
            for _ in range(max_new_tokens):
                logits = self(step_input, cache) if use_cache else self(tokens)
                nxt = sample_next(logits[:, -1], temperature, top_k=top_k, generator=generator)
                tokens = torch.cat([tokens, nxt], dim=1)
                step_input = nxt
        return tokens[:, prompt_ids.size(1) :].clone()  # a normal tensor again: callers may use it under autograd
