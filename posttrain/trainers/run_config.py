"""The run fields the SFT, reward-model and DPO configs share, declared once (as TRL's base config).

TRL's names, passed through by name (posttrain/trainers/trl_args.py). A trainer's config inherits
them and redeclares a field only where its default or meaning differs; the YAML keys are the same.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from datagen.config_loader import option
from posttrain.hub import check_repo_id


@dataclass
class RunConfig:
    """Where a run writes, its schedule and its operations (checkpoints, resume, logs, upload)."""

    TRL_CONFIG: ClassVar[str] = ""  # the trl config class `trl_args` is checked against (SFTConfig, ...)
    FIXED: ClassVar[dict[str, str]] = {}  # TRL fields the trainer sets itself, and why

    output_dir: str = option("out/run", "checkpoints, TensorBoard logs (runs/), final model and model card")
    dataset: str = option("out/synth", "datagen output dir, save_to_disk dir, Parquet/JSONL file or dir, or hub id")
    max_steps: int = option(-1, "stop after this many optimizer steps; -1 = use num_train_epochs")
    learning_rate: float = option(1e-5, "peak LR")
    lr_scheduler_type: str = option("linear", "decay shape (any transformers scheduler name)")
    warmup_steps: int = option(0, "linear warm-up steps")
    per_device_train_batch_size: int = option(4, "pairs per device and micro-batch")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    bf16: bool = option(False, "bfloat16 mixed precision (GPUs; leave off on CPU)")
    logging_steps: int = option(10, "optimizer steps between log lines / TensorBoard points")
    save_steps: int = option(100, "steps between checkpoints (model, optimizer, scheduler, RNG, step)")
    keep_checkpoints: int = option(2, "complete checkpoints kept on disk (older ones are removed)")
    resume: str = option("auto", "auto = newest complete checkpoint in output_dir if any; never; or a checkpoint path")
    report_to: str = option("tensorboard", "tensorboard (offline event files) | none | any transformers integration")
    seed: int = option(42, "model init of new heads, data order, dropout")
    push_to_hub: str = option("", "after the final save, upload model, tokenizer and card to this hub model repo "
                                  "(token: HF_TOKEN); empty = no upload")
    hub_private_repo: bool = option(True, "a repo that push_to_hub creates is private unless false")
    trl_args: dict[str, Any] = option({}, "any other field of the trainer's TRL config (trl.SFTConfig, "
                                          "trl.RewardConfig, trl.DPOConfig), by its own name (checked against it)")

    def __post_init__(self) -> None:
        import trl

        from posttrain.trainers.trl_args import check_trl_args

        check_repo_id(self.push_to_hub)
        self.trl_args = check_trl_args(getattr(trl, self.TRL_CONFIG), self.trl_args, self, self.FIXED)
