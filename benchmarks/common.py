"""What the benchmarks share: a server whose prefix cache can be emptied between timed runs.

Side-by-side runs send the same prompts; without a reset the second run would find them in
vLLM's prefix cache and look faster than it is.
"""
from __future__ import annotations

import os
import urllib.request

# vLLM serves POST /reset_prefix_cache only in dev mode; set before any server starts.
os.environ["VLLM_SERVER_DEV_MODE"] = "1"


def reset_prefix_cache(base_url: str) -> None:
    root = base_url.removesuffix("/v1")
    request = urllib.request.Request(f"{root}/reset_prefix_cache", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=60) as resp:
        if resp.status != 200:
            raise RuntimeError(f"reset_prefix_cache: HTTP {resp.status}")
