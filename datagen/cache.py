"""Content-addressed cache of model calls, so a rerun after a crash skips finished work."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CacheConfig:
    enabled: bool = True
    dir: str = ""  # local path or gs://…; empty: <output.dir>/.cache
