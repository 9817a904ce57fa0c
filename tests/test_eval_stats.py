"""The eval's statistics recover known truths from synthetic data, within their intervals.

Every simulation uses a fixed seed, so each assertion is deterministic (no 1-in-20 failures).
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.evaluation import stats


def simulate_verdicts(n: int, win: float, tie: float, seed: int, first_bonus: float = 0.0):
    """M's outcomes in both orders; the judge adds `first_bonus` win probability to the first answer."""
    rng = np.random.default_rng(seed)

    def draw(p_win):
        u = rng.random()
        return 1.0 if u < p_win else 0.5 if u < p_win + tie else 0.0

    ab = [draw(min(1 - tie, win + first_bonus)) for _ in range(n)]
    ba = [draw(max(0.0, win - first_bonus)) for _ in range(n)]
    return ab, ba


@pytest.mark.parametrize("win,tie", [(0.7, 0.1), (0.3, 0.2), (0.5, 0.0), (0.85, 0.05)])
def test_win_rate_recovers_the_true_rate_within_its_interval(win, tie):
    ab, ba = simulate_verdicts(400, win, tie, seed=int(win * 100))
    est = stats.win_rate(ab, ba, samples=2000, seed=1)
    truth = win + tie / 2
    assert est.low <= truth <= est.high
    assert est.high - est.low < 0.12  # 400 prompts pin it down to a few points
    assert est.n == 400 and est.unit == "prompts"


def test_win_rate_interval_covers_the_truth_about_95_percent_of_the_time():
    truth, hits = 0.65 + 0.1 / 2, 0
    for rep in range(200):
        ab, ba = simulate_verdicts(60, 0.65, 0.1, seed=1000 + rep)
        est = stats.win_rate(ab, ba, samples=500, seed=rep)
        hits += est.low <= truth <= est.high
    assert 0.88 <= hits / 200 <= 0.99


def test_unreadable_verdicts_are_left_out_not_guessed():
    est = stats.win_rate([1.0, None, None], [1.0, 0.0, None])
    assert est.value == pytest.approx(2 / 3)  # three readable verdicts: win, win, loss
    assert est.n == 2  # the third prompt has no readable verdict


def test_position_bias_and_consistency_of_a_judge_that_always_picks_the_first_answer():
    ab, ba = [1.0] * 50, [0.0] * 50  # M wins when first, loses when second
    assert stats.position_bias(ab, ba).value == pytest.approx(0.5)
    assert stats.order_consistency(ab, ba).value == 0.0
    assert stats.win_rate(ab, ba).value == pytest.approx(0.5)  # both orders cancel the bias out


def test_position_bias_is_recovered_and_an_unbiased_judge_is_consistent():
    ab, ba = simulate_verdicts(400, 0.5, 0.0, seed=7, first_bonus=0.2)
    bias = stats.position_bias(ab, ba, seed=3)
    assert bias.low <= 0.2 <= bias.high
    fair = stats.order_consistency([1.0, 0.5, 0.0, 1.0], [1.0, 0.5, 0.0, 0.0])
    assert fair.value == 0.75 and fair.n == 4


def _length_driven(n: int, intercept: float, seed: int):
    """Verdicts that depend on M's true edge (`intercept`) plus a strong preference for longer answers;
    M writes longer answers on most prompts, which inflates its raw win rate."""
    rng = np.random.default_rng(seed)
    diffs = rng.normal(300, 400, n)
    scale = diffs.std()
    ab, ba = [], []
    for d in diffs:
        p = 1 / (1 + math.exp(-(intercept + 2.0 * math.tanh(d / scale))))
        ab.append(float(rng.random() < p))
        ba.append(float(rng.random() < p))
    return ab, ba, list(diffs)


