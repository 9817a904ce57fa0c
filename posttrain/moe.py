"""Mixture-of-experts specifics shared by the SFT and DPO trainers.

What transformers' `hunyuan_v1_moe` (5.19) gives and what this module adds:

- **Loading** (`load_policy`, `load_tokenizer`): a model alias (`tiny-hunyuan-moe`), a local HF
  directory or a hub id; `trust_remote_code` only when the config says so; a `ModelLoadError`
  with one readable sentence for an unknown name, a missing directory or an unreadable checkpoint.
- **Dropout** (`apply_dropout`): `HunYuanMoEV1Config` has `attention_dropout` (applied to the
  attention probabilities) but no hidden dropout at all. We write `hidden_dropout` into the
  config (so it is saved with the model) and apply it Megatron-style with forward hooks: dropout
  on the output of every attention block and every MoE block, before the residual add. Only in
  training mode; eval and generation are untouched. Models whose config declares a native hidden
  dropout field get the value written there instead, never both.
- **Router aux loss** (`enable_router_aux_loss`): the model returns router logits (when
  `output_router_logits`) but never computes `aux_loss`, and the top-1 router gets no gradient
  from the LM loss (its single routing weight is renormalised to exactly 1). TRL's fused LM head
  (used by SFTTrainer and DPOTrainer) computes the Switch/Mixtral load-balancing loss from the
  router logits when the config asks for them; a forward hook fills the same loss into the
  model's *plain* forward (`outputs.aux_loss`, added to `outputs.loss` when labels are given) so
  custom loops and eval see it too. `router_aux_loss_coef` in the config is the weight.
- **Parameter groups** (`build_param_groups`, `MoETrainerMixin`): shared expert, specialized
  experts (lr × `expert_lr_ratio`, the report's ≈0.31), router, attention, embeddings, norms,
  other; each group named, so the LR of each is logged as `lr/<group>`. Optional router freezing.
- **Resume** (`CheckpointResumeMixin`, part of `MoETrainerMixin`): transformers' single-device resume silently skips the
  MoE expert weights (checkpoint layout differs from the in-memory one); this restores them.

Usage from a trainer script:

    model = load_policy(ModelSpec(name="tiny-hunyuan-moe"), moe_cfg)
    class MyTrainer(MoETrainerMixin, SFTTrainer): ...
    trainer = MyTrainer(model=model, moe_config=moe_cfg, args=..., ...)
"""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

# Parameter-group names, in the order they are matched (first match wins).
GROUP_NAMES = ("router", "shared_expert", "experts", "norms", "embeddings", "attention", "other")

# Name patterns (re.search on the parameter name) per group. Hunyuan first; Mixtral/Qwen-MoE
# spellings too, so the same recipe works on their checkpoints. FSDP's wrapper prefixes are fine:
# the patterns are searched, not anchored.
_GROUP_PATTERNS: dict[str, tuple[str, ...]] = {
    "router": (r"\.mlp\.gate\.", r"\.block_sparse_moe\.gate\.", r"\.router\."),
    "shared_expert": (r"\.shared_mlp\.", r"\.shared_experts?\.", r"\.shared_expert_gate\."),
    "experts": (r"\.experts\.", r"\.experts$", r"\.experts\.[a-z_]+$"),
    "norms": (r"norm",),
    "embeddings": (r"embed_tokens", r"lm_head", r"\.wte\.", r"embed_out"),
    "attention": (r"\.self_attn\.", r"\.attention\."),
}

# Config fields through which some architectures already apply hidden (residual) dropout.
_NATIVE_HIDDEN_DROPOUT_FIELDS = ("hidden_dropout", "hidden_dropout_prob", "resid_pdrop", "residual_dropout")


class ModelLoadError(ValueError):
    """A model or tokenizer cannot be loaded; the message says which and why."""


@dataclass
class ModelSpec:
    """Which model to post-train and how to load it."""

    name: str = "tiny-hunyuan-moe"  # alias (tiny-hunyuan-moe, smollm2-135m), HF directory or hub id
    tokenizer: str = ""  # tokenizer alias/dir/id; "" = the model's own
    trust_remote_code: bool = False  # run code shipped with the checkpoint; only for sources you trust
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"  # weights dtype for training
    attn_implementation: str = "sdpa"  # sdpa | eager | flash_attention_2 (GPU); "" = transformers' choice


