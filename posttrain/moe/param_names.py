"""Which parameter group a parameter belongs to, from its name, and freezing the router.

Name patterns cover Hunyuan (transformers' `hunyuan_v1_moe` and our native Hunyuan-Large module),
Mixtral and Qwen-MoE; FSDP's wrapper prefixes are fine: the patterns are searched, not anchored.
Used by the per-group learning rates (param_groups.py) and by model preparation (recipe.py).
"""
from __future__ import annotations

import re
from typing import Any

# Parameter-group names, in the order they are matched (first match wins).
GROUP_NAMES = ("router", "shared_expert", "experts", "norms", "embeddings", "attention", "other")

_GROUP_PATTERNS: dict[str, tuple[str, ...]] = {
    "router": (r"\.mlp\.gate\.", r"\.block_sparse_moe\.gate\.", r"\.router\."),
    "shared_expert": (r"\.shared_mlp\.", r"\.shared_experts?\.", r"\.shared_expert_gate\."),
    "experts": (r"\.experts\.", r"\.experts$", r"\.experts\.[a-z_]+$"),
    "norms": (r"norm",),
    "embeddings": (r"embed_tokens", r"lm_head", r"\.wte\.", r"embed_out"),
    "attention": (r"\.self_attn\.", r"\.attention\."),
}


def param_group_of(name: str) -> str:
    """Which group a parameter belongs to, from its name."""
    for group, patterns in _GROUP_PATTERNS.items():
        if any(re.search(p, name) for p in patterns):
            return group
    return "other"


def router_parameters(model) -> list[tuple[str, Any]]:
    return [(n, p) for n, p in model.named_parameters() if param_group_of(n) == "router"]


def freeze_router(model) -> int:
    """Stop training the router; returns the number of parameters frozen."""
    params = router_parameters(model)
    if not params:
        raise ValueError(f"{type(model).__name__}: no router parameters found to freeze")
    for _, p in params:
        p.requires_grad_(False)
    return len(params)
