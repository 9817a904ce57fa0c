"""Benchmark decontamination by n-gram overlap against user-supplied benchmark files."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DecontamConfig:
    benchmarks: list[str] = field(default_factory=list)  # JSONL files with a text field
    text_field: str = "text"
    ngram: int = 13  # words; 13-gram overlap is the common contamination test
