"""Per-group learning rates for MoE models, and the trainer mixin that builds them.

Groups: shared expert, specialized experts (lr × `expert_lr_ratio`: derived from the routing and
the tokens per optimizer step unless fixed, see posttrain/moe/recipe.py), router, attention, embeddings,
norms, other; each named, so the LR of each is logged as `lr/<group>`.
Which group a parameter is in: posttrain/moe/param_names.py.

    class MyTrainer(MoETrainerMixin, SFTTrainer): ...
    trainer = MyTrainer(model=model, moe_config=moe_cfg, args=..., ...)
"""
from __future__ import annotations

import logging

from posttrain.checkpoints import ExpertSafeResumeMixin
from posttrain.moe.expert_load import ExpertLoad
from posttrain.moe.recipe import MoEConfig, derive_expert_lr_ratio
from posttrain.moe.param_names import GROUP_NAMES, param_group_of

log = logging.getLogger(__name__)

def build_param_groups(model, learning_rate: float, weight_decay: float, moe: MoEConfig,
                       batch_tokens: float | None = None) -> list[dict]:
    """Optimizer parameter groups, one per named group, each with its own LR.

    Only trainable parameters are included; every one lands in exactly one group ("other" at the
    base LR if no pattern matches, so nothing is silently left out). Norms get no weight decay.
    An unset `expert_lr_ratio` is derived from the model's routing (and `batch_tokens`, the tokens
    per optimizer step, when the noise scale is known).
    """
    if moe.expert_lr_ratio is None:
        import dataclasses

        moe = dataclasses.replace(moe, expert_lr_ratio=derive_expert_lr_ratio(moe, model, batch_tokens)[0])
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
    LR logging, expert-load logging and a resume that restores the expert weights.

    `class HunyuanSFTTrainer(MoETrainerMixin, SFTTrainer)`; pass `moe_config=` to the constructor.
    The optimizer class and its other kwargs come from the TrainingArguments as usual, so
    DeepSpeed and FSDP work unchanged (they build the optimizer through `create_optimizer`).
    An unset `moe_config.expert_lr_ratio` is derived when the optimizer is built (from the model's
    routing and the tokens per step, `batch_tokens_per_step`), logged, and written back into
    `moe_config` so the model card states the value used. Training log lines gain `lr/<group>` for
    every group and the expert load (`moe/...`, posttrain/moe/expert_load.py).
    """

    def __init__(self, *args, moe_config: MoEConfig, **kwargs):
        self.moe_config = moe_config
        super().__init__(*args, **kwargs)
        self.expert_load = ExpertLoad(self.model)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            self.resolve_expert_lr_ratio(opt_model)
            groups = build_param_groups(opt_model, self.args.learning_rate, self.args.weight_decay, self.moe_config)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
                raise ValueError(f"optim={self.args.optim} builds its own parameter groups; "
                                 "MoE groups need a standard optimizer such as adamw_torch")
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            log.info("MoE parameter groups:\n%s", describe_param_groups(groups))
        return self.optimizer

    def resolve_expert_lr_ratio(self, model) -> float:
        """Fix `moe_config.expert_lr_ratio` for this run (derived unless set) and log where it comes from."""
        ratio, why = derive_expert_lr_ratio(self.moe_config, model,
                                            batch_tokens_per_step(self.args, self.train_dataset))
        self.moe_config.expert_lr_ratio = ratio
        log.info("MoE %s", why)
        return ratio

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.optimizer is not None and "learning_rate" in logs:
            logs.update(group_learning_rates(self.optimizer, logs["learning_rate"]))
        if "loss" in logs and self.expert_load:
            logs.update(self.expert_load.flush())
        super().log(logs, *args, **kwargs)


def batch_tokens_per_step(args, train_dataset=None) -> float:
    """Tokens in one optimizer step: per-device batch × accumulation × world size × sequences per
    row (2 for preference pairs: chosen and rejected) × tokens per sequence. Tokens per sequence
    are the mean length of up to 256 tokenized training rows when the dataset holds them (packed
    SFT rows are about `max_length`), else `max_length` (an upper bound: online DPO builds its rows
    each round)."""
    rows = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    columns = set(getattr(train_dataset, "column_names", None) or [])
    pairs = bool({"chosen_ids", "chosen_input_ids", "chosen"} & columns) or hasattr(args, "beta")
    sequence = _mean_tokens(train_dataset, columns) or float(getattr(args, "max_length", None) or 0)
    return rows * (2 if pairs else 1) * sequence


def _mean_tokens(dataset, columns: set[str]) -> float | None:
    sample = dataset.select(range(min(256, len(dataset)))) if columns else None
    if not sample or not len(sample):
        return None
    if "input_ids" in columns:
        return sum(len(ids) for ids in sample["input_ids"]) / len(sample)
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns:  # mean of the chosen and rejected sequences
        return sum(len(p) + (len(c) + len(r)) / 2 for p, c, r in
                   zip(sample["prompt_ids"], sample["chosen_ids"], sample["rejected_ids"])) / len(sample)
    return None


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
