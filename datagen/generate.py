"""Instruction generation from seed documents, with per-domain prompt templates."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerateConfig:
    model: str = "default"  # a key of `models`
    k: int = 3  # instructions asked for per seed
    domains: list[str] = field(default_factory=lambda: ["math", "code", "science", "humanities", "general"])
    low_resource_domains: list[str] = field(default_factory=list)  # extra domains with their own prompt
    max_per_domain: int | None = None  # cap per domain so one domain cannot swamp the set
    max_tokens: int = 320
    temperature: float = 0.8
    top_p: float = 0.95
    seed: int = 1234
