"""Statistics of an evaluation: pure functions over plain numbers, each returning an `Estimate`.

Conventions
- A pairwise verdict is scored from the evaluated model M's side: 1 win, 0.5 tie, 0 loss, None when
  the judge's reply could not be read (counted, never guessed). Every prompt is judged twice, M first
  (`ab`) and M second (`ba`).
- Intervals are 95% by default. Pairwise figures are bootstrapped with **the prompt as the unit of
  resampling**: a prompt's two verdicts (both orders) are drawn together, because they share the
  prompt and the two answers and are not independent.
- Accuracy of 0/1 outcomes uses the Wilson score interval; differences between two models on the
  same items use a paired bootstrap (items drawn with both models' scores).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.stats import norm

Verdict = float | None  # M's score from one judged order: 1, 0.5, 0, or None (unreadable)


@dataclass(frozen=True)
class Estimate:
    value: float  # NaN when there is nothing to estimate from (n == 0)
    low: float
    high: float
    n: int  # the number of units behind the figure (items, prompts, or verdicts; see `unit`)
    unit: str
    method: str

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _empty(unit: str, method: str) -> Estimate:
    return Estimate(math.nan, math.nan, math.nan, 0, unit, method)


def _z(confidence: float) -> float:
    return float(norm.ppf(0.5 + confidence / 2))


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


# -- verifiable tasks ------------------------------------------------------------------------------
def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sane at 0 and n successes, unlike the normal one)."""
    if n == 0:
        return math.nan, math.nan
    z, p = _z(confidence), successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy(outcomes: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Share of 1s among 0/1 outcomes; NaN outcomes (not scorable) are left out of n."""
    scored = [o for o in outcomes if not math.isnan(o)]
    if not scored:
        return _empty("items", "wilson")
    low, high = wilson_interval(sum(scored), len(scored), confidence)
    return Estimate(sum(scored) / len(scored), low, high, len(scored), "items", "wilson")


def bootstrap_mean(values: Sequence[float], samples: int = 2000, seed: int = 0,
                   confidence: float = 0.95) -> Estimate:
    """Mean of real values (NaN left out) with a percentile bootstrap interval."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if x.size == 0:
        return _empty("items", "bootstrap")
    draws = x[np.random.default_rng(seed).integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    return Estimate(float(x.mean()), *_percentiles(draws, confidence), int(x.size), "items", "bootstrap")


def paired_difference(a: Sequence[float], b: Sequence[float], samples: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> Estimate:
    """Mean of a_i - b_i over the items both scored, with a paired bootstrap interval."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs one score per item from each model: {len(a)} vs {len(b)}")
    diffs = [x - y for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    est = bootstrap_mean(diffs, samples, seed, confidence)
    return Estimate(est.value, est.low, est.high, est.n, "items", "paired bootstrap")


# -- pairwise judging ------------------------------------------------------------------------------
def _ratio_bootstrap(sums: np.ndarray, counts: np.ndarray, samples: int, seed: int,
                     confidence: float) -> tuple[float, float]:
    """Interval of sum(sums)/sum(counts) when whole prompts (rows) are resampled."""
    idx = np.random.default_rng(seed).integers(0, sums.size, size=(samples, sums.size))
    draws = sums[idx].sum(axis=1) / np.maximum(counts[idx].sum(axis=1), 1)
    return _percentiles(draws, confidence)


def _pool(rows: list[list[float]], unit: str, method: str, samples: int, seed: int,
          confidence: float, shift: float = 0.0) -> Estimate:
    rows = [r for r in rows if r]
    if not rows:
        return _empty(unit, method)
    sums = np.array([sum(r) for r in rows], dtype=float)
    counts = np.array([len(r) for r in rows], dtype=float)
    low, high = _ratio_bootstrap(sums, counts, samples, seed, confidence)
    return Estimate(float(sums.sum() / counts.sum()) - shift, low - shift, high - shift, len(rows), unit, method)


def win_rate(ab: Sequence[Verdict], ba: Sequence[Verdict], samples: int = 2000, seed: int = 0,
             confidence: float = 0.95) -> Estimate:
    """M's win rate over every readable verdict (ties count half); prompt-level bootstrap."""
    rows = [[v for v in pair if v is not None] for pair in zip(ab, ba)]
    return _pool(rows, "prompts", "bootstrap over prompts (both orders together)", samples, seed, confidence)


def position_bias(ab: Sequence[Verdict], ba: Sequence[Verdict], samples: int = 2000, seed: int = 0,
                  confidence: float = 0.95) -> Estimate:
    """Share of readable verdicts won by the answer in first position (ties half), minus 0.5.
    0 is an unbiased judge; +0.5 one that always picks the first answer, -0.5 the second."""
    rows = [[v for v in (x, None if y is None else 1 - y) if v is not None] for x, y in zip(ab, ba)]
    return _pool(rows, "prompts", "bootstrap over prompts (both orders together)", samples, seed,
                 confidence, shift=0.5)


def order_consistency(ab: Sequence[Verdict], ba: Sequence[Verdict], confidence: float = 0.95) -> Estimate:
    """Share of prompts, among those with both orders readable, whose verdict survives the swap."""
    both = [(x, y) for x, y in zip(ab, ba) if x is not None and y is not None]
    if not both:
        return _empty("prompts", "wilson")
    same = sum(1 for x, y in both if x == y)
    return Estimate(same / len(both), *wilson_interval(same, len(both), confidence), len(both), "prompts", "wilson")


def _fit_logistic(x: np.ndarray, y: np.ndarray, ridge: float) -> np.ndarray:
    """Newton-Raphson fit of P(y) = sigmoid(x @ beta) to targets in [0, 1] (ties are 0.5);
    a ridge penalty on every coefficient but the intercept keeps separable data finite."""
    beta = np.zeros(x.shape[1])
    penalty = np.full(x.shape[1], ridge)
    penalty[0] = 0.0
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(x @ beta, -30, 30)))
        grad = x.T @ (p - y) + penalty * beta
        if np.abs(grad).max() < 1e-7:  # also ends separable data (all wins), where beta_0 only grows
            break
        hess = x.T @ (x * (p * (1 - p))[:, None]) + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    return beta


def _lc_design(ab, ba, length_diff, scale):
    """One row per readable verdict: intercept, tanh(length difference / scale), M's position."""
    rows, targets, owner = [], [], []
    for i, (x, y, d) in enumerate(zip(ab, ba, length_diff)):
        for verdict, position in ((x, 1.0), (y, -1.0)):
            if verdict is not None:
                rows.append([1.0, math.tanh(d / scale), position])
                targets.append(verdict)
                owner.append(i)
    return np.array(rows).reshape(-1, 3), np.array(targets, dtype=float), np.array(owner, dtype=int)


def length_controlled_win_rate(ab: Sequence[Verdict], ba: Sequence[Verdict], length_diff: Sequence[float],
                               samples: int = 1000, seed: int = 0, confidence: float = 0.95,
                               ridge: float = 0.1) -> Estimate:
    """AlpacaEval 2 style: a logistic regression of the verdict on the (tanh-squashed) length difference
    len(M) - len(B) and on M's position; the win rate it predicts at zero length difference and no
    position advantage, sigmoid(intercept). Prompt-level bootstrap, refitting each draw."""
    diffs = np.asarray(length_diff, dtype=float)
    scale = float(diffs.std()) or 1.0
    x, y, owner = _lc_design(ab, ba, diffs, scale)
    prompts = np.unique(owner)
    if prompts.size == 0:
        return _empty("prompts", "length-controlled logistic regression")
    value = 1 / (1 + math.exp(-_fit_logistic(x, y, ridge)[0]))
    members = [np.flatnonzero(owner == p) for p in prompts]
    rng, draws = np.random.default_rng(seed), []
    for _ in range(samples):
        rows = np.concatenate([members[i] for i in rng.integers(0, prompts.size, prompts.size)])
        draws.append(1 / (1 + math.exp(-_fit_logistic(x[rows], y[rows], ridge)[0])))
    low, high = _percentiles(np.array(draws), confidence)
    return Estimate(value, low, high, int(prompts.size), "prompts",
                    "length-controlled logistic regression, bootstrap over prompts")


# -- what a paired comparison can detect -----------------------------------------------------------
# Two models scored 0/1 on the same n items. Per item the difference D = a - b is +1 (only the model
# right), -1 (only the baseline right) or 0 (concordant). With p10, p01 the shares of the two kinds of
# discordant item, the discordant share psi = p10 + p01 and the true difference delta = p10 - p01:
#     E[D] = delta,   Var[D] = psi - delta**2,   so  SE(mean D) = sqrt((psi - delta**2) / n).
# McNemar's test of delta = 0 (normal form: z = (b - c) / sqrt(b + c), b and c the discordant counts)
# rejects at two-sided level alpha when |mean D| > z_{1-alpha/2} * sqrt(psi / n). Its power at a true
# delta > 0 is  Phi((delta - z_{1-alpha/2} sqrt(psi/n)) / sqrt((psi - delta**2)/n)).  Setting the
# power to 1 - beta and taking psi - delta**2 ~ psi (delta**2 is small beside psi at the differences in
# question) gives the minimum detectable difference
#     MDE = (z_{1-alpha/2} + z_{1-beta}) * sqrt(psi / n).
# Dropping delta**2 makes the MDE slightly larger than the exact solution (conservative): at psi=0.2,
# n=300 the power at this MDE is 0.803, not 0.800. The same formula, solved for n, is the number of
# items an expected gain g needs: n = ((z_{1-alpha/2} + z_{1-beta}) / g)**2 * psi.
# Without data (a planned run) psi has to be assumed: if the two models' outcomes were independent
# given their accuracies p_a, p_b, psi = p_a (1 - p_b) + p_b (1 - p_a). Models that agree more than
# chance (a policy trained from the baseline) have a smaller psi, so that planned MDE is an upper bound.
MDE_METHOD = "McNemar normal approximation: (z_{1-alpha/2} + z_power) * sqrt(discordant share / n)"


def minimum_detectable_difference(n: int, discordant_share: float, confidence: float = 0.95,
                                  power: float = 0.8) -> float:
    """The smallest true paired difference (a share) that a two-sided McNemar test at level
    1 - confidence detects with probability `power`, at n items with that discordant share.
    NaN when there are no items or no discordant share to base it on."""
    if n <= 0 or not discordant_share > 0:
        return math.nan
    return (_z(confidence) + float(norm.ppf(power))) * math.sqrt(discordant_share / n)


def items_needed(gain: float, discordant_share: float, confidence: float = 0.95, power: float = 0.8) -> int | None:
    """Items needed for `gain` to be the minimum detectable difference (None without a share or gain)."""
    if not gain > 0 or not discordant_share > 0:
        return None
    return math.ceil(((_z(confidence) + float(norm.ppf(power))) / gain) ** 2 * discordant_share)


def independent_discordance(p_a: float, p_b: float) -> float:
    """The discordant share of two models whose outcomes are independent given their accuracies
    (the planning assumption; an upper bound for models that agree more than chance)."""
    return p_a * (1 - p_b) + p_b * (1 - p_a)


def detectable_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, power: float = 0.8,
                          expected_gain: float | None = None) -> dict:
    """The minimum detectable difference of a paired 0/1 comparison at its n, from the observed
    discordance, and whether the observed difference clears it. Items either model could not be
    scored on (NaN) are left out, as in `paired_difference`. JSON-ready (no NaN)."""
    if len(a) != len(b):
        raise ValueError(f"detectable_difference needs one score per item from each model: {len(a)} vs {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))]
    n = len(pairs)
    model_only = sum(1 for x, y in pairs if x > y)
    baseline_only = sum(1 for x, y in pairs if x < y)
    share = (model_only + baseline_only) / n if n else math.nan
    observed = (model_only - baseline_only) / n if n else math.nan
    mde = minimum_detectable_difference(n, share, confidence, power)
    out = {"n": n, "model_only": model_only, "baseline_only": baseline_only,
           "discordant_share": share, "alpha": round(1 - confidence, 10), "power": power,
           "mde": mde, "observed": observed, "clears": None if math.isnan(mde) else abs(observed) >= mde,
           "method": MDE_METHOD}
    if expected_gain:
        needed = items_needed(expected_gain, share, confidence, power)
        out.update(expected_gain=expected_gain, n_needed=needed,
                   enough_items=None if needed is None else n >= needed)
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


def planned_detectable_difference(n: int, p_a: float, p_b: float, confidence: float = 0.95,
                                  power: float = 0.8) -> dict:
    """The MDE of a run not yet made: n items, accuracies p_a and p_b, outcomes assumed independent."""
    share = independent_discordance(p_a, p_b)
    mde = minimum_detectable_difference(n, share, confidence, power)
    return {"n": n, "discordant_share": share, "mde": None if math.isnan(mde) else mde, "power": power,
            "alpha": round(1 - confidence, 10),
            "assumption": f"outcomes independent given accuracies {p_a:.3f} and {p_b:.3f} "
                          f"(an upper bound on the discordance of models that agree more than chance)"}


# -- can a judge's win rate be read at all ---------------------------------------------------------
def judge_signal(order_consistency: float | None, position_bias: float | None, min_consistency: float = 0.6,
                 max_bias: float = 0.3) -> tuple[bool, str]:
    """(signal, why not). A judge whose verdicts flip when the answers swap places (order consistency
    below `min_consistency`) or that favours one position (|position bias| above `max_bias`) gives a
    win rate near 50% whatever the answers: it carries no signal. Unknown figures carry none either."""
    reasons = []
    if order_consistency is None or math.isnan(order_consistency):
        reasons.append("order consistency unknown (no prompt readable in both orders)")
    elif order_consistency < min_consistency:
        reasons.append(f"order consistency {order_consistency:.2f} < {min_consistency:g}")
    if position_bias is None or math.isnan(position_bias):
        reasons.append("position bias unknown (no readable verdict)")
    elif abs(position_bias) > max_bias:
        reasons.append(f"position bias {position_bias:+.2f} beyond ±{max_bias:g}")
    return not reasons, "; ".join(reasons)
