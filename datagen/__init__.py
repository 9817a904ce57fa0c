"""Synthetic instruction data on Apache Beam (seeds → generate → evolve → dedup → decontam → respond →
rules → consistency → critique). The lowest layer: it imports none of rewards, posttrain, pipelines."""
from pathlib import Path

SHIPPED_SEEDS = Path(__file__).resolve().parent / "data" / "seeds.jsonl"  # the default seed corpus
