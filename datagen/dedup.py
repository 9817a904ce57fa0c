"""Near-duplicate removal with MinHash LSH; the surviving twin is chosen deterministically."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DedupConfig:
    threshold: float = 0.8  # estimated Jaccard similarity above which two instructions are twins
    num_perm: int = 128
    shingle_words: int = 3
