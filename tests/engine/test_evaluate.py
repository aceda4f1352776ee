"""Win rates against hand-computed values (raw and length-controlled)."""

import math

import pytest

from engine.evaluate import win_rates


def test_equal_lengths_lc_equals_raw():
    r = win_rates([3, 1, 2, 2], [1, 2, 2, 0], [5, 5, 5, 5], [5, 5, 5, 5])
    assert r.win_rate == pytest.approx(0.625) and r.lc_win_rate == pytest.approx(0.625) and r.pairs == 4


def test_length_controlled_rate_is_the_equal_length_prediction():
    # Longer than the baseline in 8 pairs, winning 6 of them; shorter in 4, winning 2. Two distinct
    # regressors (z = ±tanh(d/sd)) make the logistic fit exact: sigma(t0 ± t1 z) = 3/4 and 1/2, so
    # t0 = (logit(3/4) + logit(1/2)) / 2 = ln(3)/2 and the LC win rate is sigma(ln(3)/2).
    wins = [1, 1, 1, 1, 1, 1, 0, 0] + [1, 1, 0, 0]
    scores = [float(w) for w in wins]
    base = [0.5] * 12
    lengths = [30] * 8 + [10] * 4
    base_lengths = [20] * 12
    r = win_rates(scores, base, lengths, base_lengths)
    assert r.win_rate == pytest.approx(8 / 12)
    assert r.lc_win_rate == pytest.approx(1 / (1 + math.exp(-math.log(3) / 2)), abs=1e-6)  # 0.634 < 0.667


def test_ties_count_half_and_empty_is_nan():
    r = win_rates([1.0, 1.0], [1.0, 0.0], [3, 4], [3, 4])
    assert r.win_rate == pytest.approx(0.75)
    assert math.isnan(win_rates([], [], [], []).win_rate)
    with pytest.raises(ValueError):
        win_rates([1.0], [], [1], [1])
