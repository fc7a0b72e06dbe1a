"""Best-of-N decoding: the RM's pick among a prompt's samples (the game's metric and
`apo-generate best_of=N` are tested with their commands)."""

from __future__ import annotations

import pytest

from apo.decoding import best_of_n


def test_best_of_n_picks_the_highest_score_of_each_group():
    assert best_of_n([0.1, 0.9, 0.3, 0.5, 0.5, 0.2], 3) == [1, 3]  # a tie: the first
    assert best_of_n([0.2, -1.0], 2) == [0]
    with pytest.raises(ValueError, match="not groups of 4"):
        best_of_n([0.1, 0.2, 0.3], 4)