@dataclass
class MoEConfig:
    """MoE training knobs: aux loss, dropout, per-group learning rates, router freezing."""

    router_aux_loss_coef: float = 0.01  # weight of the load-balancing loss in the training loss; 0 = off
    attention_dropout: float = 0.0  # dropout on attention probabilities (report SFT: 0.1)
    hidden_dropout: float = 0.0  # dropout on attention/MoE block outputs before the residual (report SFT: 0.2)
    shared_expert_lr_ratio: float = 1.0  # shared expert LR = learning_rate × this
    expert_lr_ratio: float = 0.31  # specialized experts' LR = learning_rate × this (report: ≈0.31)
    router_lr_ratio: float = 1.0  # router (gate) LR = learning_rate × this
    attention_lr_ratio: float = 1.0  # attention projections LR = learning_rate × this
    embedding_lr_ratio: float = 1.0  # token embeddings / LM head LR = learning_rate × this
    norm_lr_ratio: float = 1.0  # RMSNorm weights LR = learning_rate × this (never weight-decayed)
    freeze_router: bool = False  # keep routing fixed: router weights get requires_grad=False

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_ratio") and value < 0:
                raise ValueError(f"{field.name} must be >= 0, got {value}")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.router_aux_loss_coef < 0:
            raise ValueError(f"router_aux_loss_coef must be >= 0, got {self.router_aux_loss_coef}")

    def lr_ratio(self, group: str) -> float:
        """The learning-rate multiplier of a parameter group ("other" trains at the base LR)."""
        return {
            "router": self.router_lr_ratio,
            "shared_expert": self.shared_expert_lr_ratio,
            "experts": self.expert_lr_ratio,
            "norms": self.norm_lr_ratio,
            "embeddings": self.embedding_lr_ratio,
            "attention": self.attention_lr_ratio,
        }.get(group, 1.0)


# --------------------------------------------------------------------------- loading


def resolve_name(name: str) -> str:
    """Alias / directory / hub id → what `from_pretrained` accepts, or a ModelLoadError."""
    from datagen.inference.base import InferenceError
    from datagen.inference.models import resolve_model

    if not name:
        raise ModelLoadError("no model given: set model.name (an alias, an HF directory or a hub id)")
    try:
        return resolve_model(name)
    except InferenceError as err:
        raise ModelLoadError(str(err)) from None


