"""Output: hub-ready dataset directory (Parquet shards, rejects, stats, card, report, views)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class OutputConfig:
    dir: str = "out/synth"
    shard_records: int = 5000
    push_to_hub: str = ""  # repo id; the token comes from HF_TOKEN and is never printed
    private: bool = True
