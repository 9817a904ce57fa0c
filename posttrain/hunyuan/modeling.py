"""Hunyuan-Large in transformers' own style: `HunYuanModel`, `HunYuanForCausalLM`,
`HunYuanForSequenceClassification` (`model_type: "hunyuan"`).

What it computes is Tencent's model (github Tencent/Tencent-Hunyuan-Large, read to learn,
not copied); the parameter names are Tencent's, so their checkpoints load as they are:

    model.embed_tokens.weight, model.norm.weight, lm_head.weight
    model.layers.{i}.input_layernorm.weight / post_attention_layernorm.weight
    model.layers.{i}.self_attn.{q,k,v,o}_proj.weight   (no k/v on CLA cross layers)
    model.layers.{i}.self_attn.{query,key}_layernorm.weight   (use_qk_norm)
    model.layers.{i}.mlp.gate.wg.weight                 (router)
    model.layers.{i}.mlp.shared_mlp.{gate,up,down}_proj.weight   (use_mixed_mlp_moe)
    model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight
    model.layers.{i}.mlp.{gate,up,down}_proj.weight     (num_experts == 1: a dense MLP)

Attention goes through transformers' attention-function interface (eager, SDPA, flash, and
vLLM's Transformers backend). QK-norm is applied after RoPE, as in Tencent's code.

Cross-layer attention (CLA): a cross layer attends with its group's first layer's keys and
values: post-RoPE keys *before* QK-norm (each layer normalises them with its own
`key_layernorm`, as Tencent's code does) and values. The KV cache holds them once per group,
in the slot of the group's first layer, so factor 2 stores half of what a model without CLA does.
A serving engine that keeps one cache per group (vLLM, posttrain/hunyuan/vllm_model.py) holds the
keys as the group's first layer *normalised* them; `read_keys_from` lets a cross layer attend to
those: RMSNorm is w * k / rms(k), so w_c * n(k) = (w_c / w_s) * (w_s * n(k)) and the cross layer
moves its own key-norm weight onto the query (q . (w_c * n(k)) = (q * w_c / w_s) . (w_s * n(k))).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.generation import GenerationMixin
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GenericForSequenceClassification, GradientCheckpointingLayer
from transformers.modeling_outputs import MoeCausalLMOutputWithPast, MoeModelOutputWithPast
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.llama.modeling_llama import eager_attention_forward, rotate_half
from transformers.utils import can_return_tuple
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration import HunYuanConfig
from .loading import check_loading_info
from .routing import Routing, expert_capacity, load_balancing_loss, route


class HunYuanRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        hidden_states = hidden_states.to(torch.float32)
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon)).to(dtype)


class HunYuanMLP(nn.Module):
    """SwiGLU MLP: a dense layer, the shared expert, or one routed expert."""

    def __init__(self, config: HunYuanConfig, width: int):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class HunYuanExperts(nn.ModuleList):
    """The routed experts, run grouped by expert: one sort of the (token, choice) pairs, then one
    contiguous slice per expert, instead of a mask scan over all tokens for every expert."""

    def __init__(self, config: HunYuanConfig, layer_idx: int):
        super().__init__([HunYuanMLP(config, config.expert_width(layer_idx)) for _ in range(config.num_experts)])

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        top_k = top_k_index.shape[-1]
        flat_experts = top_k_index.reshape(-1)
        order = torch.argsort(flat_experts, stable=True)
        token_of = order // top_k
        counts = torch.bincount(flat_experts, minlength=len(self) + 1).tolist()
        chunks = hidden_states[token_of].split(counts)
        outputs = [expert(chunk) for expert, chunk in zip(self, chunks) if chunk.shape[0]]
        if not outputs:
            return torch.zeros_like(hidden_states)
        routed = torch.cat(outputs)  # dropped choices (index len(self)) sort last and are left out
        weights = top_k_weights.reshape(-1)[order[: routed.shape[0]], None].to(routed.dtype)
        out = torch.zeros_like(hidden_states)
        return out.index_add_(0, token_of[: routed.shape[0]], routed * weights)


class HunYuanTopKGate(nn.Module):
    """The router: logits over the routed experts, computed in float32."""

    def __init__(self, config: HunYuanConfig):
        super().__init__()
        self.wg = nn.Linear(config.hidden_size, config.num_experts, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if isinstance(self.wg, nn.Linear):
            return F.linear(hidden_states.float(), self.wg.weight.float())
        # a serving engine swapped in its own layer (vLLM may repack the weight): call it as it is
        return self.wg(hidden_states).float()


class HunYuanMoE(nn.Module):
    """Shared expert(s) + top-k routed experts (`config.moe_*` documents the routing)."""

    def __init__(self, config: HunYuanConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.top_k = config.topk(layer_idx)
        shared = config.shared_experts(layer_idx)
        if shared:
            self.shared_mlp = HunYuanMLP(config, config.intermediate_size * shared)
        self.gate = HunYuanTopKGate(config)
        self.experts = HunYuanExperts(config, layer_idx)
        self.last_routing = None  # RoutingStats of the latest forward, for logging the expert load

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        flat = hidden_states.reshape(-1, shape[-1])
        routing = self.route(self.gate(flat))
        out = self.experts(flat, routing.experts, routing.weights)
        if hasattr(self, "shared_mlp"):
            out = out + self.shared_mlp(flat)
        return out.reshape(shape)

    def route(self, logits: torch.Tensor) -> Routing:
        capacity = None
        if self.training and self.config.moe_drop_tokens:
            capacity = expert_capacity(logits.shape[0], self.top_k, logits.shape[1], self.config.capacity_factor)
        routing = route(logits, self.top_k, capacity, recycle=self.config.moe_random_routing_dropped_token)
        self.last_routing = routing.stats
        return routing


class HunYuanRotaryEmbedding(nn.Module):
    """RoPE: default, linear, dynamic NTK by `factor`, or Tencent's NTK-alpha (`dynamic` + `alpha`)."""

    def __init__(self, config: HunYuanConfig):
        super().__init__()
        self.config = config
        params = config.rope_parameters
        self.alpha = params.get("alpha") if params["rope_type"] == "dynamic" else None
        self.rope_type = "default" if self.alpha else params["rope_type"]  # alpha: a fixed base
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        inv_freq, self.attention_scaling = self.compute_inv_freq()
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    def compute_inv_freq(self) -> tuple[torch.Tensor, float]:
        if self.rope_type != "default":
            return ROPE_INIT_FUNCTIONS[self.rope_type](self.config)
        dim = self.config.head_dim
        base = self.config.rope_parameters["rope_theta"]
        if self.alpha:
            base = base * self.alpha ** (dim / (dim - 2))
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0

    @torch.no_grad()
    @dynamic_rope_update
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device, torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [batch, heads, seq, head_dim] by the position embeddings [batch, seq, head_dim]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


