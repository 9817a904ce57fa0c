"""Self-consistency for objective items: several answers, keep the majority, drop the inconsistent."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ConsistencyConfig:
    threshold: float = 0.5  # minimum share of answers agreeing with the majority
    code_timeout_seconds: float = 5.0
    code_memory_mb: int = 256
