"""Attention helpers and module against hand-written loops."""

import math

import pytest
import torch

from lact_app.nn import (
    Attention,
    RotaryEmbedding,
    attend,
    causal_window_blocks,
    causal_window_mask,
    interleaved_layout,
    merge_views,
    per_view,
    segment_blocks,
    segment_keys,
)
from tests.nn.dense_masks import block_diagonal_mask, chunk_local_mask, dense_mask


def _qkv(B=2, h=2, L=6, d=4, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, h, L, d, generator=g, dtype=dtype) for _ in range(3)]


def _loop_attention(q, k, v, mask):
    out = torch.zeros_like(q)
    for b in range(q.size(0)):
        for h in range(q.size(1)):
            for i in range(q.size(2)):
                keys = mask[i].nonzero().flatten()
                scores = torch.stack([q[b, h, i] @ k[b, h, j] for j in keys]) / math.sqrt(q.size(-1))
                weights = scores.softmax(0)
                out[b, h, i] = sum(w * v[b, h, j] for w, j in zip(weights, keys))
    return out


def test_attend_with_mask_equals_loop():
    q, k, v = _qkv(B=1)
    mask = causal_window_mask(6, window=3)
    torch.testing.assert_close(attend(q, k, v, mask), _loop_attention(q, k, v, mask), rtol=0, atol=1e-12)
    causal = attend(q, k, v, causal_window_mask(6))
    torch.testing.assert_close(attend(q, k, v, is_causal=True), causal, rtol=0, atol=1e-12)


def test_segment_blocks_equal_the_chunk_local_mask():
    layout = interleaved_layout(3, 2, repeats=2)
    q, k, v = _qkv(L=sum(s.length for s in layout))
    for context in (None, 1):
        mask = chunk_local_mask(layout, clean_context=context)
        expected = attend(q, k, v, mask)
        blocks = segment_blocks(layout, segment_keys(layout, context))
        torch.testing.assert_close(attend(q, k, v, blocks=blocks), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(expected, _loop_attention(q, k, v, mask), rtol=0, atol=1e-12)


def test_segment_blocks_from_a_later_segment_count_queries_from_it():
    layout = interleaved_layout(3, 2)  # N0 | C0 N1 | C1 N2: queries of C0 onwards only
    q, k, v = _qkv(L=10)
    blocks = segment_blocks(layout, segment_keys(layout), first=1)
    assert blocks[0].start == 0 and blocks[-1].end == 8
    full = attend(q, k, v, mask=chunk_local_mask(layout))
    torch.testing.assert_close(attend(q[:, :, 2:], k, v, blocks=blocks), full[:, :, 2:], rtol=0, atol=1e-12)


def test_causal_window_blocks_equal_the_dense_window_mask():
    q, k, v = _qkv(L=11)
    for window in (1, 3, 4, None):
        blocks = causal_window_blocks(11, window)
        assert torch.equal(dense_mask(blocks, 11), causal_window_mask(11, window))
        expected = attend(q, k, v, causal_window_mask(11, window))
        torch.testing.assert_close(attend(q, k, v, blocks=blocks), expected, rtol=0, atol=1e-12)
    # streaming: queries 7..10 over keys 5..10 (a rolling cache) see what the full sequence shows them
    blocks = causal_window_blocks(4, 3, q_offset=7, k_offset=5)
    out = attend(q[:, :, 7:], k[:, :, 5:], v[:, :, 5:], blocks=blocks)
    torch.testing.assert_close(out, attend(q, k, v, causal_window_mask(11, 3))[:, :, 7:], rtol=0, atol=1e-12)


def test_window_blocks_share_masks_and_the_backward_keeps_one_copy_of_each():
    """sdpa would save a float copy of a bool mask per block and layer; shared masks are saved once."""
    blocks = causal_window_blocks(40, 8)
    assert len({id(b.mask) for b in blocks}) == 2  # the first block, then the interior blocks alike
    assert causal_window_blocks(40, 8) is blocks  # every layer gets the same blocks
    q, k, v = (t.requires_grad_() for t in _qkv(L=40))
    masks = set()

    def pack(t):
        if t.shape[-2:] in ((8, 8), (8, 15)) and t.dim() == 2:
            masks.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        for _ in range(3):  # three layers
            out = attend(q, k, v, blocks=blocks)
    assert len(masks) == 2
    torch.testing.assert_close(out, attend(q, k, v, causal_window_mask(40, 8)), rtol=0, atol=1e-12)


def test_masks_cached_during_inference_serve_training():
    """Validation (inference mode) may build the cached blocks and additive masks a training step reuses."""
    causal_window_blocks.cache_clear()
    q, k, v = _qkv(L=24)
    with torch.inference_mode():
        attend(q, k, v, blocks=causal_window_blocks(24, 8))
    q.requires_grad_()
    attend(q, k, v, blocks=causal_window_blocks(24, 8)).sum().backward()
    assert q.grad is not None


def test_attend_takes_one_pattern():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="at most one of mask, is_causal and blocks"):
        attend(q, k, v, causal_window_mask(6), is_causal=True)


def test_attention_module_per_view_equals_block_diagonal():
    torch.manual_seed(0)
    attn = Attention(8, 2, qk_norm=True).double()
    x = torch.randn(2, 6, 8, dtype=torch.float64)
    y_mask = attn(x, mask=block_diagonal_mask(2, 3))
    y_views = merge_views(attn(per_view(x, 3)), 3)
    torch.testing.assert_close(y_mask, y_views, rtol=0, atol=1e-12)


def test_attention_module_causal_rope():
    torch.manual_seed(0)
    attn = Attention(8, 2, rope=RotaryEmbedding(4))
    x = torch.randn(1, 6, 8)
    y = attn(x, is_causal=True)
    assert y.shape == (1, 6, 8)
    x2 = x.clone()
    x2[:, 4:] += 1.0
    torch.testing.assert_close(attn(x2, mask=causal_window_mask(6))[:, :4], y[:, :4], rtol=0, atol=1e-6)
    # explicit positions equal the default ones; shifted positions leave causal outputs unchanged (RoPE is relative)
    torch.testing.assert_close(attn(x, is_causal=True, positions=torch.arange(6) + 5), y, rtol=1e-5, atol=1e-5)


def test_attention_project_output_roundtrip():
    torch.manual_seed(0)
    attn = Attention(8, 2)
    x = torch.randn(1, 5, 8)
    q, k, v = attn.project(x)
    assert q.shape == (1, 2, 5, 4)
    torch.testing.assert_close(attn.output(attend(q, k, v)), attn(x))
