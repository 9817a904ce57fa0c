"""Hunyuan-Large as a native transformers model (`model_type: "hunyuan"`), and what goes with it.

- `configuration`: `HunYuanConfig` (Tencent's config keys as they are) and `HunyuanConfigError`;
- `modeling`: `HunYuanModel`, `HunYuanForCausalLM`, `HunYuanForSequenceClassification`;
- `routing`: top-k gating, capacity, recycle routing, the load-balancing loss;
- `loading`: `CheckpointError` -- a checkpoint loads completely or not at all.

`register()` makes `AutoConfig` / `AutoModel` / `AutoModelForCausalLM` /
`AutoModelForSequenceClassification` know `model_type: "hunyuan"`. The code that loads or serves a
model calls it (posttrain/model_loading.py, the vLLM plugin, and through `register_models()` datagen's and
rewards' transformers loads), so a Hunyuan-Large checkpoint directory loads with `AutoModelForCausalLM.from_pretrained(dir)`
and no `trust_remote_code`.
"""
from __future__ import annotations

_registered = False


def register() -> None:
    """Register the config and model classes with transformers' Auto classes (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM,
                              AutoModelForSequenceClassification)

    from .configuration import HunYuanConfig
    from .modeling import HunYuanForCausalLM, HunYuanForSequenceClassification, HunYuanModel

    AutoConfig.register(HunYuanConfig.model_type, HunYuanConfig, exist_ok=True)
    AutoModel.register(HunYuanConfig, HunYuanModel, exist_ok=True)
    AutoModelForCausalLM.register(HunYuanConfig, HunYuanForCausalLM, exist_ok=True)
    AutoModelForSequenceClassification.register(HunYuanConfig, HunYuanForSequenceClassification, exist_ok=True)
    _registered = True
