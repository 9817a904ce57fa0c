"""posttrain's models, named for datagen: `register_models()` is the one explicit call.

It registers the aliases `tiny-hunyuan-moe` and `smollm2-moe` (built into the cache on first use)
and tells datagen's model loading that `model_type: "hunyuan"` needs `posttrain.hunyuan.register()`
before a transformers load. Cheap: it imports no torch or transformers; the builders and the
Hunyuan registration import them when a model is built or loaded.
"""
from __future__ import annotations

from pathlib import Path

from datagen.inference.model_names import EMBEDDED_ALIAS, prepare, register_alias, register_model_type

TINY_MOE_ALIAS = "tiny-hunyuan-moe"
SMOLLM2_MOE_ALIAS = "smollm2-moe"


def _build_tiny_moe(dest: Path) -> None:
    from posttrain.moe.tiny_moe import build_tiny_moe

    build_tiny_moe(dest, tokenizer_dir=prepare(EMBEDDED_ALIAS))


def _build_smollm2_moe(dest: Path) -> None:
    from posttrain.hunyuan.upcycle import upcycle_directory

    upcycle_directory(prepare(EMBEDDED_ALIAS), dest)  # SmolLM2-135M-Instruct as an exact 4-expert MoE


def _register_hunyuan() -> None:
    from posttrain.hunyuan import register

    register()


def register_models() -> None:
    """Register posttrain's aliases and model_type "hunyuan" with datagen (idempotent, no torch)."""
    register_alias(TINY_MOE_ALIAS, _build_tiny_moe)
    register_alias(SMOLLM2_MOE_ALIAS, _build_smollm2_moe)
    register_model_type("hunyuan", _register_hunyuan)
