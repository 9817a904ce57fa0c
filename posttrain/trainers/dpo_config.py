"""The one-stage DPO run config: policy, offline pairs, online rounds, reward, loss, EMA, operations.

TRL's fields keep TRL's names and are passed through by name (posttrain/trainers/trl_args.py); `trl_args`
takes any other field of `trl.DPOConfig`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Literal

from datagen.config_loader import ConfigError, option
from posttrain.ema import EMAConfig
from posttrain.hub import HUB_FIXED
from posttrain.model_loading import ModelSpec
from posttrain.moe.recipe import MoEConfig
from posttrain.online.online_config import OnlineConfig, change_nothing, changed_keys
from posttrain.online.rm_refresh import RefreshConfig
from posttrain.trainers.run_config import RunConfig
from posttrain.trainers.trl_args import build_trl_args, trainer_owned
from rewards.scoring import RewardConfig

log = logging.getLogger("posttrain")

FIXED = {
    "router_aux_loss_coef": "from moe.router_aux_loss_coef", "save_strategy": "every save_steps",
    "save_total_limit": "keep_checkpoints: only complete checkpoints count", "report_to": "from report_to",
    "ignore_data_skip": "a resume skips the slots already trained", "data_seed": "from seed",
    "precompute_ref_log_probs": "online pairs are new every round",
    "dataloader_pin_memory": "on when CUDA is there", **HUB_FIXED,
}


@dataclass
class DPORunConfig(RunConfig):
    """One DPO run: policy, offline pairs, online rounds, reward, loss, EMA and operations (the shared run
    fields: RunConfig)."""

    TRL_CONFIG: ClassVar[str] = "DPOConfig"
    FIXED: ClassVar[dict[str, str]] = FIXED

    output_dir: str = option("out/dpo", "checkpoints, TensorBoard logs (runs/), rounds/ logs, final model and card")
    dataset: str = option("out/synth", "offline pairs: datagen output dir (dpo view), save_to_disk dir, file, "
                                       "hub id, or `seeds` (a rule-made demo set)")
    view: str = option("dpo", "dataset config holding the pairs")
    split: str = option("train", "split of the offline pairs (and of online.prompts)")
    max_pairs: int = option(0, "use only the first N usable offline pairs; 0 = all")
    model: ModelSpec = option(factory=ModelSpec, help="the policy: alias, SFT output dir or hub id")
    moe: MoEConfig = option(factory=MoEConfig, help="router aux loss (kept in the DPO loss), per-group LRs")
    reward: RewardConfig = option(factory=RewardConfig, help="scores online samples")
    rm_refresh: RefreshConfig = option(factory=RefreshConfig,
                                       help="retrain a classifier reward between rounds (EMA-smoothed)")
    online: OnlineConfig = option(factory=OnlineConfig, help="rounds, N, margin, offline/online ratio")
    ema: EMAConfig = option(factory=EMAConfig, help="EMA of the policy weights, exported as the final model")
    max_steps: int = option(100, "optimizer steps in total, over all rounds")
    learning_rate: float = option(5e-7, "peak LR of the base parameter groups")
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = option(
        "cosine", "LR decay shape over all rounds")
    weight_decay: float = option(0.0, "AdamW weight decay (norm weights never decay)")
    max_grad_norm: float = option(1.0, "gradient clipping")
    beta: float = option(0.1, "DPO temperature: higher keeps the policy closer to the reference")
    loss_type: list[str] = option(["sigmoid", "sft"], "DPO + SFT (NLL) on the chosen answer")
    loss_weights: list[float] = option([1.0, 1.0], "one weight per loss_type")
    max_length: int = option(2048, "prompt + answer tokens; longer answers are truncated at the end")
    max_prompt_length: int = option(1024, "longer prompts are skipped and counted (must be < max_length)")
    sync_ref_model: bool = option(False, "TR-DPO: move the reference toward the policy (an EMA of the policy)")
    ref_model_mixup_alpha: float = option(0.6, "α in ref ← α·policy + (1 − α)·ref (only with sync_ref_model)")
    ref_model_sync_steps: int = option(64, "steps between reference updates (only with sync_ref_model)")
    gradient_checkpointing: bool = option(False, "trade compute for memory on big models")
    logging_steps: int = option(1, "optimizer steps between log lines / TensorBoard points")
    save_steps: int = option(0, "optimizer steps between checkpoints (only for resume: weights reach the "
                                "sampler without them); 0 = at the end of every online round")
    resume: str = option("auto", "auto = newest finished round in output_dir if any; never; or a checkpoint path")
    seed: int = option(42, "data order and mixing; online sampling uses seed + round index")

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (online rounds split a step budget), got {self.max_steps}")
        if self.save_steps < 0:
            raise ValueError(f"save_steps must be >= 0, got {self.save_steps}")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_length "
                             f"({self.max_length}) so every answer keeps at least one token")
        if len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights needs one weight per loss_type: {self.loss_type} vs {self.loss_weights}")
        if self.rm_refresh.enabled and self.reward.kind != "classifier":
            raise ValueError("rm_refresh needs reward.kind: classifier (only a reward model can be retrained)")
        super().__post_init__()
        for note in self.unused_keys():
            log.warning("config: %s", note)

    def unused_keys(self) -> list[str]:
        """Keys set away from their default that the other settings leave unused: one sentence per group
        (a warning each at start-up; a key that changes nothing is never silent)."""
        notes = []
        if not self.sync_ref_model:
            unused = changed_keys(self, ["ref_model_mixup_alpha", "ref_model_sync_steps"])
            if unused:
                notes.append(change_nothing(unused) + " while sync_ref_model is false (TRL moves the reference "
                             "only with sync_ref_model: true)")
        notes += self.online.unused_keys()
        if not self.uses_online:  # the reward and its refresh only serve the online rounds
            unused = [f"reward.{k}" for k in changed_keys(self.reward)] + \
                     [f"rm_refresh.{k}" for k in changed_keys(self.rm_refresh)]
            if unused:
                notes.append(change_nothing(unused) + " while the online rounds are off")
        elif self.online.gold and self.reward.kind == "math":
            notes.append("online.gold changes nothing with reward.kind math: the reward is the gold verifier "
                         "(gold/accuracy is reward/mean)")
        if self.uses_online and not self.rm_refresh.enabled:
            unused = changed_keys(self.rm_refresh, [k for k in RefreshConfig.__dataclass_fields__ if k != "enabled"])
            if unused:
                notes.append(change_nothing([f"rm_refresh.{k}" for k in unused]) + " while rm_refresh.enabled is false")
        return notes

    @property
    def checkpoint_every(self) -> int:
        return self.save_steps or self.online.steps_per_round

    @property
    def uses_online(self) -> bool:
        return self.online.enabled and self.online.ratio > 0

    def check_reward_given(self) -> None:
        """Online rounds need a reward; say so before any model loads."""
        if self.uses_online and self.reward.kind == "classifier" and not self.reward.model:
            raise ConfigError("reward.model is not set: give a reward model (train one with "
                              "`accelerate launch posttrain/rm.py`), or use reward.kind critique or math")


def build_dpo_args(cfg: DPORunConfig, moe_model: bool) -> "DPOConfig":
    from trl import DPOConfig

    return build_trl_args(
        DPOConfig, cfg,
        loss_type=list(cfg.loss_type), loss_weights=list(cfg.loss_weights),
        router_aux_loss_coef=cfg.moe.router_aux_loss_coef if moe_model else None,
        save_steps=cfg.checkpoint_every,  # for resume; never the sampler's hand-off
        ignore_data_skip=False,  # a resume skips the slots of the steps already trained
        report_to=[] if cfg.report_to in ("none", "tensorboard") else [cfg.report_to],
        **trainer_owned(cfg),
    )