class HunYuanAttention(nn.Module):
    """GQA attention; a CLA cross layer has no K/V projections and takes its group's keys/values."""

    def __init__(self, config: HunYuanConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.kv_layer_idx = config.kv_source_layer(layer_idx)  # the cache slot this layer reads
        self.is_cross = self.kv_layer_idx != layer_idx
        self.head_dim = config.head_dim
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        bias = config.attention_bias
        q_size, kv_size = config.num_attention_heads * self.head_dim, config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(config.hidden_size, q_size, bias=bias)
        if not self.is_cross:
            self.k_proj = nn.Linear(config.hidden_size, kv_size, bias=bias)
            self.v_proj = nn.Linear(config.hidden_size, kv_size, bias=bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=bias)
        if config.use_qk_norm:
            self.query_layernorm = HunYuanRMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.key_layernorm = HunYuanRMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self._key_source = None  # see read_keys_from

    def read_keys_from(self, source: "HunYuanAttention") -> None:
        """A cross layer attends to the keys as `source` (its group's first layer) normalised them,
        i.e. as a cache shared by the group holds them; exact while `source`'s key-norm weights are
        non-zero (module docstring). Only serving engines with such a cache set this."""
        if not (self.is_cross and source.layer_idx == self.kv_layer_idx):
            raise ValueError(f"layer {self.layer_idx} does not read layer {source.layer_idx}'s keys")
        object.__setattr__(self, "_key_source", source)  # a plain reference, not a second submodule

    def forward(self, hidden_states, position_embeddings, attention_mask, shared_kv=None,
                past_key_values: Cache | None = None, **kwargs):
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        cos, sin = position_embeddings
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        if self.is_cross:
            if shared_kv is None:
                raise RuntimeError(f"CLA layer {self.layer_idx} ran without layer {self.kv_layer_idx}'s keys/values")
            query = apply_rope(query, cos, sin)
            keys, values = shared_kv
        else:
            key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
            values = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
            query, keys = apply_rope(query, cos, sin), apply_rope(key, cos, sin)
            if past_key_values is not None:
                keys, values = past_key_values.update(keys, values, self.layer_idx)
        attn_keys = keys
        if self.config.use_qk_norm:
            query = self.query_layernorm(query)
            if self._key_source is None:
                attn_keys = self.key_layernorm(keys)
            else:  # the keys as the group's first layer normalised them (read_keys_from)
                source_norm = self._key_source.key_layernorm
                query = query * (self.key_layernorm.weight / source_norm.weight).to(query.dtype)
                attn_keys = source_norm(keys)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward)
        attn_output, attn_weights = attention_interface(
            self, query, attn_keys, values, attention_mask,
            dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling, **kwargs)
        attn_output = self.o_proj(attn_output.reshape(*input_shape, -1).contiguous())
        return attn_output, attn_weights, keys, values


