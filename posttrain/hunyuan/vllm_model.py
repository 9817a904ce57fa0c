"""The native Hunyuan module inside vLLM, with cross-layer attention sharing one KV cache per group.

vLLM's Transformers backend builds our module (`AutoModel.from_config`), swaps in its own
attention, KV cache and fused-MoE kernels, and gives every layer that calls the attention
interface its own cache slot: a CLA cross layer would store its group's keys and values a second
time. Here a cross layer's vLLM `Attention` is created with `kv_sharing_target_layer_name` set
to its group's first layer, so vLLM allocates no cache for it, never writes to one, and reads the
first layer's: with `cla_share_factor` 2 the KV bytes per token halve (benchmarks/hunyuan_kv_cache.py).
That cache holds the keys as the first layer's `key_layernorm` left them, so with QK-norm each
cross layer is told to move its own key-norm weight onto its query instead
(`HunYuanAttention.read_keys_from`; exact algebra, see posttrain/hunyuan/modeling.py).

Loaded only in vLLM's processes (the plugin, posttrain/hunyuan/vllm_plugin.py, registers it by
name); nothing else imports vLLM from here.
"""
from __future__ import annotations

import re

from vllm.model_executor.layers.attention import Attention
from vllm.model_executor.models.transformers import TransformersMoEForCausalLM

_LAYER = re.compile(r"layers\.(\d+)\.")


class HunYuanVLLMForCausalLM(TransformersMoEForCausalLM):
    """vLLM's Transformers MoE backend on `model_type: hunyuan`, CLA groups sharing their cache."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if shares_kv(self.text_config):
            for attention in self.model.modules():
                if getattr(attention, "is_cross", False) and self.text_config.use_qk_norm:
                    attention.read_keys_from(self.model.layers[attention.kv_layer_idx].self_attn)

    def _get_attn_cls(self):
        attn_cls = super()._get_attn_cls()
        config = self.text_config
        if attn_cls is not Attention or not shares_kv(config):
            return attn_cls

        def attention(prefix: str, **kwargs):
            target = cache_target(prefix, config)
            if target is not None:
                kwargs["kv_sharing_target_layer_name"] = target
            return attn_cls(prefix=prefix, **kwargs)

        return attention


def shares_kv(config) -> bool:
    return bool(getattr(config, "use_cla", False)) and getattr(config, "cla_share_factor", 1) > 1


def cache_target(prefix: str, config) -> str | None:
    """The vLLM attention layer whose cache the layer named `prefix` reads (None: its own)."""
    match = _LAYER.search(prefix)
    if match is None:
        return None
    layer = int(match.group(1))
    source = config.kv_source_layer(layer)
    if source == layer:
        return None
    return prefix[: match.start()] + f"layers.{source}." + prefix[match.end():]
