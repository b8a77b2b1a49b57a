"""Mask builders, the interleaved layout and its schedule, against hand-written expectations."""

import pytest
import torch

from lact_app.nn import (
    Segment,
    causal_window_mask,
    interleaved_layout,
    interleaved_schedule,
    merge_views,
    per_view,
    segment_bounds,
)
from lact_app.ops import Op, validate_schedule
from tests.nn.dense_masks import block_diagonal_mask, chunk_local_mask


def _bool(rows):
    return torch.tensor(rows, dtype=torch.bool)


def test_causal_window_mask():
    expected = _bool([
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1],
    ])  # fmt: skip
    assert torch.equal(causal_window_mask(5, window=2), expected)
    assert torch.equal(causal_window_mask(4), torch.ones(4, 4, dtype=torch.bool).tril())
    assert torch.equal(causal_window_mask(4, window=1), torch.eye(4, dtype=torch.bool))


def test_causal_window_mask_rolling_cache():
    # queries at positions 3, 4; a cache holding keys at positions 2, 3, 4; window 3
    mask = causal_window_mask(2, window=3, offset=3, num_keys=3, key_offset=2)
    assert torch.equal(mask, _bool([[1, 1, 0], [1, 1, 1]]))
    # decode one token at position 5 against all previous keys 0..5
    assert torch.equal(causal_window_mask(1, window=2, offset=5), _bool([[0, 0, 0, 0, 1, 1]]))
    # the decode rows equal the matching rows of the training mask
    assert torch.equal(causal_window_mask(3, window=3, offset=4), causal_window_mask(7, window=3)[4:])
    with pytest.raises(ValueError):
        causal_window_mask(3, window=0)


def test_block_diagonal_mask_and_per_view():
    expected = _bool([
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ])  # fmt: skip
    assert torch.equal(block_diagonal_mask(2, 3), expected)
    x = torch.arange(2 * 6 * 1).reshape(2, 6, 1)
    views = per_view(x, 3)
    assert views.shape == (6, 2, 1)
    assert views[:, :, 0].tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11]]
    assert torch.equal(merge_views(views, 3), x)


def test_interleaved_layout():
    n, c = "noisy", "clean"
    assert [s.kind for s in interleaved_layout(3, 2)] == [n, c, n, c, n]
    assert [s.kind for s in interleaved_layout(2, 2, repeats=2, last_clean=True)] == [n, n, c, n, n, c]
    assert segment_bounds(interleaved_layout(3, 2)) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    with pytest.raises(ValueError):
        segment_bounds([Segment("dirty", 2)])


def test_chunk_local_mask_three_chunks():
    # N0 | C0 N1 | C1 N2 with chunks of 2 tokens
    expected = _bool([
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],  # N0: itself
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0, 0, 0],  # C0: itself
        [0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],  # N1: C0 and itself
        [0, 0, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 0, 0],  # C1: itself
        [0, 0, 0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1],  # N2: C1 and itself
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
    ])  # fmt: skip
    assert torch.equal(chunk_local_mask(interleaved_layout(3, 2)), expected)


def test_chunk_local_mask_context_and_repeats():
    # clean_context=1: a noisy chunk sees only the last token of the preceding clean chunk
    mask = chunk_local_mask(interleaved_layout(2, 2), clean_context=1)
    assert mask[4:6].tolist() == _bool([[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]).tolist()
    # repeats: N0a N0b | C0 N1a N1b — each repeat sees the clean chunk and itself, not its twin
    mask = chunk_local_mask(interleaved_layout(2, 1, repeats=2))
    expected = _bool([
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 0, 1],
    ])  # fmt: skip
    assert torch.equal(mask, expected)


def test_interleaved_schedule():
    schedule = interleaved_schedule(interleaved_layout(3, 2))
    assert schedule == [
        Op(0, 2, update=False, apply=True),  # N0 reads W0
        Op(2, 4, update=True, apply=False),  # C0 updates
        Op(2, 6, update=False, apply=True),  # C0 and N1 read W1
        Op(6, 8, update=True, apply=False),
        Op(6, 10, update=False, apply=True),
    ]
    validate_schedule(schedule, 10)
    tail = interleaved_schedule(interleaved_layout(2, 2, repeats=2, last_clean=True))
    assert tail[-2:] == [Op(10, 12, update=True, apply=False), Op(10, 12, update=False, apply=True)]
    validate_schedule(tail, 12)
