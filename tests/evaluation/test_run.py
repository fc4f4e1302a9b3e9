"""Helpers of `landmark evaluate` (the full run is in tests/e2e)."""

import pytest

from landmark.evaluation.run import parse_landmark_ids


def test_focus_landmark_ids_parse_ranges_and_lists():
    assert parse_landmark_ids("900001-900003, 42") == {900001, 900002, 900003, 42}
    assert parse_landmark_ids("") == frozenset()
    for bad in ("9-1", "abc", "1-x"):
        with pytest.raises(ValueError):
            parse_landmark_ids(bad)
