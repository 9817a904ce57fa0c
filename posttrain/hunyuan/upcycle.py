"""Sparse upcycling: a dense Llama-shaped model becomes a native Hunyuan MoE that computes the
same function at initialisation.

How the MoE stays exact: each dense MLP is y = W_down (silu(W_gate x) * W_up x), a sum over its
neurons. The first `shared_fraction` of the neurons becomes the shared expert; the rest is copied
into every routed expert. The router starts at zero, so its softmax gives every expert exactly
1/n; top-1 combines the chosen expert's output with that raw probability, so each routed copy's
W_down is scaled by n (a power of two keeps the scaling exact in binary floating point). Then
shared(x) + (1/n) * n * rest(x) == y for every token, whichever expert it picks.

The copies are identical and the router is flat, so in dropless routing every token would pick
the same expert until training separates them. The upcycled config therefore trains with the
report's capacity and recycle routing (`moe_drop_tokens`, `moe_random_routing_dropped_token`,
`capacity_factor: 1.0`): each expert takes at most its share of a batch and the overflow goes to
random experts with room, so every expert (and every router row) gets its own gradient from the
first step. Inference stays dropless. Attention and norms are copied as they are (`use_qk_norm`
and `use_cla` off: the dense model was trained without them).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .configuration import HunYuanConfig, HunyuanError

_ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                    "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")


class UpcycleError(HunyuanError):
    """The source model is not a dense Llama-shaped checkpoint this upcycle can keep exact."""


def upcycle_config(dense, num_experts: int = 4, shared_fraction: float = 0.5) -> HunYuanConfig:
    """The MoE config for a dense Llama-shaped config (a transformers config or its dict)."""
    d = dense if isinstance(dense, dict) else dense.to_dict()
    _check_dense_config(d, num_experts, shared_fraction)
    inter = d["intermediate_size"]
    shared = int(round(inter * shared_fraction))
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "head_dim", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
            "pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id", "tie_word_embeddings")
    return HunYuanConfig(
        **{k: d[k] for k in keep if d.get(k) is not None},
        rope_parameters=dict(d.get("rope_parameters") or d.get("rope_scaling") or {"rope_type": "default"},
                             **({"rope_theta": d["rope_theta"]} if "rope_theta" in d else {})),
        intermediate_size=shared, moe_intermediate_size=inter - shared, num_experts=num_experts, moe_topk=1,
        use_mixed_mlp_moe=True, num_shared_expert=1, use_qk_norm=False, use_cla=False, cla_share_factor=1,
        capacity_factor=1.0, moe_drop_tokens=True, moe_random_routing_dropped_token=True,
        architectures=["HunYuanForCausalLM"])


def upcycle_state_dict(dense_state: dict[str, torch.Tensor], config: HunYuanConfig) -> dict[str, torch.Tensor]:
    """Dense Llama tensors -> the MoE's, by Tencent's names (see the module docstring)."""
    _check_dense_tensors(dense_state, config)
    n, shared = config.num_experts, config.intermediate_size
    state = {k: dense_state[k] for k in ("model.embed_tokens.weight", "model.norm.weight")}
    state["lm_head.weight"] = dense_state.get("lm_head.weight", dense_state["model.embed_tokens.weight"])
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        for name in ("input_layernorm", "post_attention_layernorm"):
            state[p + name + ".weight"] = dense_state[p + name + ".weight"]
        for proj in _ATTENTION:
            state[p + f"self_attn.{proj}.weight"] = dense_state[p + f"self_attn.{proj}.weight"]
        gate, up, down = (dense_state[p + f"mlp.{proj}.weight"] for proj in _MLP)
        state[p + "mlp.shared_mlp.gate_proj.weight"] = gate[:shared]
        state[p + "mlp.shared_mlp.up_proj.weight"] = up[:shared]
        state[p + "mlp.shared_mlp.down_proj.weight"] = down[:, :shared]
        state[p + "mlp.gate.wg.weight"] = torch.zeros(n, config.hidden_size, dtype=gate.dtype)
        for e in range(n):  # identical copies; W_down x n undoes the router's initial 1/n
            state[p + f"mlp.experts.{e}.gate_proj.weight"] = gate[shared:].clone()
            state[p + f"mlp.experts.{e}.up_proj.weight"] = up[shared:].clone()
            state[p + f"mlp.experts.{e}.down_proj.weight"] = down[:, shared:] * n
    return state


def upcycle_model(dense_model, num_experts: int = 4, shared_fraction: float = 0.5):
    """An in-memory dense Llama-shaped model -> HunYuanForCausalLM (float32) computing the same function."""
    from .modeling import HunYuanForCausalLM

    config = upcycle_config(dense_model.config, num_experts, shared_fraction)
    dense_state = {k: v.detach().float() for k, v in dense_model.state_dict().items()}
    model = HunYuanForCausalLM(config)
    model.load_state_dict(upcycle_state_dict(dense_state, config), strict=True)
    model.generation_config = dense_model.generation_config
    return model.eval()


def upcycle_directory(source: str | Path, dest: str | Path, num_experts: int = 4, shared_fraction: float = 0.5,
                      dtype: torch.dtype = torch.bfloat16) -> Path:
    """Upcycle the HF checkpoint directory `source` into `dest` with its tokenizer, chat template
    and generation config. `dtype` is the saved weights' (bfloat16: a bf16 source stays bit-exact)."""
    from safetensors.torch import load_file

    from .modeling import HunYuanForCausalLM

    source, dest = Path(source), Path(dest)
    config_file = source / "config.json"
    if not config_file.is_file():
        raise UpcycleError(f"{source} has no config.json")
    config = upcycle_config(json.loads(config_file.read_text()), num_experts, shared_fraction)
    files = sorted(source.glob("*.safetensors"))
    if not files:
        raise UpcycleError(f"{source} has no *.safetensors weights")
    dense_state = {k: v.float() for f in files for k, v in load_file(f).items()}
    model = HunYuanForCausalLM(config)
    model.load_state_dict(upcycle_state_dict(dense_state, config), strict=True)
    dest.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(dest, safe_serialization=True)
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, dest / name)
    return dest


