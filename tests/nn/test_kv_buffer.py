"""kv_buffer: the preallocated window ring and the doubling full-attention buffer hold exactly the
keys a causal stream needs, in place, whatever the sizes of the pieces written."""

import pytest
import torch

from lact_app.nn import kv_buffer


@pytest.mark.parametrize("window", [1, 8, None])
def test_stream_keeps_the_last_window_in_order(window):
    g = torch.Generator().manual_seed(0)
    pieces = [3, 1, 1, 20, 1, 7, 8, 1]  # wraps a ring of 8 several times, piece by piece and at once
    keys = torch.randn(2, 3, sum(pieces), 4, generator=g)
    kv, pos, capacities = None, 0, []
    for n in pieces:
        new = (keys[:, :, pos : pos + n], -keys[:, :, pos : pos + n])
        kv = kv_buffer.reserve(kv, pos, new, window)
        kv_buffer.write(kv, pos, new, window)
        pos += n
        capacities.append(kv[0].size(2))
        (k, v), first = kv_buffer.in_order(kv, pos, window)
        expected = keys[:, :, first:pos]
        assert first == (0 if window is None else max(0, pos - window))
        assert torch.equal(k, expected) and torch.equal(v, -expected)
        # a decoding step attends over the valid slots: the same keys, position t in slot t % window
        slots = torch.arange(first, pos) % (window or pos)
        assert torch.equal(kv_buffer.valid(kv, pos, window)[0][:, :, slots], expected)
    if window is None:  # grown by doubling (or to the piece that needed more), never shrunk
        assert capacities == [3, 6, 6, 25, 50, 50, 50, 50]
    else:
        assert capacities == [window] * len(pieces)


def test_reserve_keeps_a_buffer_with_room():
    new = (torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    kv = kv_buffer.reserve(None, 0, new, None)
    kv_buffer.write(kv, 0, new, None)
    grown = kv_buffer.reserve(kv, 2, new, None)
    assert grown[0].size(2) == 4 and kv_buffer.reserve(grown, 2, new, None) is grown