def load_tokenizer(spec: ModelSpec):
    """The tokenizer named by `spec.tokenizer` (default: the model's), with a pad token."""
    from transformers import AutoTokenizer

    name = spec.tokenizer or spec.name
    path = resolve_name(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load tokenizer {name!r} from {path}: {_first_line(err)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs one; the EOS is never a label target here
    return tokenizer


def load_model_config(spec: ModelSpec, moe: MoEConfig | None = None):
    """The model's config with the MoE recipe's dropout written into it."""
    from transformers import AutoConfig

    path = resolve_name(spec.name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        hint = ""
        if "trust_remote_code" in str(err) or isinstance(err, KeyError):
            hint = " (custom architecture: set model.trust_remote_code: true only if you trust its code)"
        raise ModelLoadError(f"cannot read the config of model {spec.name!r} at {path}: {_first_line(err)}{hint}") from None
    if moe is not None:
        write_dropout_to_config(config, moe.attention_dropout, moe.hidden_dropout)
    return config


def load_policy(spec: ModelSpec, moe: MoEConfig | None = None):
    """Load a causal LM for training, with dropout, aux loss and router freezing applied."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_model_config(spec, moe)
    path = resolve_name(spec.name)
    kwargs: dict[str, Any] = {"config": config, "trust_remote_code": spec.trust_remote_code}
    kwargs["dtype"] = "auto" if spec.dtype == "auto" else getattr(torch, spec.dtype)
    if spec.attn_implementation:
        kwargs["attn_implementation"] = spec.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model {spec.name!r} from {path}: {_first_line(err)}") from None
    if moe is not None:
        prepare_moe_model(model, moe)
    return model


def prepare_moe_model(model, moe: MoEConfig) -> None:
    """Apply the recipe to an already-built model (loaded or built in memory)."""
    apply_dropout(model, moe.attention_dropout, moe.hidden_dropout)
    if is_moe(model):
        enable_router_aux_loss(model, moe.router_aux_loss_coef)
        if moe.freeze_router:
            freeze_router(model)
    elif moe.freeze_router or moe.router_aux_loss_coef:
        log.warning("%s is not a mixture-of-experts model: router settings ignored", type(model).__name__)


def is_moe(model) -> bool:
    config = model.config.get_text_config()
    return hasattr(config, "output_router_logits") and bool(getattr(config, "num_experts", None) or
                                                              getattr(config, "num_local_experts", None))


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


# --------------------------------------------------------------------------- dropout


def write_dropout_to_config(config, attention_dropout: float, hidden_dropout: float) -> None:
    """Record both rates in the config so they are saved with the model (config.json)."""
    text_config = config.get_text_config()
    text_config.attention_dropout = attention_dropout
    native = native_hidden_dropout_field(text_config)
    setattr(text_config, native or "hidden_dropout", hidden_dropout)


def native_hidden_dropout_field(config) -> str | None:
    """The config field through which the architecture itself applies hidden dropout, if any."""
    declared = set(getattr(type(config), "__dataclass_fields__", {}))
    return next((f for f in _NATIVE_HIDDEN_DROPOUT_FIELDS if f in declared), None)


class _HiddenDropout:
    """The rate shared by all hooks of one model, so re-applying changes it instead of stacking hooks."""

    def __init__(self, p: float):
        self.p = p
        self.handles: list = []

    def on_block_output(self, module, args, output):
        import torch.nn.functional as F

        if not module.training or self.p == 0.0:
            return output
        if isinstance(output, tuple):  # attention blocks return (hidden, attn_weights)
            return (F.dropout(output[0], self.p, training=True), *output[1:])
        return F.dropout(output, self.p, training=True)


def decoder_layers(model) -> list:
    """Modules that hold an attention block and an MLP/MoE block (Llama-family decoder layers)."""
    return [m for m in model.modules() if hasattr(m, "self_attn") and hasattr(m, "mlp")]


def apply_dropout(model, attention_dropout: float, hidden_dropout: float) -> None:
    """Set attention dropout on every attention module and install hidden dropout hooks."""
    write_dropout_to_config(model.config, attention_dropout, hidden_dropout)
    for module in model.modules():
        # attention modules copy the rate from the config at construction time
        if isinstance(getattr(module, "attention_dropout", None), (int, float)):
            module.attention_dropout = attention_dropout
    if native_hidden_dropout_field(model.config.get_text_config()):
        return  # the architecture reads the config field itself (only takes effect at construction)
    state: _HiddenDropout | None = getattr(model, "_synthpost_hidden_dropout", None)
    if state is not None:
        state.p = hidden_dropout
        return
    if hidden_dropout == 0.0:
        return
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__}: no decoder layers with self_attn and mlp found; "
                         "cannot apply hidden dropout (set moe.hidden_dropout: 0)")
    state = _HiddenDropout(hidden_dropout)
    for layer in layers:
        state.handles.append(layer.self_attn.register_forward_hook(state.on_block_output))
        state.handles.append(layer.mlp.register_forward_hook(state.on_block_output))
    model._synthpost_hidden_dropout = state


# --------------------------------------------------------------------------- router aux loss


def enable_router_aux_loss(model, coef: float) -> None:
    """Put the load-balancing loss (weight `coef`) into the model's training loss.

    Sets `output_router_logits` / `router_aux_loss_coef` in the config, which TRL's trainers read,
    and hooks the plain forward so `outputs.aux_loss` exists outside TRL as well.
    """
    config = model.config.get_text_config()
    if not hasattr(config, "output_router_logits"):
        raise ValueError(f"{type(model).__name__} is not a mixture-of-experts model that returns router logits")
    config.output_router_logits = coef > 0
    config.router_aux_loss_coef = coef
    if coef > 0 and getattr(model, "_synthpost_aux_hook", None) is None:
        model._synthpost_aux_hook = model.register_forward_hook(_fill_in_aux_loss, with_kwargs=True)


def router_aux_loss(router_logits, config, attention_mask=None):
    """Switch-Transformer load-balancing loss over all layers (transformers' Mixtral implementation)."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    if attention_mask is not None and attention_mask.dim() != 2:
        attention_mask = None  # 4-D / packed masks: every row is a real token
    return load_balancing_loss_func(tuple(router_logits), config.num_experts,
                                    _top_k(config), attention_mask)


def _top_k(config) -> int:
    top_k = getattr(config, "num_experts_per_tok", 1)
    if isinstance(top_k, (list, tuple)):  # per-layer top-k: the balancing loss needs one value
        if len(set(top_k)) != 1:
            raise ValueError(f"per-layer top-k {top_k} is not supported by the load-balancing loss")
        top_k = top_k[0]
    return int(top_k)


def _fill_in_aux_loss(module, args, kwargs, output):
    if getattr(output, "aux_loss", 1) is not None or not getattr(output, "router_logits", None):
        return output  # already computed (e.g. TRL's fused head) or nothing to compute it from
    config = module.config.get_text_config()
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2 and output.router_logits[0].shape[0] != mask.numel():
        # decoding with a KV cache: router logits cover only the new tokens, the mask the whole
        # sequence; the balancing loss is a training quantity, so there is nothing to add here
        return output
    aux = router_aux_loss(output.router_logits, config, mask)
    output["aux_loss"] = aux  # item assignment: keeps the ModelOutput's dict and attribute in sync
    if output.loss is not None:
        output.loss = output.loss + config.router_aux_loss_coef * aux
    return output


# --------------------------------------------------------------------------- parameter groups


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


def build_param_groups(model, learning_rate: float, weight_decay: float, moe: MoEConfig) -> list[dict]:
    """Optimizer parameter groups, one per named group, each with its own LR.

    Only trainable parameters are included; every one lands in exactly one group ("other" at the
    base LR if no pattern matches, so nothing is silently left out). Norms get no weight decay.
    """
    by_group: dict[str, list] = {g: [] for g in GROUP_NAMES}
    for name, param in model.named_parameters():
        if param.requires_grad:
            by_group[param_group_of(name)].append(param)
    groups = []
    for name in GROUP_NAMES:
        if by_group[name]:
            groups.append({
                "name": name,
                "params": by_group[name],
                "lr": learning_rate * moe.lr_ratio(name),
                "weight_decay": 0.0 if name == "norms" else weight_decay,
            })
    return groups


def describe_param_groups(groups: list[dict]) -> str:
    """One line per group: name, parameter count, LR — for the log and the model card."""
    lines = []
    for g in groups:
        count = sum(p.numel() for p in g["params"])
        lines.append(f"{g['name']:<14} {count:>12,d} params  lr={g['lr']:.3g}  wd={g['weight_decay']:g}")
    return "\n".join(lines)


class CheckpointResumeMixin:
    """Resume that restores MoE expert weights (transformers 5.19 Trainer does not, on one device).

    `save_pretrained` writes hunyuan_v1_moe experts in the original per-expert layout
    (`experts.0.up_proj.weight`, ...) while the model holds them fused (`experts.gate_up_proj`);
    the Trainer's single-device resume loads the file with a plain `load_state_dict(strict=False)`,
    so the experts keep their fresh values and it only warns. We load the checkpoint through
    `from_pretrained`, which converts the layout, and copy it strictly. FSDP and DeepSpeed resume
    from their own checkpoint formats and are left to the Trainer.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        model = self.model if model is None else model
        if not hasattr(model, "config") or not (Path(resume_from_checkpoint) / "config.json").is_file():
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        dtype = next(model.parameters()).dtype
        restored = type(model).from_pretrained(resume_from_checkpoint, config=model.config, dtype=dtype)
        model.load_state_dict(restored.state_dict(), strict=True)
        log.info("restored model weights from %s", resume_from_checkpoint)


class MoETrainerMixin(CheckpointResumeMixin):
    """Mix into a transformers/TRL Trainer (first in the bases): MoE parameter groups, per-group
    LR logging, and a resume that restores the expert weights.

    `class HunyuanSFTTrainer(MoETrainerMixin, SFTTrainer)`; pass `moe_config=` to the constructor.
    The optimizer class and its other kwargs come from the TrainingArguments as usual, so
    DeepSpeed and FSDP work unchanged (they build the optimizer through `create_optimizer`).
    Training logs gain `lr/<group>` for every group.
    """

    def __init__(self, *args, moe_config: MoEConfig, **kwargs):
        self.moe_config = moe_config
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = build_param_groups(opt_model, self.args.learning_rate, self.args.weight_decay, self.moe_config)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
                raise ValueError(f"optim={self.args.optim} builds its own parameter groups; "
                                 "MoE groups need a standard optimizer such as adamw_torch")
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            log.info("MoE parameter groups:\n%s", describe_param_groups(groups))
        return self.optimizer

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.optimizer is not None and "learning_rate" in logs:
            logs.update(group_learning_rates(self.optimizer, logs["learning_rate"]))
        super().log(logs, *args, **kwargs)


MoEOptimizerMixin = MoETrainerMixin  # earlier name, kept for importers


def group_learning_rates(optimizer, logged_lr: float) -> dict[str, float]:
    """`lr/<group>` for the step the Trainer just logged.

    The Trainer logs group 0's LR from before the scheduler step; every group follows the same
    schedule, so each group's LR is that value scaled by its initial-LR ratio to group 0.
    """
    groups = optimizer.param_groups
    reference = groups[0].get("initial_lr", groups[0]["lr"])
    if not reference:
        return {}
    return {f"lr/{g['name']}": logged_lr * g.get("initial_lr", g["lr"]) / reference
            for g in groups if "name" in g}
