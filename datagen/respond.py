"""Response generation by specialized models routed per domain."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RespondConfig:
    routing: dict[str, str] = field(default_factory=lambda: {"*": "default"})  # domain → models key
    objective_domains: list[str] = field(default_factory=lambda: ["math", "code"])
    n_objective: int = 4  # sampled answers per objective item, in one request (`n`)
    n_subjective: int = 2  # answers per other item (best and worst feed the DPO view)
    max_tokens: int = 384
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 3456
