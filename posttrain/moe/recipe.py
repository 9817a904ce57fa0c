"""Mixture-of-experts specifics shared by the SFT, DPO and reward-model trainers.

- **Router aux loss** (`enable_router_aux_loss`): transformers' `hunyuan_v1_moe` returns router
  logits (when `output_router_logits`) but never computes `aux_loss`, and its top-1 router gets no
  gradient from the LM loss (its single routing weight is renormalised to exactly 1). TRL's fused
  LM head (SFTTrainer, DPOTrainer) computes the Switch/Mixtral load-balancing loss from the router
  logits when the config asks for them; a forward hook fills the same loss into the model's
  *plain* forward (`outputs.aux_loss`, added to `outputs.loss` when labels are given) so custom
  loops and eval see it too. Models that compute `aux_loss` themselves are left alone.
  `router_aux_loss_coef` in the config is the weight.
- **Dropout** (posttrain/moe/dropout.py) and **per-group learning rates** (posttrain/moe/param_groups.py).
- **Expert-specific learning rate** (`expert_lr_ratio`; derivation in posttrain/hunyuan/expert_lr.py).
  By default it is derived from the model's routing and the run's gradient noise scale, as the
  Hunyuan-Large report does: with top-k of n routed experts each expert sees about k/n of a batch's
  B tokens, and Li et al.'s optimal Adam learning rate eps_opt(B) = 2 eps_max / (sqrt(B_noise/B) +
  sqrt(B/B_noise)) gives

      expert_lr_ratio = eps_opt(B k/n) / eps_opt(B).

  B is the batch per optimizer step (per-device batch x accumulation x world size, read from the
  trainer; posttrain/moe/param_groups.py). B_noise is `gradient_noise_scale_tokens` when given, else
  measured on the run before its first step (per-row gradients of `noise_scale_batches` rows of its
  own data at its starting weights: McCandlish et al.'s B_simple, posttrain/moe/noise_scale.py). The trainer logs
  both and the ratio, in the log and in the first training log line (`noise_scale/...`); the model
  card's recipe states them. A number in `expert_lr_ratio` is a fixed override (Hunyuan-Large's
  recipe: the report's 0.31).
- **Expert load** (posttrain/moe/expert_load.py): the share of routed tokens each layer's busiest
  expert took, and dropped / recycled counts, logged as `moe/...` with the training loss.
- `prepare_moe_model` applies the recipe to a loaded or in-memory model.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

from datagen.config_loader import option
from posttrain.moe.dropout import apply_dropout, write_dropout_to_config  # noqa: F401 - write_… is part of the recipe API

log = logging.getLogger(__name__)

NOISE_SCALE_GROUP = 4  # small batches per big batch in the noise-scale measurement (B_big = 4 B_small)


@dataclass
class MoEConfig:
    """MoE training knobs: aux loss, dropout, per-group learning rates, router freezing."""

    router_aux_loss_coef: float = option(0.01, "weight of the load-balancing loss in the training loss; 0 = off")
    attention_dropout: float = option(0.0, "dropout on attention probabilities (report SFT: 0.1)")
    hidden_dropout: float = option(0.0, "dropout on attention/MoE block outputs before the residual (report SFT: 0.2)")
    shared_expert_lr_ratio: float = option(1.0, "shared expert LR = learning_rate × this")
    expert_lr_ratio: float | None = option(
        None, "specialized experts' LR = learning_rate × this; null = derived from the model's routing and the "
              "gradient noise scale: eps_opt(B·k/n) / eps_opt(B) with Li et al.'s optimal Adam LR eps_opt(B) = "
              "2·eps_max / (sqrt(B_noise/B) + sqrt(B/B_noise)), top-k of n routed experts, B = the batch per "
              "optimizer step; a number overrides it (Hunyuan-Large's report: 0.31 for top-1 of 16)")
    gradient_noise_scale_tokens: float = option(
        0.0, "B_noise in tokens, if known: the derived expert_lr_ratio uses it with the run's batch; "
             "0 = measure it on this run (noise_scale_batches); the card records the value used")
    noise_scale_batches: int = option(
        8, "rows of the run's own data (small batches of 1 row, 4 to a big batch) whose per-row "
           "gradients measure the gradient noise scale B_simple = tr(Σ)/|G|² before the first step, when "
           "expert_lr_ratio is null and gradient_noise_scale_tokens 0; 0 = do not measure (then one of the "
           "two must be given)")
    router_lr_ratio: float = option(1.0, "router (gate) LR = learning_rate × this")
    attention_lr_ratio: float = option(1.0, "attention projections LR = learning_rate × this")
    embedding_lr_ratio: float = option(1.0, "token embeddings / LM head LR = learning_rate × this")
    norm_lr_ratio: float = option(1.0, "RMSNorm weights LR = learning_rate × this (never weight-decayed)")
    freeze_router: bool = option(False, "keep routing fixed: router weights get requires_grad=False")

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name.endswith("_ratio") and value is not None and value < 0:
                raise ValueError(f"{field.name} must be >= 0, got {value}")
        for name in ("attention_dropout", "hidden_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.router_aux_loss_coef < 0:
            raise ValueError(f"router_aux_loss_coef must be >= 0, got {self.router_aux_loss_coef}")
        if self.gradient_noise_scale_tokens < 0:
            raise ValueError(f"gradient_noise_scale_tokens must be >= 0, got {self.gradient_noise_scale_tokens}")
        if self.noise_scale_batches < 0 or 0 < self.noise_scale_batches < NOISE_SCALE_GROUP:
            raise ValueError(f"noise_scale_batches must be 0 or >= {NOISE_SCALE_GROUP} (one big batch), "
                             f"got {self.noise_scale_batches}")

    def lr_ratio(self, group: str) -> float:
        """The learning-rate multiplier of a parameter group ("other" trains at the base LR).
        `expert_lr_ratio` must be resolved first (`derive_expert_lr_ratio`)."""
        if group == "experts" and self.expert_lr_ratio is None:
            raise ValueError("expert_lr_ratio is not resolved yet: call derive_expert_lr_ratio(model, ...)")
        return {
            "router": self.router_lr_ratio,
            "shared_expert": self.shared_expert_lr_ratio,
            "experts": self.expert_lr_ratio,
            "norms": self.norm_lr_ratio,
            "embeddings": self.embedding_lr_ratio,
            "attention": self.attention_lr_ratio,
        }.get(group, 1.0)


def has_routed_experts(model) -> bool:
    config = model.config.get_text_config()
    return (getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None) or 1) > 1


def needs_noise_scale(moe: MoEConfig, model) -> bool:
    """The experts' LR ratio is to be derived and B_noise is not given: the run must measure it."""
    return moe.expert_lr_ratio is None and not moe.gradient_noise_scale_tokens and has_routed_experts(model)


