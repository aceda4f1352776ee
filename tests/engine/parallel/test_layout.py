"""Pure layout arithmetic: the pipeline's layer split and each DP rank's share of a batch.
(The process groups themselves are checked by tests/engine/learner/parallel_worker.py.)"""

from types import SimpleNamespace

import pytest

from engine.learner.passes import dp_share
from engine.model.llama import stage_layers


def test_stage_layers_split_by_count_first_stages_take_the_remainder():
    assert stage_layers(4, 2) == [range(0, 2), range(2, 4)]
    assert stage_layers(5, 2) == [range(0, 3), range(3, 5)]
    assert stage_layers(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    # interleaved: 2 virtual stages per rank -> 4 stages, stage s on pipeline rank s % 2
    assert stage_layers(4, 2, virtual_stages=2) == [range(0, 1), range(1, 2), range(2, 3), range(3, 4)]
    with pytest.raises(ValueError, match="num_layers=3 cannot be split over pp_size=2 x virtual_stages=2"):
        stage_layers(3, 2, virtual_stages=2)


def test_dp_share_is_contiguous_and_covers_everything_once():
    items = list(range(9))
    shares = [list(dp_share(items, SimpleNamespace(dp_size=4, dp_rank=r))) for r in range(4)]
    assert shares == [[0, 1, 2], [3, 4], [5, 6], [7, 8]]
    assert [list(dp_share([1], SimpleNamespace(dp_size=2, dp_rank=r))) for r in range(2)] == [[1], []]
