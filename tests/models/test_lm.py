"""LaCTLM: token-level causality, cached generation == teacher forcing, streaming prefill, ablations."""

import pytest
import torch

from lact_app.models.lm import LaCTLM, default_mlp_hidden, sample_next
from lact_app.nn import BackboneConfig, FastWeightConfig, attend, causal_window_mask, kv_buffer
from lact_app.nn.hybrid import window_attention

pytestmark = pytest.mark.timeout(120)

VOCAB, CHUNK, WINDOW = 50, 16, 16


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine run several times faster on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(memory: str = "lact", w_init: str = "low_rank") -> LaCTLM:
    torch.manual_seed(0)
    fast_weight = FastWeightConfig(chunk=CHUNK, heads=2, inter_multi=1.0, use_momentum=True, use_muon=True,
                                   w_init=w_init, low_rank=4)  # fmt: skip
    backbone = BackboneConfig(dim=32, depth=2, heads=4, mlp_ratio=None, rope_theta=1e6)
    return LaCTLM(VOCAB, backbone=backbone, window=WINDOW, memory=memory, fast_weight=fast_weight,
                  initializer_range=0.2).eval()  # fmt: skip


def _tokens(B: int, T: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("memory", ["lact", "full_attention", "none"])
def test_causality(memory):
    model, T = _model(memory), 3 * CHUNK + 5
    ids = _tokens(2, T)
    logits = model(ids)
    for t in (0, CHUNK - 1, CHUNK, 2 * CHUNK + 3, T - 1):
        changed = ids.clone()
        changed[:, t] = (changed[:, t] + 1) % VOCAB
        out = model(changed)
        torch.testing.assert_close(out[:, :t], logits[:, :t], rtol=0, atol=1e-5)
        assert (out[:, t] - logits[:, t]).abs().max() > 1e-4


def test_later_chunks_read_earlier_chunks_through_fast_weights():
    """Beyond the window, only the fast weights carry information: a token 2 chunks back still matters."""
    model = _model("lact")
    ids = _tokens(1, 3 * CHUNK)
    changed = ids.clone()
    changed[:, 0] = (changed[:, 0] + 1) % VOCAB
    diff = (model(changed) - model(ids)).abs()[0].amax(-1)
    assert diff[2 * CHUNK :].min() > 1e-5  # out of every window, in the fast weights
    window_only = _model("none")
    diff = (window_only(changed) - window_only(ids)).abs()[0].amax(-1)
    assert diff[2 * (WINDOW - 1) + 1 :].max() == 0  # two stacked windows reach back 2·(w − 1)


@pytest.mark.parametrize("memory", ["lact", "full_attention", "none"])
def test_cached_greedy_generation_matches_teacher_forcing(memory):
    model = _model(memory)
    prompt = _tokens(2, 7)
    new = model.generate(prompt, max_new_tokens=2 * (WINDOW + CHUNK) + 3, use_cache=True)
    full = torch.cat([prompt, new], dim=1)
    logits = model(full)[:, prompt.size(1) - 1 : -1]  # the logits that chose each new token
    # Each generated token is the argmax of the teacher-forced logits at its step (up to near-ties).
    chosen = logits.gather(-1, new.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(chosen, logits.amax(-1), rtol=0, atol=1e-4)
    # And the cached logits equal the teacher-forced ones at every step.
    cache = model.new_cache()
    stepped = [model(prompt, cache)[:, -1]]
    stepped += [model(new[:, i : i + 1], cache)[:, -1] for i in range(new.size(1) - 1)]
    torch.testing.assert_close(torch.stack(stepped, dim=1), logits, rtol=1e-4, atol=1e-4)


def test_generation_without_cache_is_the_same():
    model = _model()
    prompt = _tokens(1, 5)
    cached = model.generate(prompt, 2 * CHUNK + 2, use_cache=True)
    recomputed = model.generate(prompt, 2 * CHUNK + 2, use_cache=False)
    assert torch.equal(cached, recomputed)


@pytest.mark.parametrize("split", [CHUNK // 2 + 1, CHUNK, 2 * CHUNK + 3])
def test_streaming_prefill_in_two_pieces(split):
    # float64: in fp32 the pieces' different matmul shapes round differently (up to ~2e-5 here)
    model = _model().double()
    ids = _tokens(2, 3 * CHUNK + 5)
    one_shot = model(ids)
    cache = model.new_cache()
    first, second = model(ids[:, :split], cache), model(ids[:, split:], cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), one_shot, rtol=1e-5, atol=1e-5)
    assert cache.pos == ids.size(1)


@pytest.mark.parametrize("memory", ["lact", "full_attention", "none"])
def test_single_token_steps_equal_one_prefill(memory):
    """N decoding steps leave the cache one N-token prefill leaves: the same logits, fast weights,
    pending chunk and window keys, across chunk boundaries and ring wrap-arounds."""
    model = _model(memory).double()
    ids = _tokens(2, 3 * CHUNK + 5)  # 3 completed chunk updates, the ring (WINDOW slots) wrapped 3 times
    prefilled, stepped = model.new_cache(), model.new_cache()
    logits = model(ids, prefilled)
    steps = torch.cat([model(token, stepped) for token in ids.split(1, dim=1)], dim=1)
    # Equal also after the updates: a decoding step runs no lr / momentum head (they run in fp32 by
    # design, so one token and N round differently); the completed chunk computes them at once from
    # its kept layer inputs, as the prefill does.
    tol = {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(steps, logits, **tol)
    window = model.blocks[0].mixer.window
    for one, many in zip(prefilled, stepped):
        assert one.pos == many.pos == ids.size(1)
        for a, b in zip(*(kv_buffer.in_order((c.keys, c.values), c.pos, window)[0] for c in (one, many))):
            torch.testing.assert_close(a, b, **tol)
        if memory == "lact":
            for field in ("w02", "w1", "mom02", "mom1"):
                torch.testing.assert_close(getattr(one.fast, field), getattr(many.fast, field), **tol)
            for a, b in zip(one.pending.head(5), many.pending.head(5)):  # k, v, x
                torch.testing.assert_close(a, b, **tol)


def test_cache_stays_bounded():
    """The window ring and the pending chunk are allocated once; decoding writes into them in place."""
    model = _model()
    cache = model.new_cache()
    model(_tokens(1, 5 * CHUNK + 3), cache)
    layer = cache[0]
    assert layer.keys.size(2) == WINDOW  # the w − 1 earlier keys and the decoded token's own
    assert layer.pending.k.size(1) == CHUNK and layer.fast.mom02 is not None
    storage = [t.data_ptr() for t in (layer.keys, layer.values, *layer.pending)]
    for token in _tokens(1, 2 * CHUNK + 1).split(1, dim=1):
        model(token, cache)
    assert [t.data_ptr() for t in (cache[0].keys, cache[0].values, *cache[0].pending)] == storage


def test_full_attention_cache_doubles():
    model = _model("full_attention")
    cache = model.new_cache()
    model(_tokens(1, 20), cache)
    assert cache[0].keys.size(2) == 20
    model(_tokens(1, 1), cache)
    assert cache[0].keys.size(2) == 40 and cache.pos == 21


def test_window_attention_matches_dense_mask():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 8, generator=g) for _ in range(3))
    for window in (1, 5, 16, None):
        dense = attend(q, k, v, causal_window_mask(37, window))
        torch.testing.assert_close(window_attention(q, k, v, window), dense, rtol=1e-5, atol=1e-6)
    # queries 30.. against keys 20.. (a rolling cache)
    dense = attend(q[:, :, 30:], k[:, :, 20:], v[:, :, 20:], causal_window_mask(7, 5, 30, key_offset=20))
    out = window_attention(q[:, :, 30:], k[:, :, 20:], v[:, :, 20:], 5, q_offset=30, k_offset=20)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)


def test_low_rank_init_and_mlp_width():
    model = _model(w_init="low_rank")
    fast = model.blocks[0].mixer.lact.branch
    w0, _, _ = fast.initial_weights()
    eye_part = w0 - fast.w0_left @ fast.w0_right
    torch.testing.assert_close(eye_part, 0.5 * torch.eye(16).expand_as(eye_part))
    assert default_mlp_hidden(1536) == 4096 and default_mlp_hidden(3072) == 8192


def test_sampling():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.0]])
    assert sample_next(logits).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 10.0, top_k=2, generator=g).item() for _ in range(50)}
    assert draws == {1, 3}


def test_gradients_reach_every_parameter():
    model = _model().train()
    model(_tokens(2, 2 * CHUNK + 3)).logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
