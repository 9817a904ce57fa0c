"""The SFT run config: the Hunyuan-Large recipe's defaults, TRL's fields by their own names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from datagen.config_loader import option
from posttrain.hub import HUB_FIXED
from posttrain.model_loading import ModelSpec
from posttrain.moe.recipe import MoEConfig
from posttrain.trainers.run_config import RunConfig
from posttrain.trainers.sft_data import DataConfig
from posttrain.trainers.trl_args import build_trl_args, trainer_owned

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
class SFTRunConfig(RunConfig):
    """One SFT run: model, data, MoE recipe, schedule and operations (the shared run fields: RunConfig)."""

    TRL_CONFIG: ClassVar[str] = "SFTConfig"
    FIXED: ClassVar[dict[str, str]] = FIXED

    output_dir: str = option("out/sft", "checkpoints, TensorBoard logs (runs/), final model and model card")
    model: ModelSpec = option(factory=ModelSpec, help="what to fine-tune")
    moe: MoEConfig = option(factory=MoEConfig, help="aux loss, dropout, per-group LRs, router freezing")
    data: DataConfig = option(factory=DataConfig, help="view, splits, held-out eval, column names")
    num_train_epochs: float = option(3.0, "passes over the training split (report: 3)")
    learning_rate: float = option(2e-5, "peak LR of the base groups (report: 2e-5)")
    min_learning_rate: float = option(2e-6, "LR at the end of the decay (report: 2e-6); every group decays by "
                                            "the same factor")
    lr_scheduler_type: Literal["cosine_with_min_lr", "linear", "cosine", "constant"] = option(
        "cosine_with_min_lr", "decay shape")
    weight_decay: float = option(0.0, "AdamW weight decay (norm weights never decay)")
    max_grad_norm: float = option(1.0, "gradient clipping")
    per_device_train_batch_size: int = option(8, "packed sequences (or samples) per device and micro-batch")
    per_device_eval_batch_size: int = option(8, "same, for eval")
    max_length: int = option(2048, "tokens per packed sequence; longer samples are skipped and counted")
    packing: bool = option(True, "best-fit-decreasing packing without padding (padding-free batches)")
    gradient_checkpointing: bool = option(False, "trade compute for memory on big models")
    logging_steps: int = option(10, "optimizer steps between log lines / TensorBoard points")
    eval_steps: int = option(100, "steps between held-out evaluations (and one at the end); 0 = only at the end")
    save_steps: int = option(100, "steps between checkpoints (model, optimizer, scheduler, RNG, step)")
    keep_checkpoints: int = option(3, "complete checkpoints kept on disk (older ones are removed)")
    dataloader_num_workers: int = option(0, "background workers feeding batches")

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(f"need 0 <= min_learning_rate <= learning_rate and learning_rate > 0, got "
                             f"{self.min_learning_rate} and {self.learning_rate}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")
        super().__post_init__()


def build_training_args(cfg: SFTRunConfig, has_eval: bool) -> "SFTConfig":
    """Built before the model loads: the process group, and ZeRO-3's init hook, then exist."""
    from trl import SFTConfig

    scheduler_kwargs = {}
    if cfg.lr_scheduler_type == "cosine_with_min_lr":
        # a rate, not an absolute LR: every parameter group decays by the same factor
        scheduler_kwargs = {"min_lr_rate": cfg.min_learning_rate / cfg.learning_rate}
    eval_every = cfg.eval_steps or None
    return build_trl_args(
        SFTConfig, cfg, defaults={"packing_strategy": "bfd"},
        lr_scheduler_kwargs=scheduler_kwargs,
        completion_only_loss=True,
        router_aux_loss_coef=None,  # set once the model is known to be a MoE (build_trainer)
        eval_strategy="steps" if has_eval and eval_every else "no",
        eval_steps=eval_every,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        **trainer_owned(cfg),
    )
