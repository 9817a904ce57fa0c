"""vLLM plugin: serve `model_type: "hunyuan"` checkpoints (architecture `HunYuanForCausalLM`).

vLLM calls `register()` in each of its processes (API server, engine core, worker) through the
`vllm.general_plugins` entry point declared in pyproject.toml. It registers our config and model
with transformers' Auto classes, so vLLM can read the config, and maps the architecture to vLLM's
Transformers backend, which builds *our* module (`AutoModel.from_config`) with vLLM's attention,
KV cache and fused-MoE kernels swapped in: the served function is the trained one.
"""
from __future__ import annotations

ARCHITECTURE = "HunYuanForCausalLM"
TRANSFORMERS_BACKEND = "vllm.model_executor.models.transformers:TransformersMoEForCausalLM"


def register() -> None:
    from vllm import ModelRegistry

    from posttrain.hunyuan import register as register_with_transformers

    register_with_transformers()
    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, TRANSFORMERS_BACKEND)
