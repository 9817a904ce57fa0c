"""Critique model: four-tier scores on accuracy, relevance, completeness, usefulness, clarity."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CritiqueConfig:
    model: str = "default"
    min_mean: float = 2.5  # keep items whose chosen answer averages at least this (1..4)
    min_each: int = 1  # and no aspect below this
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 4567