class HunYuanDecoderLayer(GradientCheckpointingLayer):
    def __init__(self, config: HunYuanConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.self_attn = HunYuanAttention(config, layer_idx)
        if config.num_experts > 1:
            self.mlp = HunYuanMoE(config, layer_idx)
        else:
            self.mlp = HunYuanMLP(config, config.intermediate_size)
        self.input_layernorm = HunYuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = HunYuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, hidden_states, shared_keys=None, shared_values=None, attention_mask=None,
                position_embeddings=None, past_key_values=None, **kwargs):
        """Returns (hidden_states, keys, values); keys/values are this layer's own (None on a
        cross layer), passed positionally to the layers sharing them so that gradient
        checkpointing (re-entrant or not) carries their gradients."""
        shared = (shared_keys, shared_values) if shared_keys is not None else None
        residual = hidden_states
        attn_out, _, keys, values = self.self_attn(
            self.input_layernorm(hidden_states), position_embeddings=position_embeddings,
            attention_mask=attention_mask, shared_kv=shared, past_key_values=past_key_values, **kwargs)
        hidden_states = residual + self._hidden_dropout(attn_out)
        residual = hidden_states
        hidden_states = residual + self._hidden_dropout(self.mlp(self.post_attention_layernorm(hidden_states)))
        if self.self_attn.is_cross:
            return hidden_states, None, None
        return hidden_states, keys, values

    def _hidden_dropout(self, x: torch.Tensor) -> torch.Tensor:
        # read at call time: the trainers may change config.hidden_dropout after construction
        p = self.config.hidden_dropout
        return F.dropout(x, p, training=True) if self.training and p else x


