"""Train a reward model on preference pairs with TRL's RewardTrainer.

    python -m rewards.train_rm --config configs/rewards/rm_tiny.yaml [--output_dir DIR] [--max_steps N] ...

Reads `prompt/chosen/rejected` pairs (the datagen output's `dpo` view, any HF preference
dataset on disk or in the hub cache, or `seeds` for the built-in demo set), puts a one-output
score head on the base model (an SFT checkpoint, an alias or a hub id), and trains it with the
Bradley–Terry loss. An EMA of the weights is kept during training and, by default, exported as
the final reward model (`rewards.scoring.ClassifierScorer` loads it). Bad rows and pairs longer
than `max_length` are skipped and counted in `data_report.json`; rerunning the same command
resumes from the newest checkpoint.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from datagen.config import ConfigError, load_config, split_config_arg, to_dict
from posttrain.data import DataError, DataReport, hold_out
from posttrain.moe import ModelLoadError, resolve_name
from rewards.ema import EMACallback, EMAConfig
from rewards.pairs import load_preference_pairs

log = logging.getLogger("rewards.train_rm")


@dataclass
class TrainRMConfig:
    """One reward-model run: base model, pairs, schedule, EMA and operations."""

    output_dir: str = "out/rm"  # checkpoints, TensorBoard logs (runs/), final reward model
    model: str = "tiny-hunyuan-moe"  # base: alias, HF directory (e.g. an SFT output) or hub id; gets a new score head
    dataset: str = "seeds"  # pairs: datagen output dir (dpo view), save_to_disk dir, file, hub id, or "seeds" (demo)
    view: str = "dpo"  # dataset config holding the pairs
    split: str = "train"  # split holding the pairs
    max_pairs: int = 0  # use only the first N usable pairs; 0 = all
    eval_fraction: float = 0.1  # held out for eval accuracy; 0 = no eval
    max_length: int = 1024  # tokens of prompt + answer; longer pairs are skipped and counted
    max_prompt_tokens: int = 768  # prompts longer than this are skipped and counted
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights dtype
    num_train_epochs: float = 1.0  # passes over the training pairs
    max_steps: int = -1  # stop after N optimizer steps; -1 = use num_train_epochs
    learning_rate: float = 1e-5  # peak LR
    lr_scheduler_type: str = "linear"  # decay shape (any transformers scheduler name)
    warmup_steps: int = 0  # linear warm-up steps
    per_device_train_batch_size: int = 4  # pairs per device and step
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    center_rewards_coefficient: float = 0.01  # pulls mean reward to 0 (keeps scores comparable across refreshes)
    ema: EMAConfig = field(default_factory=EMAConfig)  # EMA of the RM weights; exported by default
    bf16: bool = False  # bfloat16 mixed precision (GPUs; leave off on CPU)
    logging_steps: int = 10  # steps between log lines / TensorBoard points
    save_steps: int = 200  # steps between checkpoints (model, optimizer, scheduler, RNG, EMA)
    save_total_limit: int = 2  # checkpoints kept on disk
    resume: str = "auto"  # auto = newest checkpoint in output_dir if any; never; or a checkpoint path
    report_to: str = "tensorboard"  # tensorboard | none | any transformers integration
    seed: int = 42  # score-head init, data order


def load_reward_model(name: str, dtype: str, seed: int):
    """(model with a seeded one-output head, tokenizer with a pad token)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_name(name)
    torch.manual_seed(seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=getattr(torch, dtype))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load {name!r} as a reward model from {path}: "
                             f"{str(err).strip().splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def pair_length(tokenizer, pair: dict, answer: str) -> int:
    return len(tokenizer.apply_chat_template(pair["prompt"] + pair[answer], tokenize=True, return_dict=False))


