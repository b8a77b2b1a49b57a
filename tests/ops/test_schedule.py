"""Schedules as op lists, against hand-written cases."""

import pytest

from lact_app.ops import Op, bidirectional_schedule, causal_schedule, packed_causal_schedule, validate_schedule


def test_causal_schedule_applies_then_updates_complete_chunks():
    assert causal_schedule(10, 4) == [
        Op(0, 4, False, True), Op(0, 4, True, False),
        Op(4, 8, False, True), Op(4, 8, True, False),
        Op(8, 10, False, True),
    ]


def test_causal_schedule_training_skips_the_last_chunk():
    assert causal_schedule(8, 4, update_last=False) == [
        Op(0, 4, False, True), Op(0, 4, True, False), Op(4, 8, False, True),
    ]
    assert causal_schedule(3, 4) == [Op(0, 3, False, True)]


def test_packed_schedule_aligns_chunks_to_each_document_and_resets():
    """Documents of 1, 4 (one chunk) and 6 tokens: each its own causal schedule, reset at its start."""
    assert packed_causal_schedule([0, 1, 5, 11], 4) == [
        Op(0, 1, False, True, reset=True),
        Op(1, 5, False, True, reset=True),
        Op(5, 9, False, True, reset=True), Op(5, 9, True, False), Op(9, 11, False, True),
    ]


def test_bidirectional_schedule():
    assert bidirectional_schedule(7) == [Op(0, 7, True, True)]


def test_validate_rejects_bad_ops():
    with pytest.raises(ValueError, match=r"outside the sequence of length 5 or empty"):
        validate_schedule([Op(0, 6, True, True)], 5)
    with pytest.raises(ValueError, match=r"applies tokens \[2, 3\) twice"):
        validate_schedule([Op(0, 3, False, True), Op(2, 5, False, True)], 5)
    with pytest.raises(ValueError, match=r"chunk > 0"):
        causal_schedule(5, 0)
