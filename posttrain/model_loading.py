"""Loading the policy to post-train: an alias, a local HF directory or a hub id.

`load_tokenizer` and `load_policy` are the one place a trainable causal LM is loaded (reward
models load in rewards/reward_model.py). `trust_remote_code` only when the config says so; a
`ModelLoadError` with one readable sentence for an unknown name, a missing directory or an
unreadable checkpoint. The MoE recipe (dropout, router aux loss) is applied by posttrain/moe/recipe.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from datagen.config_loader import option
from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models


class ModelLoadError(ValueError):
    """A model or tokenizer cannot be loaded; the message says which and why."""


@dataclass
class ModelSpec:
    """Which model to post-train and how to load it."""

    name: str = option("", "the policy: alias (smollm2-moe, tiny-hunyuan-moe, ...), HF directory or hub id")
    tokenizer: str = option("", "tokenizer alias/dir/id; empty = the model's own")
    trust_remote_code: bool = option(False, "run code shipped with the checkpoint; only for sources you trust")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = option("float32", "weights dtype for training")
    attn_implementation: str = option("sdpa", "sdpa | eager | flash_attention_2 (GPU); empty = transformers' choice")


def resolve_name(name: str) -> str:
    """Alias / directory / hub id → what `from_pretrained` accepts, or a ModelLoadError."""
    from datagen.inference.base import InferenceError
    from datagen.inference.model_names import resolve_model

    register_models()  # the aliases tiny-hunyuan-moe and smollm2-moe
    if not name:
        raise ModelLoadError("no model given: set model.name (an alias, an HF directory or a hub id)")
    try:
        return resolve_model(name)
    except InferenceError as err:
        raise ModelLoadError(str(err)) from None


def load_tokenizer(spec: ModelSpec):
    """The tokenizer named by `spec.tokenizer` (default: the model's), with a pad token."""
    from transformers import AutoTokenizer

    register_hunyuan()
    name = spec.tokenizer or spec.name
    path = resolve_name(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:  # KeyError: transformers rejects a config block
        raise ModelLoadError(f"cannot load tokenizer {name!r} from {path}: {first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs one; the EOS is never a label target here
    return tokenizer


def load_model_config(spec: ModelSpec):
    from transformers import AutoConfig

    register_hunyuan()
    path = resolve_name(spec.name)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        hint = ""
        if "trust_remote_code" in str(err) or isinstance(err, KeyError):
            hint = " (custom architecture: set model.trust_remote_code: true only if you trust its code)"
        raise ModelLoadError(f"cannot read the config of model {spec.name!r} at {path}: {first_line(err)}{hint}") from None


def load_policy(spec: ModelSpec, moe=None):
    """A causal LM for training; with `moe` (posttrain.moe.recipe.MoEConfig) the MoE recipe is applied:
    dropout written into the config before the weights load, aux loss and router freezing after."""
    import torch
    from transformers import AutoModelForCausalLM

    from posttrain.moe.recipe import prepare_moe_model, write_dropout_to_config

    config = load_model_config(spec)
    if moe is not None:
        write_dropout_to_config(config, moe.attention_dropout, moe.hidden_dropout)
    kwargs: dict[str, Any] = {"config": config, "trust_remote_code": spec.trust_remote_code,
                              "dtype": "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)}
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    path = resolve_name(spec.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {spec.name!r} from {path}: {first_line(err)}") from None
    if moe is not None:
        prepare_moe_model(model, moe)
    return model


def first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
