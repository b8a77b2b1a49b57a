"""`LMTask`: next-token training of the hybrid LaCT language model, its metrics and generation.

Metrics come from summed token NLL, token and byte counts (all-reduced, so DDP/FSDP-correct):
``loss`` (nats per token), ``ppl = exp(loss)``, ``bpb = NLL / (ln 2 · bytes)``, exact for every
tokenizer since each label's UTF-8 byte count is known. ``test`` also logs two trivial baselines over
the same tokens and bytes: ``test/baseline/uniform_bpb`` (every token equally likely over the model's
vocabulary: tokens · ln V nats) and ``test/baseline/unigram_bpb`` (each label's NLL under the token
frequencies of the training labels, counted during ``fit`` into the ``unigram_counts`` buffer saved
with the model, add-one smoothed). ``test`` also reports the loss by token
position (the paper's main LM plot) as ``loss_by_position.json`` in the log folder and as a
TensorBoard figure (matplotlib). ``predict`` continues prompts (see ``TextDataModule``) and writes them to
``<log_dir>/predictions/``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from torchmetrics import Metric

from lact_app.constants import IGNORE_INDEX
from lact_app.models.lm import LM_BACKBONE, LM_FAST_WEIGHT, LaCTLM
from lact_app.nn import BackboneConfig, FastWeightConfig
from lact_app.nn.packing import Packing
from tasks.base import LaCTTask


class TokenLoss(Metric):
    """Summed NLL, tokens and bytes, overall and in ``num_buckets`` equal position buckets, and the
    summed NLL of a unigram baseline over the same tokens.

    Args:
        num_buckets: equal position buckets of the loss-by-position curve.
        vocab_size: V of the uniform baseline (``uniform_bpb``: tokens · ln V nats per byte); 0: none.
    """

    full_state_update = False

    def __init__(self, num_buckets: int = 16, vocab_size: int = 0):
        super().__init__()
        self.num_buckets = num_buckets
        self.vocab_size = vocab_size
        for name, shape in (("nll", ()), ("tokens", ()), ("bytes", ()), ("unigram_nll", ()),
                            ("bucket_nll", (num_buckets,)), ("bucket_tokens", (num_buckets,))):
            self.add_state(name, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.seq_len = 0

    def update(self, nll: torch.Tensor, mask: torch.Tensor, label_bytes: torch.Tensor,
               unigram_nll: torch.Tensor | None = None, positions: torch.Tensor | None = None,
               span: int | None = None) -> None:
        """nll, mask, label_bytes: [N, T] (nll zero where mask is False); unigram_nll: [N, T], the
        baseline's NLL of the same labels (zero where mask is False), or None; positions: [N, T]
        each token's position in its document (default: 0 … T − 1 per row). The loss-by-position
        curve covers positions [0, span) (default T); later positions count in the totals only."""
        T = nll.size(1)
        span = span or T
        self.seq_len = span
        if positions is None:
            positions = torch.arange(T, device=nll.device).expand_as(nll)
        in_curve = positions < span
        bucket = (positions.clamp(max=span - 1) * self.num_buckets // span).flatten()
        # out of place: states reset under inference mode (``validate``) must not be updated in place
        # under ``no_grad`` (validation inside ``fit``)
        self.nll = self.nll + nll.double().sum()
        self.tokens = self.tokens + mask.sum()
        self.bytes = self.bytes + label_bytes.sum()
        if unigram_nll is not None:
            self.unigram_nll = self.unigram_nll + unigram_nll.double().sum()
        self.bucket_nll = self.bucket_nll.index_add(0, bucket, (nll.double() * in_curve).flatten())
        self.bucket_tokens = self.bucket_tokens.index_add(0, bucket, (mask & in_curve).double().flatten())

    def compute(self) -> dict[str, torch.Tensor]:
        loss = self.nll / self.tokens.clamp(min=1)
        bits = math.log(2) * self.bytes.clamp(min=1)
        metrics = {
            "loss": loss,
            "ppl": loss.exp(),
            "bpb": self.nll / bits,
            "unigram_bpb": self.unigram_nll / bits,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "loss_by_position": self.bucket_nll / self.bucket_tokens.clamp(min=1),
            "tokens_by_position": self.bucket_tokens,
        }
        if self.vocab_size:
            metrics["uniform_bpb"] = self.tokens * math.log(self.vocab_size) / bits
        return metrics


def label_nll(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """logits: [N, T, V], labels: [N, T] -> NLL [N, T] in fp32, zero where the label is ``IGNORE_INDEX``
    (with ``label_smoothing`` ε: the cross-entropy against (1 − ε)·one-hot + ε/V)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="none", label_smoothing=label_smoothing).view_as(labels)


