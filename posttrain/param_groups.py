"""Per-group learning rates for MoE models, and the trainer mixin that builds them.

Groups: shared expert, specialized experts (lr × `expert_lr_ratio`, the report's ≈0.31), router,
attention, embeddings, norms, other; each named, so the LR of each is logged as `lr/<group>`.
Name patterns cover Hunyuan (transformers' `hunyuan_v1_moe` and our native Hunyuan-Large module),
Mixtral and Qwen-MoE; FSDP's wrapper prefixes are fine: the patterns are searched, not anchored.

    class MyTrainer(MoETrainerMixin, SFTTrainer): ...
    trainer = MyTrainer(model=model, moe_config=moe_cfg, args=..., ...)
"""
from __future__ import annotations

import logging
import re
from typing import Any

from posttrain.checkpoints import ExpertSafeResumeMixin
from posttrain.moe import MoEConfig

log = logging.getLogger(__name__)

# Parameter-group names, in the order they are matched (first match wins).
GROUP_NAMES = ("router", "shared_expert", "experts", "norms", "embeddings", "attention", "other")

_GROUP_PATTERNS: dict[str, tuple[str, ...]] = {
    "router": (r"\.mlp\.gate\.", r"\.block_sparse_moe\.gate\.", r"\.router\."),
    "shared_expert": (r"\.shared_mlp\.", r"\.shared_experts?\.", r"\.shared_expert_gate\."),
    "experts": (r"\.experts\.", r"\.experts$", r"\.experts\.[a-z_]+$"),
    "norms": (r"norm",),
    "embeddings": (r"embed_tokens", r"lm_head", r"\.wte\.", r"embed_out"),
    "attention": (r"\.self_attn\.", r"\.attention\."),
}


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


class MoETrainerMixin(ExpertSafeResumeMixin):
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