@pytest.mark.parametrize("intercept", [0.0, 1.0])
def test_length_controlled_win_rate_removes_a_length_preference(intercept):
    ab, ba, diffs = _length_driven(500, intercept, seed=11)
    raw = stats.win_rate(ab, ba)
    lc = stats.length_controlled_win_rate(ab, ba, diffs, samples=300, seed=2)
    truth = 1 / (1 + math.exp(-intercept))
    assert lc.low <= truth <= lc.high
    assert raw.low > truth + 0.05  # the raw rate is inflated by length; the controlled one is not


def test_length_controlled_equals_the_win_rate_when_lengths_are_equal():
    ab, ba = simulate_verdicts(200, 0.6, 0.1, seed=5)
    lc = stats.length_controlled_win_rate(ab, ba, [0.0] * 200, samples=100)
    assert lc.value == pytest.approx(stats.win_rate(ab, ba).value, abs=0.01)


def test_wilson_interval_known_values():
    low, high = stats.wilson_interval(5, 10)
    assert (round(low, 3), round(high, 3)) == (0.237, 0.763)
    low, high = stats.wilson_interval(0, 10)
    assert low == 0.0 and round(high, 3) == 0.278


def test_accuracy_leaves_out_unscorable_items():
    est = stats.accuracy([1.0, 0.0, math.nan, 1.0])
    assert est.value == pytest.approx(2 / 3) and est.n == 3 and est.method == "wilson"
    assert math.isnan(stats.accuracy([math.nan]).value)
    assert stats.accuracy([]).to_dict()["value"] is None  # JSON-ready: no NaN


def test_paired_difference_recovers_a_known_gap():
    rng = np.random.default_rng(4)
    base = rng.random(300) < 0.3
    better = base | (rng.random(300) < 0.15)  # the same items plus some more
    truth = better.mean() - base.mean()
    est = stats.paired_difference(better.astype(float), base.astype(float), seed=1)
    assert est.low <= truth <= est.high and est.low > 0
    with pytest.raises(ValueError):
        stats.paired_difference([1.0], [1.0, 0.0])


def test_bootstrap_is_reproducible_with_its_seed():
    ab, ba = simulate_verdicts(50, 0.6, 0.1, seed=9)
    assert stats.win_rate(ab, ba, seed=3) == stats.win_rate(ab, ba, seed=3)


# -- the minimum detectable difference of a paired comparison ----------------------------------------
# Hand-worked values, from z tables: z_{0.975} = 1.959964, z_{0.80} = 0.841621, their sum 2.801585.
Z_SUM = 1.959964 + 0.841621


def test_mde_of_a_small_known_example_by_hand():
    # 40 items: 6 only the model gets right, 2 only the baseline, 32 the same (10 both right, 22 both wrong).
    model = [1.0] * 6 + [0.0] * 2 + [1.0] * 10 + [0.0] * 22
    base = [0.0] * 6 + [1.0] * 2 + [1.0] * 10 + [0.0] * 22
    det = stats.detectable_difference(model, base, expected_gain=0.05)
    # discordant share 8/40 = 0.2; MDE = 2.801585 * sqrt(0.2 / 40) = 2.801585 * 0.0707107 = 0.198101
    assert det["n"] == 40 and det["model_only"] == 6 and det["baseline_only"] == 2
    assert det["discordant_share"] == pytest.approx(0.2)
    assert det["mde"] == pytest.approx(0.198101, abs=2e-6)
    assert det["observed"] == pytest.approx(0.1) and det["clears"] is False  # +10 pts < 19.8 pts
    # items for a +5 pt gain at this discordance: (2.801585 / 0.05)**2 * 0.2 = 3139.55 * 0.2 = 627.9 -> 628
    assert det["n_needed"] == 628 and det["enough_items"] is False
    assert det["alpha"] == pytest.approx(0.05) and det["power"] == 0.8


