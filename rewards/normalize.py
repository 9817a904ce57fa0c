"""Running reward normalisation, so a margin threshold keeps its meaning while the reward drifts.

`RewardNormalizer` keeps bias-corrected EMAs of the first and second moments of the raw rewards,
m₁ ← β·m₁ + (1 − β)·mean(x), m₂ ← β·m₂ + (1 − β)·mean(x²), with mean = m₁/(1 − βᵗ) and
var = m₂/(1 − βᵗ) − mean². Normalised rewards (x − mean)/√(var + ε) keep the best/worst margin
threshold in stable units while the policy (and the reward scale it reaches) drifts. NaN scores
never enter the statistics.
"""
from __future__ import annotations

import math
from typing import Iterable


class RewardNormalizer:
    """Running mean/variance of rewards as bias-corrected EMAs of their first two moments."""

    def __init__(self, momentum: float = 0.9, eps: float = 1e-6) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = momentum
        self.eps = eps
        self.steps = 0  # batches seen (with at least one finite score)
        self.count = 0  # finite scores seen
        self.m1 = 0.0  # biased EMA of batch means
        self.m2 = 0.0  # biased EMA of batch means of squares

    def update(self, scores: Iterable[float]) -> None:
        finite = [float(s) for s in scores if math.isfinite(s)]
        if not finite:
            return
        beta = self.momentum
        self.m1 = beta * self.m1 + (1 - beta) * (sum(finite) / len(finite))
        self.m2 = beta * self.m2 + (1 - beta) * (sum(s * s for s in finite) / len(finite))
        self.steps += 1
        self.count += len(finite)

    @property
    def mean(self) -> float:
        if self.steps == 0:
            return 0.0
        return self.m1 / (1 - self.momentum ** self.steps)

    @property
    def var(self) -> float:
        if self.steps == 0:
            return 1.0
        return max(self.m2 / (1 - self.momentum ** self.steps) - self.mean ** 2, 0.0)

    @property
    def std(self) -> float:
        return math.sqrt(self.var + self.eps)

    def normalize(self, scores: Iterable[float]) -> list[float]:
        """(x − mean)/std; NaN stays NaN (callers count it as unscorable)."""
        mean, std = self.mean, self.std
        return [(s - mean) / std if math.isfinite(s) else math.nan for s in scores]

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "eps": self.eps, "steps": self.steps, "count": self.count,
                "m1": self.m1, "m2": self.m2}

    def load_state_dict(self, state: dict) -> None:
        for key in ("momentum", "eps", "steps", "count", "m1", "m2"):
            setattr(self, key, state[key])
