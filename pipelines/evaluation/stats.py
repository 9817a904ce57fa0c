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
