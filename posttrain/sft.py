"""Supervised fine-tuning of a (MoE) causal LM with TRL, after the Hunyuan-Large recipe.

    accelerate launch posttrain/sft.py --config configs/posttrain/sft_tiny.yaml \
        [--output_dir DIR] [--max_steps N] [--dataset DIR|FILE|HUB_ID] [--moe.expert_lr_ratio 0.31 ...]

Reads the datagen output's `messages` view (or any HF chat dataset), trains with TRL's SFTTrainer
with packing, MoE parameter groups and the router aux loss in the loss, evaluates on a held-out
split, checkpoints every `save_steps` (rerunning the same command resumes from the newest
checkpoint), logs to TensorBoard (`DIR/runs`), and saves the final model in HF format with a model
card. Works the same under `python`, `accelerate launch` with or without a config file, FSDP and
DeepSpeed: the script never knows which launcher runs it.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # `accelerate launch posttrain/sft.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datagen.config import ConfigError, load_config, split_config_arg, to_dict  # noqa: E402
from posttrain.data import DataConfig, DataError, DataReport, load_sft_splits  # noqa: E402
from posttrain.moe import (MoEConfig, MoETrainerMixin, ModelLoadError, ModelSpec, build_param_groups,  # noqa: E402
                           describe_param_groups, is_moe, load_policy, load_tokenizer, prepare_moe_model)

log = logging.getLogger("posttrain.sft")


@dataclass
class SFTRunConfig:
    """One SFT run: model, data, MoE recipe, schedule and operations."""

    output_dir: str = "out/sft"  # checkpoints, TensorBoard logs (runs/), final model and model card
    dataset: str = "out/synth"  # datagen output dir, save_to_disk dir, Parquet/JSONL file or dir, or hub id
    model: ModelSpec = field(default_factory=ModelSpec)  # what to fine-tune
    moe: MoEConfig = field(default_factory=MoEConfig)  # aux loss, dropout, per-group LRs, router freezing
    data: DataConfig = field(default_factory=DataConfig)  # view, splits, held-out eval, column names
    num_train_epochs: float = 3.0  # passes over the training split (report: 3)
    max_steps: int = -1  # stop after this many optimizer steps; -1 = use num_train_epochs
    learning_rate: float = 2e-5  # peak LR of the base groups (report: 2e-5)
    min_learning_rate: float = 2e-6  # LR at the end of the decay (report: 2e-6); every group decays by the same factor
    lr_scheduler_type: Literal["cosine_with_min_lr", "linear", "cosine", "constant"] = "cosine_with_min_lr"  # decay shape
    warmup_steps: int = 0  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay (norm weights never decay)
    max_grad_norm: float = 1.0  # gradient clipping
    per_device_train_batch_size: int = 8  # packed sequences (or samples without packing) per device and step
    per_device_eval_batch_size: int = 8  # same, for eval
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    max_length: int = 2048  # tokens per packed sequence; longer samples are skipped and counted
    packing: bool = True  # best-fit-decreasing packing without padding (padding-free batches)
    gradient_checkpointing: bool = False  # trade compute for memory on big models
    bf16: bool = False  # bfloat16 mixed precision (GPUs; leave off on CPU)
    logging_steps: int = 10  # optimizer steps between log lines / TensorBoard points
    eval_steps: int = 100  # steps between held-out evaluations (and one at the end); 0 = only at the end
    save_steps: int = 100  # steps between checkpoints (model, optimizer, scheduler, RNG, step)
    save_total_limit: int = 3  # checkpoints kept on disk
    resume: str = "auto"  # auto = newest checkpoint in output_dir if any; never; or a checkpoint path
    report_to: str = "tensorboard"  # tensorboard (offline event files) | none | any transformers integration
    seed: int = 42  # model init of new heads, data order, dropout
    dataloader_num_workers: int = 0  # background workers feeding batches

    def __post_init__(self):
        if self.learning_rate <= 0 or not 0 <= self.min_learning_rate <= self.learning_rate:
            raise ValueError(f"need 0 <= min_learning_rate <= learning_rate and learning_rate > 0, got "
                             f"{self.min_learning_rate} and {self.learning_rate}")
        if self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")


def build_training_args(cfg: SFTRunConfig, has_eval: bool, moe_model: bool):
    import torch
    from trl import SFTConfig

    scheduler_kwargs = {}
    if cfg.lr_scheduler_type == "cosine_with_min_lr":
        # a rate, not an absolute LR: every parameter group decays by the same factor
        scheduler_kwargs = {"min_lr_rate": cfg.min_learning_rate / cfg.learning_rate}
    eval_every = cfg.eval_steps or None
    return SFTConfig(
        output_dir=cfg.output_dir,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        lr_scheduler_kwargs=scheduler_kwargs,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        packing=cfg.packing,
        packing_strategy="bfd",
        completion_only_loss=True,
        router_aux_loss_coef=cfg.moe.router_aux_loss_coef if moe_model else None,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=cfg.bf16,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if has_eval and eval_every else "no",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator
    )


def make_trainer_class():
    from trl import SFTTrainer

    class HunyuanSFTTrainer(MoETrainerMixin, SFTTrainer):
        """SFTTrainer with MoE parameter groups, per-group LR logging and expert-safe resume."""

    return HunyuanSFTTrainer


def build_trainer(cfg: SFTRunConfig, model=None, tokenizer=None, callbacks=None):
    """(trainer, data report). `model`/`tokenizer` may be passed in (tests build them in memory)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    train, evaluation, report = load_sft_splits(cfg.dataset, cfg.data, tokenizer, cfg.max_length)
    log.info(report.summary())
    if model is None:
        model = load_policy(cfg.model, cfg.moe)
    else:
        prepare_moe_model(model, cfg.moe)  # same recipe for a model built in memory
    args = build_training_args(cfg, has_eval=evaluation is not None, moe_model=is_moe(model))
    trainer = make_trainer_class()(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                                   processing_class=tokenizer, moe_config=cfg.moe, callbacks=callbacks)
    return trainer, report


