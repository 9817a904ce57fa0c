"""The reward-model run config: base model, pairs, schedule, EMA, TRL's fields by their own names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from datagen.config_loader import option
from posttrain.ema import EMAConfig
from posttrain.hub import HUB_FIXED
from posttrain.trainers.run_config import RunConfig
from posttrain.trainers.trl_args import build_trl_args, trainer_owned

FIXED = {
    "eval_strategy": "every epoch when there is an eval split", "save_strategy": "every save_steps",
    "save_total_limit": "keep_checkpoints: only complete checkpoints count", "report_to": "from report_to",
    "data_seed": "from seed", **HUB_FIXED,
    "center_rewards_coefficient": "from center_rewards_coefficient (0 = off)",
    "dataloader_pin_memory": "on when CUDA is there",
}


@dataclass
class RMRunConfig(RunConfig):
    """One reward-model run: base model, pairs, schedule, EMA and operations (the shared run fields: RunConfig)."""

    TRL_CONFIG: ClassVar[str] = "RewardConfig"
    FIXED: ClassVar[dict[str, str]] = FIXED

    output_dir: str = option("out/rm", "checkpoints, TensorBoard logs (runs/), final reward model")
    model: str = option("", "base: alias, HF directory (e.g. an SFT output) or hub id; gets a new score head")
    dataset: str = option("out/synth", "pairs: datagen output dir (dpo view), save_to_disk dir, file, hub id, "
                                       "or `seeds` (a rule-made demo set)")
    view: str = option("dpo", "dataset config holding the pairs")
    split: str = option("train", "split holding the pairs")
    max_pairs: int = option(0, "use only the first N usable pairs; 0 = all")
    eval_fraction: float = option(0.1, "held out for eval accuracy; 0 = no eval")
    max_length: int = option(1024, "tokens of prompt + answer; longer pairs are skipped and counted")
    max_prompt_tokens: int = option(768, "prompts longer than this are skipped and counted")
    dtype: Literal["float32", "bfloat16"] = option("float32", "weights dtype")
    num_train_epochs: float = option(1.0, "passes over the training pairs")
    center_rewards_coefficient: float = option(
        0.01, "pulls the mean reward to 0 (keeps scores comparable across refreshes); 0 = off")
    ema: EMAConfig = option(factory=EMAConfig, help="EMA of the RM weights; exported by default")
    save_steps: int = option(200, "steps between checkpoints (model, optimizer, scheduler, RNG, EMA)")
    seed: int = option(42, "score-head init, data order")


def build_training_args(cfg: RMRunConfig, has_eval: bool) -> "RewardConfig":
    from trl import RewardConfig

    return build_trl_args(
        RewardConfig, cfg,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        center_rewards_coefficient=cfg.center_rewards_coefficient or None,
        eval_strategy="epoch" if has_eval else "no",
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        **trainer_owned(cfg),
    )