def test_a_difference_at_least_the_mde_clears_it_and_unscorable_items_are_left_out():
    # 10 items: 5 only the model right, 5 concordant; psi = 0.5, MDE = 2.801585 * sqrt(0.05) = 0.626453
    model = [1.0] * 5 + [0.0] * 5 + [math.nan, 1.0]
    base = [0.0] * 5 + [0.0] * 5 + [1.0, math.nan]
    det = stats.detectable_difference(model, base)
    assert det["n"] == 10 and det["mde"] == pytest.approx(0.626453, abs=2e-6)
    assert det["observed"] == pytest.approx(0.5) and det["clears"] is False
    det = stats.detectable_difference([1.0] * 8 + [0.0] * 2, [0.0] * 10)  # psi 0.8, MDE 0.79250, observed 0.8
    assert det["mde"] == pytest.approx(Z_SUM * math.sqrt(0.08), abs=2e-6) and det["clears"] is True
    same = stats.detectable_difference([1.0, 0.0, 1.0], [1.0, 0.0, 1.0])
    assert same["mde"] is None and same["clears"] is None  # no discordant item: nothing to base it on
    with pytest.raises(ValueError):
        stats.detectable_difference([1.0], [1.0, 0.0])


@pytest.mark.parametrize("n,psi", [(300, 0.2), (120, 0.35)])
def test_mcnemar_detects_a_true_difference_of_one_mde_80_percent_of_the_time(n, psi):
    """Simulation, not the formula: draw paired outcomes with the true difference set to the MDE and
    count how often McNemar's test (two-sided 5%) rejects. Also: at no difference it rejects ~5%."""
    mde = stats.minimum_detectable_difference(n, psi)
    rng = np.random.default_rng(17)

    def rejections(delta: float, runs: int = 4000) -> float:
        p10, p01 = (psi + delta) / 2, (psi - delta) / 2
        counts = rng.multinomial(n, [p10, p01, 1 - psi], size=runs)
        b, c = counts[:, 0], counts[:, 1]
        z = (b - c) / np.sqrt(np.maximum(b + c, 1))
        return float(np.mean(np.abs(z) > 1.959964))

    assert 0.77 <= rejections(mde) <= 0.84  # the approximation is slightly conservative (0.80-0.81 exact)
    assert rejections(mde / 2) < 0.4
    assert rejections(0.0) < 0.07


def test_planned_mde_assumes_independent_outcomes():
    # p = 0.24 on both sides, independent: psi = 2 * 0.24 * 0.76 = 0.3648;
    # MDE at n = 300: 2.801585 * sqrt(0.3648 / 300) = 2.801585 * 0.0348712 = 0.097694
    plan = stats.planned_detectable_difference(300, 0.24, 0.24)
    assert plan["discordant_share"] == pytest.approx(0.3648)
    assert plan["mde"] == pytest.approx(0.097694, abs=2e-6) and "independent" in plan["assumption"]
    rng = np.random.default_rng(3)  # and independence really gives that discordance
    a, b = rng.random(200_000) < 0.24, rng.random(200_000) < 0.24
    assert np.mean(a != b) == pytest.approx(0.3648, abs=0.004)


# -- a judge's signal ----------------------------------------------------------------------------------
def test_a_judge_that_always_picks_the_first_answer_has_no_signal():
    ab, ba = [1.0] * 20, [0.0] * 20
    signal, why = stats.judge_signal(stats.order_consistency(ab, ba).value, stats.position_bias(ab, ba).value)
    assert signal is False and "order consistency 0.00 < 0.6" in why and "position bias +0.50" in why


def test_a_judge_that_picks_the_better_answer_has_a_signal():
    ab, ba = [1.0] * 18 + [0.0] * 2, [1.0] * 18 + [1.0] * 2  # consistent on 18 of 20; bias small
    consistency, bias = stats.order_consistency(ab, ba).value, stats.position_bias(ab, ba).value
    assert consistency == 0.9 and bias == pytest.approx(-0.05)
    assert stats.judge_signal(consistency, bias) == (True, "")
    assert stats.judge_signal(0.59, 0.0)[0] is False and stats.judge_signal(0.9, -0.31)[0] is False
    assert stats.judge_signal(0.6, 0.3)[0] is True  # the thresholds themselves pass
    assert stats.judge_signal(None, None)[0] is False  # nothing readable: nothing to read from it
