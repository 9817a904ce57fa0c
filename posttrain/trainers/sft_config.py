"""The SFT run config: the Hunyuan-Large recipe's defaults, TRL's fields by their own names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from datagen.config_loader import option
from posttrain.hub import HUB_FIXED, check_repo_id
from posttrain.model_loading import ModelSpec
from posttrain.moe.recipe import MoEConfig
from posttrain.trainers.sft_data import DataConfig

# TRL fields the trainer sets itself, and why (a `trl_args` entry for one of them is an error).
FIXED = {
    "lr_scheduler_kwargs": "from min_learning_rate",
    "router_aux_loss_coef": "from moe.router_aux_loss_coef",
    "eval_strategy": "from eval_steps", "eval_steps": "from eval_steps",
    "save_strategy": "every save_steps", "save_total_limit": "keep_checkpoints: only complete checkpoints count",
    "report_to": "from report_to", "data_seed": "from seed", "dataloader_pin_memory": "on when CUDA is there",
    "completion_only_loss": "the loss falls on the answer", **HUB_FIXED,
}


@dataclass
class SFTRunConfig:
    """One SFT run: model, data, MoE recipe, schedule and operations."""

    output_dir: str = option("out/sft", "checkpoints, TensorBoard logs (runs/), final model and model card")
    dataset: str = option("out/synth", "datagen output dir, save_to_disk dir, Parquet/JSONL file or dir, or hub id")
    model: ModelSpec = option(factory=ModelSpec, help="what to fine-tune")
    moe: MoEConfig = option(factory=MoEConfig, help="aux loss, dropout, per-group LRs, router freezing")
    data: DataConfig = option(factory=DataConfig, help="view, splits, held-out eval, column names")
    num_train_epochs: float = option(3.0, "passes over the training split (report: 3)")
    max_steps: int = option(-1, "stop after this many optimizer steps; -1 = use num_train_epochs")
    learning_rate: float = option(2e-5, "peak LR of the base groups (report: 2e-5)")
    min_learning_rate: float = option(2e-6, "LR at the end of the decay (report: 2e-6); every group decays by "
                                            "the same factor")
    lr_scheduler_type: Literal["cosine_with_min_lr", "linear", "cosine", "constant"] = option(
        "cosine_with_min_lr", "decay shape")
    warmup_steps: int = option(0, "linear warm-up steps")
    weight_decay: float = option(0.0, "AdamW weight decay (norm weights never decay)")
    max_grad_norm: float = option(1.0, "gradient clipping")
    per_device_train_batch_size: int = option(8, "packed sequences (or samples) per device and micro-batch")
    per_device_eval_batch_size: int = option(8, "same, for eval")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    max_length: int = option(2048, "tokens per packed sequence; longer samples are skipped and counted")
    packing: bool = option(True, "best-fit-decreasing packing without padding (padding-free batches)")
    gradient_checkpointing: bool = option(False, "trade compute for memory on big models")
    bf16: bool = option(False, "bfloat16 mixed precision (GPUs; leave off on CPU)")
    logging_steps: int = option(10, "optimizer steps between log lines / TensorBoard points")
    eval_steps: int = option(100, "steps between held-out evaluations (and one at the end); 0 = only at the end")
    save_steps: int = option(100, "steps between checkpoints (model, optimizer, scheduler, RNG, step)")
    keep_checkpoints: int = option(3, "complete checkpoints kept on disk (older ones are removed)")
    resume: str = option("auto", "auto = newest complete checkpoint in output_dir if any; never; or a checkpoint path")
    report_to: str = option("tensorboard", "tensorboard (offline event files) | none | any transformers integration")
    seed: int = option(42, "model init of new heads, data order, dropout")
    dataloader_num_workers: int = option(0, "background workers feeding batches")
    push_to_hub: str = option("", "after the final save, upload model, tokenizer and card to this hub model repo "
                                  "(token: HF_TOKEN); empty = no upload")
    hub_private_repo: bool = option(True, "a repo that push_to_hub creates is private unless false")
    trl_args: dict[str, Any] = option({}, "any other field of trl.SFTConfig, by its own name (checked against it)")

    def __post_init__(self):
        from trl import SFTConfig

        from posttrain.trainers.trl_args import check_trl_args

        if self.learning_rate <= 0 or not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(f"need 0 <= min_learning_rate <= learning_rate and learning_rate > 0, got "
                             f"{self.min_learning_rate} and {self.learning_rate}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        check_repo_id(self.push_to_hub)
        self.trl_args = check_trl_args(SFTConfig, self.trl_args, self, FIXED)
