"""The reward-model run config: base model, pairs, schedule, EMA, TRL's fields by their own names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from datagen.config_loader import option
from posttrain.ema import EMAConfig
from posttrain.hub import HUB_FIXED, check_repo_id

FIXED = {
    "eval_strategy": "every epoch when there is an eval split", "save_strategy": "every save_steps",
    "save_total_limit": "keep_checkpoints: only complete checkpoints count", "report_to": "from report_to",
    "data_seed": "from seed", **HUB_FIXED,
    "center_rewards_coefficient": "from center_rewards_coefficient (0 = off)",
    "dataloader_pin_memory": "on when CUDA is there",
}


@dataclass
class RMRunConfig:
    """One reward-model run: base model, pairs, schedule, EMA and operations."""

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
    max_steps: int = option(-1, "stop after N optimizer steps; -1 = use num_train_epochs")
    learning_rate: float = option(1e-5, "peak LR")
    lr_scheduler_type: str = option("linear", "decay shape (any transformers scheduler name)")
    warmup_steps: int = option(0, "linear warm-up steps")
    per_device_train_batch_size: int = option(4, "pairs per device and step")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    center_rewards_coefficient: float = option(
        0.01, "pulls the mean reward to 0 (keeps scores comparable across refreshes); 0 = off")
    ema: EMAConfig = option(factory=EMAConfig, help="EMA of the RM weights; exported by default")
    bf16: bool = option(False, "bfloat16 mixed precision (GPUs; leave off on CPU)")
    logging_steps: int = option(10, "steps between log lines / TensorBoard points")
    save_steps: int = option(200, "steps between checkpoints (model, optimizer, scheduler, RNG, EMA)")
    keep_checkpoints: int = option(2, "complete checkpoints kept on disk")
    resume: str = option("auto", "auto = newest complete checkpoint in output_dir if any; never; or a checkpoint path")
    report_to: str = option("tensorboard", "tensorboard | none | any transformers integration")
    seed: int = option(42, "score-head init, data order")
    push_to_hub: str = option("", "after the final save, upload model, tokenizer and card to this hub model repo "
                                  "(token: HF_TOKEN); empty = no upload")
    hub_private_repo: bool = option(True, "a repo that push_to_hub creates is private unless false")
    trl_args: dict[str, Any] = option({}, "any other field of trl.RewardConfig, by its own name (checked against it)")

    def __post_init__(self) -> None:
        from trl import RewardConfig

        from posttrain.trainers.trl_args import check_trl_args

        check_repo_id(self.push_to_hub)
        self.trl_args = check_trl_args(RewardConfig, self.trl_args, self, FIXED)