def load_rm_data(cfg: TrainRMConfig, tokenizer):
    """(train, eval | None, report): pairs that fit `max_length`, as TRL preference datasets."""
    from datasets import Dataset

    pairs, report = load_preference_pairs(cfg.dataset, cfg.view, cfg.split, tokenizer, cfg.max_prompt_tokens,
                                          cfg.max_pairs, seeds_dir=Path(cfg.output_dir) / "seed_pairs")
    fitting = [p for p in pairs if max(pair_length(tokenizer, p, "chosen"),
                                       pair_length(tokenizer, p, "rejected")) <= cfg.max_length]
    report.skip("longer_than_max_length", len(pairs) - len(fitting))
    report.max_length = cfg.max_length
    if not fitting:
        raise DataError(f"no preference pair fits max_length={cfg.max_length}: {report.summary()}")
    rows = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in fitting])
    train, evaluation = hold_out(rows, cfg.eval_fraction, cfg.seed)
    report.train_rows, report.eval_rows = len(train), len(evaluation) if evaluation is not None else 0
    return train, evaluation, report


def build_training_args(cfg: TrainRMConfig, has_eval: bool):
    from trl import RewardConfig as TRLRewardConfig

    return TRLRewardConfig(
        output_dir=cfg.output_dir,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length,
        center_rewards_coefficient=cfg.center_rewards_coefficient or None,
        bf16=cfg.bf16,
        logging_steps=cfg.logging_steps,
        eval_strategy="epoch" if has_eval else "no",
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        seed=cfg.seed,
        data_seed=cfg.seed,
    )


def checkpoint_to_resume(output_dir: str, resume: str) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if resume == "never":
        return None
    if resume != "auto":
        if not Path(resume).is_dir():
            raise ConfigError(f"resume: checkpoint {resume} does not exist")
        return resume
    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def make_trainer_class():
    from trl import RewardTrainer

    from posttrain.moe import CheckpointResumeMixin

    class ResumableRewardTrainer(CheckpointResumeMixin, RewardTrainer):
        """RewardTrainer whose resume restores MoE expert weights (see posttrain/moe.py)."""

    return ResumableRewardTrainer


def train(cfg: TrainRMConfig) -> dict:
    """Train, export (EMA weights by default) and describe the reward model; returns final metrics."""
    model, tokenizer = load_reward_model(cfg.model, cfg.dtype, cfg.seed)
    train_rows, eval_rows, report = load_rm_data(cfg, tokenizer)
    log.info(report.summary())
    ema = EMACallback(cfg.ema)
    trainer = make_trainer_class()(model=model, args=build_training_args(cfg, eval_rows is not None),
                                   train_dataset=train_rows, eval_dataset=eval_rows, processing_class=tokenizer,
                                   callbacks=[ema] if cfg.ema.enabled else [])
    checkpoint = checkpoint_to_resume(cfg.output_dir, cfg.resume)
    if checkpoint:
        found = ema.restore(checkpoint, model)
        log.info("resuming from %s (EMA state %s)", checkpoint, "found" if found else "absent")
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {"train_loss": result.training_loss, "global_step": result.global_step}
    if cfg.ema.enabled and cfg.ema.export and ema.ema is not None:
        ema.ema.copy_to(trainer.model)  # evaluate and save what will be used: the smoothed RM
        metrics["ema_updates"] = ema.ema.num_updates
    if eval_rows is not None:
        metrics.update(trainer.evaluate())
    save_final(trainer, cfg, report, metrics)
    return metrics


def save_final(trainer, cfg: TrainRMConfig, report: DataReport, metrics: dict) -> None:
    from posttrain.cards import save_with_card

    weights = "the EMA of its weights" if cfg.ema.enabled and cfg.ema.export else "its last weights"
    if save_with_card(trainer, cfg.output_dir, report, method="Reward model", base_model=cfg.model,
                      dataset=cfg.dataset, recipe=to_dict(cfg),
                      metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                      notes=f"Sequence-classification reward model (one output) trained with TRL's RewardTrainer; "
                            f"saved with {weights}. Load it with `rewards.scoring.ClassifierScorer.from_pretrained`."):
        log.info("saved reward model and card to %s", cfg.output_dir)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[train_rm] %(message)s")
    config_path, overrides = split_config_arg(sys.argv[1:] if argv is None else argv, __doc__)
    try:
        cfg = load_config(TrainRMConfig, config_path, overrides)
        metrics = train(cfg)
    except (ConfigError, DataError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("done: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