def _check_dense_config(d: dict, num_experts: int, shared_fraction: float) -> None:
    if d.get("model_type") not in ("llama", None):
        raise UpcycleError(f"model_type {d.get('model_type')!r} is not Llama-shaped (upcycling takes llama)")
    for key in ("attention_bias", "mlp_bias"):
        if d.get(key):
            raise UpcycleError(f"{key} is true: the MoE has no biases there")
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(d.get(key), int):
            raise UpcycleError(f"config key {key} is missing: not a Llama-shaped config")
    if num_experts < 1 or num_experts & (num_experts - 1):
        raise UpcycleError(f"num_experts={num_experts}: must be a power of two for an exact 1/n scaling")
    shared = int(round(d["intermediate_size"] * shared_fraction))
    if not 0 < shared < d["intermediate_size"]:
        raise UpcycleError(f"shared_fraction={shared_fraction} leaves no neurons for the shared or routed experts")


def _check_dense_tensors(state: dict, config: HunYuanConfig) -> None:
    expected = {"model.embed_tokens.weight", "model.norm.weight"}
    if not config.tie_word_embeddings:
        expected.add("lm_head.weight")
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        expected |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
        expected |= {p + f"self_attn.{proj}.weight" for proj in _ATTENTION}
        expected |= {p + f"mlp.{proj}.weight" for proj in _MLP}
    missing = sorted(expected - set(state))
    if missing:
        raise UpcycleError(f"dense checkpoint lacks tensor {missing[0]}: not a Llama-shaped model")
    extra = sorted(set(state) - expected - {"lm_head.weight"})
    if extra:
        raise UpcycleError(f"dense checkpoint has tensor {extra[0]} that a Llama-shaped model does not")