class HunYuanPreTrainedModel(PreTrainedModel):
    config_class = HunYuanConfig
    config: HunYuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HunYuanDecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_record_outputs = {
        "hidden_states": HunYuanDecoderLayer,
        "attentions": OutputRecorder(HunYuanAttention, index=1),
        "router_logits": HunYuanTopKGate,
    }

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, HunYuanRotaryEmbedding):
            inv_freq, _ = module.compute_inv_freq()
            init.copy_(module.inv_freq, inv_freq)
            init.copy_(module.original_inv_freq, inv_freq)
        else:
            super()._init_weights(module)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """transformers' loader, with a missing, unexpected or mis-shaped tensor as an error
        (CheckpointError naming it) instead of a warning over a half-initialised model."""
        want_info = kwargs.pop("output_loading_info", False)
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
        check_loading_info(info, model, allow_mismatch=allow_mismatch)
        return (model, info) if want_info else model


class HunYuanModel(HunYuanPreTrainedModel):
    def __init__(self, config: HunYuanConfig):
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList([HunYuanDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = HunYuanRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = HunYuanRotaryEmbedding(config)
        self.gradient_checkpointing = False
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs) -> MoeModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)  # CLA: cross layers' slots stay empty
        if position_ids is None:
            past_seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = (torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen).unsqueeze(0)
        causal_mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                                         past_key_values=past_key_values, position_ids=position_ids)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        keys = values = None
        for layer in self.layers[: self.config.num_hidden_layers]:
            hidden_states, own_keys, own_values = layer(
                hidden_states, keys, values, attention_mask=causal_mask, position_embeddings=position_embeddings,
                position_ids=position_ids, past_key_values=past_key_values, use_cache=use_cache, **kwargs)
            if own_keys is not None:
                keys, values = own_keys, own_values
        return MoeModelOutputWithPast(last_hidden_state=self.norm(hidden_states), past_key_values=past_key_values)


class HunYuanForCausalLM(HunYuanPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}
    _pp_plan = {"lm_head": (["hidden_states"], ["logits"])}

    def __init__(self, config: HunYuanConfig):
        super().__init__(config)
        self.model = HunYuanModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_router_logits=None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs) -> MoeCausalLMOutputWithPast:
        """Causal LM. With `output_router_logits` (argument or config) and routed experts, `aux_loss`
        is the load-balancing loss, and `loss` (when labels are given) includes it times
        `config.router_aux_loss_coef` -- once: trainers add nothing more."""
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        output_router_logits = output_router_logits and self.config.num_experts > 1
        outputs: MoeModelOutputWithPast = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
            output_router_logits=output_router_logits, **kwargs)
        hidden_states = outputs.last_hidden_state
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        aux_loss = None
        if output_router_logits and outputs.router_logits:
            aux_loss = self._aux_loss(outputs.router_logits, attention_mask, hidden_states.shape[1])
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss.to(loss.device)
        return MoeCausalLMOutputWithPast(
            loss=loss, aux_loss=aux_loss, logits=logits, past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions, router_logits=outputs.router_logits)

    def _aux_loss(self, router_logits, attention_mask, seq_len: int) -> torch.Tensor:
        # the 2-D padding mask only when it covers exactly the routed tokens (not while decoding)
        if attention_mask is None or attention_mask.dim() != 2 or attention_mask.shape[-1] != seq_len:
            attention_mask = None
        top_ks = {self.config.topk(i) for i in range(self.config.num_hidden_layers)}
        if len(top_ks) == 1:
            return load_balancing_loss(router_logits, self.config.num_experts, top_ks.pop(), attention_mask)
        per_layer = [load_balancing_loss((logits,), self.config.num_experts, self.config.topk(i), attention_mask)
                     for i, logits in enumerate(router_logits)]
        return torch.stack(per_layer).mean()


class HunYuanForSequenceClassification(GenericForSequenceClassification, HunYuanPreTrainedModel):
    """Reward models: the base model plus a `score` head on the last non-padding token."""


__all__ = ["HunYuanForCausalLM", "HunYuanForSequenceClassification", "HunYuanModel", "HunYuanPreTrainedModel"]
