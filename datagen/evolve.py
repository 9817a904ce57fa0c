"""Evolution: clearer and more informative, low-resource expansion, harder."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class EvolveConfig:
    model: str = "default"
    rounds: int = 1
    operations: list[str] = field(default_factory=lambda: ["clarify", "harder"])  # clarify | expand | harder
    expand_examples: int = 3  # in-domain examples shown for self-instruct expansion
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 2345
