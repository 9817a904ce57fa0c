"""vLLM plugin: serve `model_type: "hunyuan"` checkpoints (architecture `HunYuanForCausalLM`).

vLLM calls `register()` in each of its processes (API server, engine core, worker) through the
`vllm.general_plugins` entry point declared in pyproject.toml. It registers our config and model
with transformers' Auto classes, so vLLM can read the config, and maps the architecture to vLLM's
Transformers backend (posttrain/hunyuan/vllm_model.py: the backend, with CLA cross layers reading
their group's KV cache instead of keeping their own), which builds *our* module
(`AutoModel.from_config`) with vLLM's attention, KV cache and fused-MoE kernels swapped in: the
served function is the trained one.
"""
from __future__ import annotations

ARCHITECTURE = "HunYuanForCausalLM"
TRANSFORMERS_BACKEND = "posttrain.hunyuan.vllm_model:HunYuanVLLMForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    from posttrain.hunyuan import register as register_with_transformers

    register_with_transformers()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, TRANSFORMERS_BACKEND)
