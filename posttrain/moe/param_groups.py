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
import math

from posttrain.checkpoints import ExpertSafeResumeMixin
from posttrain.moe.expert_load import ExpertLoad
from posttrain.moe.recipe import NOISE_SCALE_GROUP, MoEConfig, derive_expert_lr_ratio, needs_noise_scale
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
    An unset `moe_config.expert_lr_ratio` is derived when the optimizer is built, from the model's
    routing and the run's gradient noise scale — given (`gradient_noise_scale_tokens`) or measured
    right then on the run's first batches (`measure_noise_scale`) — and written back into
    `moe_config` (the ratio, and B_noise in tokens) so the model card states the values used; both
    are logged, and join the first training log line as `noise_scale/...`. A resumed run takes the
    ratio back with the optimizer state instead of measuring again. Training log lines gain
    `lr/<group>` for every group and the expert load (`moe/...`, posttrain/moe/expert_load.py).
    """

    def __init__(self, *args, moe_config: MoEConfig, **kwargs):
        self.moe_config = moe_config
        self.noise_scale = None  # posttrain.moe.noise_scale.NoiseScale, once measured
        self._pending_logs: dict[str, float] = {}
        self._resuming = False
        super().__init__(*args, **kwargs)
        self.expert_load = ExpertLoad(self.model)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        self._resuming = resume_from_checkpoint not in (None, False)
        return super().train(resume_from_checkpoint, *args, **kwargs)

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
        moe = self.moe_config
        batch_tokens = batch_tokens_per_step(self.args, self.train_dataset)
        batch_rows = rows_per_step(self.args)
        if needs_noise_scale(moe, model) and self._resuming:
            # the optimizer state of the checkpoint brings the experts' LR back (`_load_optimizer_and_scheduler`);
            # until it is loaded the group holds the square-root-rule placeholder
            from posttrain.hunyuan.expert_lr import expert_lr_ratio_for

            moe.expert_lr_ratio = expert_lr_ratio_for(model.config, batch_rows, math.inf)
            self._ratio_from_checkpoint = True
            return moe.expert_lr_ratio
        measured = None
        if needs_noise_scale(moe, model) and moe.noise_scale_batches:
            measured = self.measure_noise_scale(model)
        ratio, why = derive_expert_lr_ratio(moe, model, batch_tokens, batch_rows, measured)
        moe.expert_lr_ratio = ratio
        log.info("MoE %s", why)
        if measured is not None:
            tokens_per_row = batch_tokens / batch_rows if batch_rows else 0.0
            self.noise_scale = measured
            moe.gradient_noise_scale_tokens = measured.b_simple * tokens_per_row
            self._pending_logs = {"noise_scale/b_simple_rows": measured.b_simple,
                                  "noise_scale/b_simple_tokens": moe.gradient_noise_scale_tokens,
                                  "noise_scale/gradient_sq": measured.gradient_sq,
                                  "noise_scale/trace_sigma": measured.trace_sigma,
                                  "noise_scale/batch_over_noise": batch_rows / measured.b_simple,
                                  "noise_scale/expert_lr_ratio": ratio}
        return ratio

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None and getattr(self, "_ratio_from_checkpoint", False) and self.optimizer is not None:
            experts = [g for g in self.optimizer.param_groups if g.get("name") == "experts"]
            if experts and self.args.learning_rate:
                ratio = experts[0].get("initial_lr", experts[0]["lr"]) / self.args.learning_rate
                self.moe_config.expert_lr_ratio = ratio
                log.info("MoE expert_lr_ratio %.3f restored with the optimizer state of %s", ratio, checkpoint)
            self._ratio_from_checkpoint = False

    # ------------------------------------------------------------------ the gradient noise scale

    def noise_scale_batches(self, count: int) -> list | None:
        """`count` small batches of one row each (collated) of the run's own training data for
        `measure_noise_scale`: the first rows of the training set, the same on every rank and for any
        per-device batch (the measurement depends on the model and the data, not on the launch), or None
        when the dataset holds no tokenized rows. DPO overrides it (its rows come per round)."""
        data = self.train_dataset
        if data is None or "input_ids" not in (getattr(data, "column_names", None) or []):
            return None
        data = self._remove_unused_columns(data, description="noise scale")
        return [self.data_collator([data[i]]) for i in range(min(count, len(data)))]

    def measure_noise_scale(self, model):
        """McCandlish et al.'s B_simple in rows, on this run's first rows at its starting weights
        (posttrain/moe/noise_scale.py): per-row gradients (small batches of one row) and the means of
        4 of them, the same batches and groups whatever the per-device batch and the number of ranks. The measurement leaves no trace in training: gradients are
        zeroed, the random state, the model's mode, TRL's metrics and the expert-load counts are put back."""
        import copy

        import torch
        import torch.distributed as dist

        from datagen.config_loader import ConfigError
        from posttrain.ema import is_zero3_partitioned
        from posttrain.moe.noise_scale import measure_noise_scale

        moe = self.moe_config
        if any(p.device.type == "meta" or is_zero3_partitioned(p) for p in model.parameters()):
            raise ConfigError("the gradient noise scale cannot be measured here: this rank does not hold the model's "
                              "weights when the optimizer is built (DeepSpeed ZeRO-3, or FSDP with "
                              "fsdp_cpu_ram_efficient_loading); give moe.gradient_noise_scale_tokens (measured on a "
                              "smaller launch) or fix moe.expert_lr_ratio")
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        groups = max(1, moe.noise_scale_batches // NOISE_SCALE_GROUP)
        groups = -(-groups // world) * world  # every rank measures as many big batches
        batches = self.noise_scale_batches(groups * NOISE_SCALE_GROUP) or []
        group = NOISE_SCALE_GROUP
        if len(batches) < group * world:  # a small data set: one big batch per rank of what there is
            group = len(batches) // world
        if group < 2:
            raise ConfigError(f"too little data to measure the gradient noise scale ({len(batches)} batches of "
                              f"one row, {2 * world} needed): "
                              "give moe.gradient_noise_scale_tokens or fix moe.expert_lr_ratio")
        groups = min(groups, len(batches) // (group * world) * world)
        batches = batches[:groups * group]

        def loss_of(net, batch):
            return self.compute_loss(net, self._prepare_inputs(batch))

        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        metrics = copy.deepcopy(getattr(self, "_metrics", None))
        tokens = getattr(self, "_total_train_tokens", None)
        was_training = model.training
        model.train()
        try:
            measured = measure_noise_scale(model, batches, loss_of, 1, group)
        finally:
            model.train(was_training)
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            if metrics is not None:
                self._metrics = metrics
            if tokens is not None:
                self._total_train_tokens = tokens
            if self.expert_load:
                self.expert_load.flush()
        log.info("MoE gradient noise scale measured on this run: B_simple = %.4g rows (%s)", measured.b_simple,
                 measured.describe())
        return measured

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.optimizer is not None and "learning_rate" in logs:
            logs.update(group_learning_rates(self.optimizer, logs["learning_rate"]))
        if "loss" in logs and self.expert_load:
            logs.update(self.expert_load.flush())
        if "loss" in logs and self._pending_logs:
            logs.update(self._pending_logs)
            self._pending_logs = {}
        super().log(logs, *args, **kwargs)


def rows_per_step(args) -> int:
    """Rows (sequences, or preference pairs) per optimizer step: per-device batch × accumulation × world size."""
    return args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)


def batch_tokens_per_step(args, train_dataset=None) -> float:
    """Tokens in one optimizer step: per-device batch × accumulation × world size × sequences per
    row (2 for preference pairs: chosen and rejected) × tokens per sequence. Tokens per sequence
    are the mean length of up to 256 tokenized training rows when the dataset holds them (packed
    SFT rows are about `max_length`), else `max_length` (an upper bound: online DPO builds its rows
    each round)."""
    rows = rows_per_step(args)
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
