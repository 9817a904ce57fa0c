"""`HunYuanConfig`: the Hunyuan-Large configuration (`model_type: "hunyuan"`).

Accepts Tencent's `config.json` keys as they are (github Tencent/Tencent-Hunyuan-Large,
`models/configuration_hunyuan.py`), plus the Hunyuan-A13B spellings (`moe_topk`,
`num_shared_expert` and `moe_intermediate_size` as per-layer lists, `head_dim`) and what
our trainers write (`hidden_dropout`, `output_router_logits`, `router_aux_loss_coef`).
Keys it does not know are kept as attributes, as transformers does (e.g. `eod_token_id`).

Bad values raise `HunyuanConfigError` (a ValueError) with one line naming the key.
"""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters

# RoPE variants of Tencent's code: plain, linear position scaling, dynamic NTK by `factor`,
# and NTK-alpha (`type: dynamic` with `alpha`: a fixed base of theta * alpha^(d/(d-2))).
SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic")
# Keys Tencent's released configs carry in `rope_scaling` that only YaRN-style code reads.
_TENCENT_ROPE_EXTRAS = {"alpha", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"}


class HunyuanError(ValueError):
    """Base of the errors this package raises; the message is one line."""


class HunyuanConfigError(HunyuanError):
    """A config key holds a value the model cannot be built with."""


@strict
class HunYuanConfig(PreTrainedConfig):
    r"""Hunyuan-Large: GQA attention with optional QK-norm and cross-layer K/V sharing (CLA),
    and a mixture of experts with shared expert(s) and top-k routed experts.

    use_qk_norm: RMSNorm over each query/key head after RoPE (Hunyuan-Large: on).
    use_cla / cla_share_factor: layer i with `i % cla_share_factor != 0` has no K/V projections and
        attends with the K/V of the last layer before it with `i % cla_share_factor == 0`.
    num_experts: routed experts per MoE layer (1 = a dense MLP, Tencent's `mlp.*` names).
    use_mixed_mlp_moe / num_shared_expert: a shared MLP of `intermediate_size * num_shared_expert`
        that every token goes through, added to the routed experts' output.
    moe_topk: routed experts per token; top-1 weighs the expert by its raw softmax probability,
        top-k > 1 renormalises the k probabilities to sum to 1.
    moe_intermediate_size: routed experts' width (default `intermediate_size`).
    capacity_factor / moe_drop_tokens: in training with `moe_drop_tokens`, an expert takes at most
        ceil(capacity_factor * tokens * moe_topk / num_experts) tokens; the overflow is dropped
        (the token keeps the shared expert and the residual) unless
    moe_random_routing_dropped_token: sends overflow to random experts that still have room
        (the report's recycle routing). Inference is always dropless.
    hidden_dropout: dropout on the attention and MoE outputs before each residual add (training).
    router_aux_loss_coef: weight of the load-balancing loss added to `loss` when
        `output_router_logits` is on and labels are given.
    """

    model_type = "hunyuan"
    keys_to_ignore_at_inference = ["past_key_values"]
    attribute_map = {"num_experts_per_tok": "moe_topk", "num_local_experts": "num_experts"}
    ignore_keys_at_rope_validation = _TENCENT_ROPE_EXTRAS

    vocab_size: int = 290943
    hidden_size: int = 4096
    intermediate_size: int = 11008
    moe_intermediate_size: int | list[int] | None = None
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pretraining_tp: int = 1  # tensor-parallel slicing in Tencent's code; the same function here
    tie_word_embeddings: bool = False
    rope_parameters: RopeParameters | dict | None = None
    attention_bias: bool = False
    attention_dropout: float | int = 0.0
    hidden_dropout: float | int = 0.0
    use_qk_norm: bool = False
    use_cla: bool = False
    cla_share_factor: int = 1
    num_experts: int = 1
    use_mixed_mlp_moe: bool = False
    num_shared_expert: int | list[int] = 1
    moe_topk: int | list[int] = 1
    capacity_factor: float | int = 1.0
    moe_drop_tokens: bool = False
    moe_random_routing_dropped_token: bool = False
    output_router_logits: bool = False
    router_aux_loss_coef: float | int = 0.01

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.moe_intermediate_size is None:  # written out: vLLM's MoE backend reads this key first
            self.moe_intermediate_size = self.intermediate_size
        super().__post_init__(**kwargs)
        self.check()

    def check(self) -> None:
        """Raise HunyuanConfigError naming the first key the model cannot be built with."""
        layers = self.num_hidden_layers
        if self.num_attention_heads % self.num_key_value_heads:
            raise HunyuanConfigError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                                     f"num_key_value_heads={self.num_key_value_heads}")
        if self.use_cla and (self.cla_share_factor < 1 or layers % self.cla_share_factor):
            raise HunyuanConfigError(f"cla_share_factor={self.cla_share_factor} does not divide "
                                     f"num_hidden_layers={layers} (use_cla is on)")
        for key in ("moe_topk", "num_shared_expert", "moe_intermediate_size"):
            value = getattr(self, key)
            if isinstance(value, list) and len(value) != layers:
                raise HunyuanConfigError(f"{key} has {len(value)} entries for {layers} layers")
        for layer in range(layers):
            if not 1 <= self.topk(layer) <= self.num_experts:
                raise HunyuanConfigError(f"moe_topk={self.topk(layer)} must be between 1 and "
                                         f"num_experts={self.num_experts} (layer {layer})")
        from transformers.activations import ACT2FN

        if self.hidden_act not in ACT2FN:
            raise HunyuanConfigError(f"hidden_act={self.hidden_act!r} is not an activation transformers knows")
        if self.capacity_factor <= 0:
            raise HunyuanConfigError(f"capacity_factor={self.capacity_factor} must be > 0")
        for key in ("attention_dropout", "hidden_dropout"):
            if not 0 <= getattr(self, key) < 1:
                raise HunyuanConfigError(f"{key}={getattr(self, key)} must be in [0, 1)")
        rope_type = (self.rope_parameters or {}).get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise HunyuanConfigError(f"rope_scaling type {rope_type!r} is not supported "
                                     f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)})")
        if rope_type == "dynamic" and not (self.rope_parameters.get("alpha") or self.rope_parameters.get("factor")):
            raise HunyuanConfigError("rope_scaling type 'dynamic' needs `factor` or `alpha`")

    # ---- per-layer values (Hunyuan-A13B writes some keys as one value per layer)

    def topk(self, layer: int) -> int:
        return _at(self.moe_topk, layer)

    def shared_experts(self, layer: int) -> int:
        return _at(self.num_shared_expert, layer) if self.use_mixed_mlp_moe else 0

    def expert_width(self, layer: int) -> int:
        return _at(self.moe_intermediate_size, layer) or self.intermediate_size

    def kv_source_layer(self, layer: int) -> int:
        """The layer whose K/V projections `layer` attends with (itself unless CLA makes it a cross layer)."""
        return layer - layer % self.cla_share_factor if self.use_cla else layer


def _at(value, layer: int):
    return value[layer] if isinstance(value, list) else value


__all__ = ["HunYuanConfig", "HunyuanConfigError", "HunyuanError", "SUPPORTED_ROPE_TYPES"]