def checkpoint_to_resume(cfg: SFTRunConfig) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        if not Path(cfg.resume).is_dir():
            raise ConfigError(f"resume: checkpoint {cfg.resume} does not exist")
        return cfg.resume
    if not Path(cfg.output_dir).is_dir():
        return None
    return get_last_checkpoint(cfg.output_dir)


def train(cfg: SFTRunConfig, model=None, tokenizer=None, callbacks=None):
    """Run SFT end to end; returns (trainer, final metrics)."""
    checkpoint = checkpoint_to_resume(cfg)  # before the heavy work: a bad path fails fast
    trainer, report = build_trainer(cfg, model, tokenizer, callbacks)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {"train_loss": result.training_loss, "global_step": result.global_step}
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    save_final(trainer, cfg, report, metrics)
    return trainer, metrics


def save_final(trainer, cfg: SFTRunConfig, report: DataReport, metrics: dict) -> None:
    """HF-format weights + tokenizer, the recipe, the data report and a model card in output_dir."""
    from posttrain.cards import save_with_card

    groups = build_param_groups(trainer.model, cfg.learning_rate, cfg.weight_decay, cfg.moe)
    if save_with_card(trainer, cfg.output_dir, report, method="SFT", base_model=cfg.model.name,
                      dataset=cfg.dataset, recipe=to_dict(cfg), metrics=_card_metrics(metrics, trainer),
                      param_groups=describe_param_groups(groups)):
        log.info("saved model, tokenizer and model card to %s", cfg.output_dir)


def _card_metrics(metrics: dict, trainer) -> dict:
    card = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    aux = [h["aux_loss"] for h in trainer.state.log_history if "aux_loss" in h and "loss" in h]
    if aux:
        card["final_aux_loss"] = aux[-1]
    return card


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="[sft] %(message)s")
    config_path, overrides = split_config_arg(argv, __doc__)
    try:
        cfg = load_config(SFTRunConfig, config_path, overrides)
        _, metrics = train(cfg)
    except (ConfigError, DataError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
