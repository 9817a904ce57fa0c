"""Seeds: read seed documents (JSONL, Parquet, plain-text folders, HF datasets on disk)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SeedsConfig:
    path: str = ""  # file, folder or glob; empty: the corpus shipped in datagen/data/seeds.jsonl
    max_seeds: int | None = None  # keep the first N seeds (in file order)
    min_chars: int = 20  # shorter texts are rejected as empty
    max_chars: int = 20000  # longer texts are rejected as oversized
    default_domain: str = "general"