def derive_expert_lr_ratio(moe: MoEConfig, model, batch_tokens: float | None = None, batch_rows: float | None = None,
                           measured=None) -> tuple[float, str]:
    """(the experts' LR ratio to use, one line saying where it comes from); `moe` is left as it is.

    The fixed `expert_lr_ratio` if set; else derived from the model's routing at B / B_noise, with
    B_noise = `moe.gradient_noise_scale_tokens` (against `batch_tokens`, the tokens per optimizer step)
    or `measured` (a posttrain.moe.noise_scale.NoiseScale in rows, against `batch_rows`). A model
    without routed experts has no experts group: 1.0."""
    from posttrain.hunyuan.configuration import HunyuanError
    from posttrain.hunyuan.expert_lr import expert_lr_ratio_for

    from datagen.config_loader import ConfigError

    if moe.expert_lr_ratio is not None:
        return moe.expert_lr_ratio, f"expert_lr_ratio {moe.expert_lr_ratio:g} (fixed in the config)"
    if not has_routed_experts(model):
        return 1.0, "no routed experts: expert_lr_ratio unused"
    config = model.config.get_text_config()
    try:
        if moe.gradient_noise_scale_tokens and batch_tokens:
            noise = moe.gradient_noise_scale_tokens
            ratio = expert_lr_ratio_for(config, batch_tokens, noise)
            point = f"B = {batch_tokens:,.0f} tokens/step, B_noise = {noise:,.0f} tokens (given; B/B_noise {batch_tokens / noise:.3g})"
        elif measured is not None and batch_rows:
            noise = measured.b_simple
            ratio = expert_lr_ratio_for(config, batch_rows, noise)
            point = (f"B = {batch_rows:g} rows/step, B_noise = {noise:.3g} rows (measured on this run; "
                     f"B/B_noise {batch_rows / noise:.3g})" if math.isfinite(noise) else
                     f"B = {batch_rows:g} rows/step, B_noise beyond the measurement (|G|² estimate <= 0: "
                     "B/B_noise -> 0, the square-root rule sqrt(k/n))")
        else:
            raise ConfigError("moe.expert_lr_ratio is null (derive it) but the gradient noise scale is unknown: "
                              "let the run measure it (moe.noise_scale_batches > 0, the default), give "
                              "moe.gradient_noise_scale_tokens, or fix moe.expert_lr_ratio (the Hunyuan-Large "
                              "report's 0.31 is for top-1 of 16)")
    except HunyuanError as err:  # e.g. top-k differing between layers: one ratio cannot fit them all
        raise ConfigError(f"cannot derive moe.expert_lr_ratio: {err}; set it in the config") from None
    routing = _routing_of(config)
    return ratio, f"expert_lr_ratio {ratio:.3f} derived from {routing} at {point}"


def _routing_of(config) -> str:
    experts = getattr(config, "num_experts", None) or getattr(config, "num_local_experts", None)
    top_k = getattr(config, "moe_topk", None) or getattr(config, "num_experts_per_tok", None)
    top_k = top_k[0] if isinstance(top_k, (list, tuple)) else top_k
    return f"top-{top_k} of {experts} routed experts"


def prepare_moe_model(model, moe: MoEConfig) -> None:
    """Apply the recipe to an already-built model (loaded or built in memory)."""
    from posttrain.moe.param_names import freeze_router

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


