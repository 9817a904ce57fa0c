"""Rule filters: truncation, repetition, garbled text, format errors, length, language."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RulesConfig:
    min_instruction_chars: int = 12
    max_instruction_chars: int = 4000
    min_response_chars: int = 2
    max_response_chars: int = 12000
    max_repeated_ngram_ratio: float = 0.3
    max_garbled_ratio: float = 0.2
    reject_truncated: bool = True
    languages: list[str] = field(default_factory=lambda: ["en", "zh"])  # allowed; empty list: any