def token_positions(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each input token's position in its document: [N, T] (packed: from ``cu_seqlens``; one long
    document's rows: consecutive; plain windows: 0 … T − 1 per row)."""
    ids = batch["input_ids"]
    N, T = ids.shape
    if batch.get("cu_seqlens") is not None:
        return Packing(batch["cu_seqlens"], T, ids.device).positions[None]
    if batch.get("one_document"):
        return torch.arange(N * T, device=ids.device).view(N, T)
    return torch.arange(T, device=ids.device).expand(N, T)


def loss_by_position_figure(bucket_start: list[int], losses: list[float]) -> Figure:
    """Line plot of the loss by token position: one point per bucket, at its first position.

    A bare ``Figure`` on matplotlib's Agg canvas: no pyplot state, no display needed.
    """
    fig = Figure(figsize=(4.8, 3.0), dpi=100, layout="tight")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(bucket_start, losses, marker="o")
    ax.set(xlabel="token position", ylabel="loss (nats / token)", title="test loss by position")
    ax.grid(alpha=0.3)
    return fig


class LMTask(LaCTTask):
    """Causal language modelling with :class:`lact_app.models.lm.LaCTLM`.

    Args:
        vocab_size: model vocabulary; at least the tokenizer's (byte: 258, GPT-2: 50257).
        backbone: width d, layers (``depth``), attention ``heads``, SwiGLU ``mlp_ratio`` (null: the
            reference's 256·⌈⌊8d/3⌋/256⌉) and ``rope_theta``; default: this project's CPU-scale LM.
        window: sliding-window attention size w (tokens, including the current one).
        memory: ``"lact"`` (window attention + LaCT), ``"full_attention"`` (plain causal
            attention: the Transformer baseline) or ``"none"`` (window attention only).
        fast_weight: the LaCT layers' knobs (``chunk``: apply-then-update chunk in tokens, window
            >= chunk recommended; ``heads``: D = d / heads; ``use_momentum``, ``use_muon``,
            ``w_init`` …); default: the reference LM's.
        fast_rope: RoPE on the fast-weight q, k (False: the official ``ttt_nope``).
        fast_v_silu: silu on the fast-weight v (False: the official ``no_v_silu``).
        tie_embeddings: the output head shares the embedding matrix (official ``tie_word_embeddings``).
        norm_eps: eps of the RMSNorms.
        initializer_range: std of the normal init of linear and embedding weights.
        position_buckets: number of equal position buckets of the test loss-by-position curve.
        label_smoothing: ε of the training loss only (targets (1 − ε)·one-hot + ε/V): every token
            keeps about ε/V of probability, so a byte never seen in training (tinyshakespeare has no
            ``"``) costs about log2(V/ε) bits on new text instead of ~27; ``train/loss`` includes
            it, validation and test score plain NLL.
        **kwargs: optimisation and scale options, see ``LaCTTask``.
    """

    def __init__(
        self,
        vocab_size: int = 258,
        backbone: BackboneConfig = LM_BACKBONE,
        window: int = 512,
        memory: str = "lact",
        fast_weight: FastWeightConfig = LM_FAST_WEIGHT,
        fast_rope: bool = True,
        fast_v_silu: bool = True,
        tie_embeddings: bool = False,
        norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        position_buckets: int = 16,
        label_smoothing: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = label_smoothing
        self.model = LaCTLM(
            vocab_size, backbone=BackboneConfig.coerce(backbone), window=window, memory=memory,
            fast_weight=FastWeightConfig.coerce(fast_weight), fast_rope=fast_rope, fast_v_silu=fast_v_silu,
            tie_embeddings=tie_embeddings, norm_eps=norm_eps, initializer_range=initializer_range,
        )  # fmt: skip
        self.val_metric = TokenLoss(position_buckets)
        self.test_metric = TokenLoss(position_buckets, vocab_size=vocab_size)
        # Label counts of the training data (all ranks'), saved with the model: the unigram baseline.
        # int64: exact, and left alone by precision casts of floating tensors.
        self.register_buffer("unigram_counts", torch.zeros(vocab_size, dtype=torch.long))
        self.position_span: Optional[int] = None  # set from the datamodule's seq_len in setup

    # -- hooks of the base ------------------------------------------------------------------------

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def setup(self, stage: str) -> None:
        self.position_span = getattr(self.trainer.datamodule, "seq_len", None)
        data_vocab = getattr(self.trainer.datamodule, "vocab_size", None)
        if data_vocab is not None and data_vocab > self.model.vocab_size:
            raise ValueError(f"the tokenizer has {data_vocab} tokens but the model only {self.model.vocab_size}: "
                             f"set --model.init_args.vocab_size={data_vocab} (or more)")

    # -- model --------------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids: [B, T] (packed: [1, T] with cu_seqlens [N + 1]) -> logits [B, T, V]."""
        return self.model(input_ids, cu_seqlens=cu_seqlens)

    def generate(self, prompt_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: Optional[int] = None, use_cache: bool = True) -> torch.Tensor:
        """prompt_ids: [B, P] -> new tokens [B, max_new_tokens] (see ``LaCTLM.generate``)."""
        with self.inference_weights():
            return self.model.generate(prompt_ids, max_new_tokens, temperature, top_k=top_k, use_cache=use_cache)

    def token_nll(self, batch: dict[str, torch.Tensor], label_smoothing: float = 0.0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token NLL [N, T] (zero where there is no label; smoothed with ``label_smoothing``) and
        the label mask [N, T].

        A packed batch (``cu_seqlens``) is one row of documents each computed alone; a
        ``one_document`` batch holds one long document's consecutive windows as rows, scored
        window after window with the model's cache carried over (every token sees all its context).
        """
        labels = batch["labels"]
        if batch.get("one_document"):
            cache = self.model.new_cache()
            nll = torch.cat([label_nll(self.model(ids[None], cache), row[None])
                             for ids, row in zip(batch["input_ids"], labels)])  # fmt: skip
        else:
            nll = label_nll(self(batch["input_ids"], batch.get("cu_seqlens")), labels, label_smoothing)
        return nll, labels != IGNORE_INDEX

    def eval_update(self, metric: TokenLoss, batch: dict[str, torch.Tensor], unigram: bool = False) -> None:
        """Adds a validation / test batch to ``metric``; the loss-by-position curve spans the
        datamodule's ``seq_len`` (the training context) of positions in the document."""
        metric.update(*self.token_nll(batch), batch["label_bytes"],
                      self.unigram_nll(batch["labels"]) if unigram else None,
                      positions=token_positions(batch), span=self.position_span)  # fmt: skip

    # -- steps --------------------------------------------------------------------------------------

    def count_labels(self, labels: torch.Tensor) -> None:
        """Adds the batch's labels (not ``IGNORE_INDEX``), summed over ranks, to ``unigram_counts``.
        Every rank adds the same sum, so the buffer stays equal on all ranks (DDP broadcasts it)."""
        counts = torch.bincount(labels[labels != IGNORE_INDEX].flatten(), minlength=self.unigram_counts.numel())
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(counts)  # V integers per step
        self.unigram_counts += counts.to(self.unigram_counts)

    def unigram_nll(self, labels: torch.Tensor) -> torch.Tensor:
        """NLL [N, T] of each label under the add-one smoothed ``unigram_counts`` (zero on padding)."""
        counts = self.unigram_counts.double() + 1
        log_p = counts.log() - counts.sum().log()
        mask = labels != IGNORE_INDEX
        return torch.where(mask, -log_p[labels.clamp(min=0)], 0.0)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A checkpoint saved before the unigram counts existed loads with zero counts: its
        ``unigram_bpb`` is then the uniform baseline (add-one smoothing of no counts)."""
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("state_dict")
        if state is not None and "unigram_counts" not in state:
            state["unigram_counts"] = torch.zeros_like(self.unigram_counts)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            self.count_labels(batch["labels"])
        nll, mask = self.token_nll(batch, self.label_smoothing)
        loss = nll.sum() / mask.sum().clamp(min=1)
        self.log("train/loss", loss, prog_bar=True, batch_size=mask.size(0))
        self.log_throughput("train", batch["input_ids"].numel(), "tokens")
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.eval_update(self.val_metric, batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.eval_update(self.test_metric, batch, unigram=True)

    def on_validation_epoch_end(self) -> None:
        self.log_summary("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        metrics = self.log_summary("test", self.test_metric)
        for key in ("tokens", "bytes"):  # what was scored (already summed over ranks)
            self.log(f"test/{key}", metrics[key])
        for key in ("uniform_bpb", "unigram_bpb"):
            self.log(f"test/baseline/{key}", metrics[key].float(), sync_dist=True)
        self.report_loss_by_position(metrics)

    def log_summary(self, stage: str, metric: TokenLoss) -> dict[str, torch.Tensor]:
        """Logs ``{stage}/loss``, ``/ppl``, ``/bpb`` (already all-reduced) and resets ``metric``."""
        metrics = metric.compute()
        metric.reset()
        for key in ("loss", "ppl", "bpb"):  # equal on every rank: the sync is a no-op average
            self.log(f"{stage}/{key}", metrics[key].float(), prog_bar=key == "loss", sync_dist=True)
        return metrics

    def report_loss_by_position(self, metrics: dict[str, torch.Tensor]) -> None:
        """Writes ``loss_by_position.json`` next to the logs and logs the curve as an image (rank 0)."""
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        if not self.trainer.is_global_zero:
            return
        T, nb = self.test_metric.seq_len, self.test_metric.num_buckets
        losses = metrics["loss_by_position"].tolist()
        report = {
            "seq_len": T,
            "bucket_start": [-(-i * T // nb) for i in range(nb)],  # bucket of position t: t · nb // T
            "loss": losses,
            "tokens": metrics["tokens_by_position"].tolist(),
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "loss_by_position.json").write_text(json.dumps(report, indent=2))
        writer = self.tensorboard()
        if writer is not None:
            figure = loss_by_position_figure(report["bucket_start"], losses)
            writer.add_figure("test/loss_by_position", figure, self.global_step)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Continues one prompt; appends it to ``predictions/generations-rank<r>.jsonl`` and a ``.txt``."""
        new = self.generate(batch["input_ids"], batch["max_new_tokens"], batch["temperature"], batch["top_k"])
        text = self.trainer.datamodule.tokenizer.decode(new[0])
        record = {"prompt": batch["prompt"], "completion": text, "tokens": new[0].tolist()}
        out = self.predictions_dir()
        with open(out / f"generations-rank{self.global_rank}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        (out / f"sample{batch_idx:04d}-rank{self.global_rank}.txt").write_text(batch["prompt"] + text, encoding="utf-8")
        return record
