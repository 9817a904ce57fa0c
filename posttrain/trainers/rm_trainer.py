"""Train a reward model on preference pairs with TRL's RewardTrainer.

Reads `prompt/chosen/rejected` pairs, puts a one-output score head on the base model (one loader:
rewards/reward_model.py), and trains it with the Bradley–Terry loss. An EMA of the weights is kept
during training and, by default, exported as the final reward model (what `reward.kind:
classifier` then loads). Bad rows and pairs longer than `max_length` are skipped and counted in
`data_report.json`; rerunning the same command resumes from the newest complete checkpoint.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from datasets import Dataset
from trl import RewardTrainer

from datagen.config_loader import to_dict
from posttrain.cards import save_with_card
from posttrain.checkpoints import CommitCheckpoint, ExpertSafeResumeMixin, find_checkpoint
from posttrain.data import DataError, DataReport, hold_out
from posttrain.ema import EMACallback, refuse_ema_under_zero3
from posttrain.pairs import load_preference_pairs
from posttrain.trainers.rm_config import RMRunConfig, build_training_args
from rewards.reward_model import load_reward_model

log = logging.getLogger("posttrain.rm")


class ResumableRewardTrainer(ExpertSafeResumeMixin, RewardTrainer):
    """RewardTrainer whose resume restores MoE expert weights (posttrain/checkpoints.py)."""


def pair_length(tokenizer, pair: dict, answer: str) -> int:
    return len(tokenizer.apply_chat_template(pair["prompt"] + pair[answer], tokenize=True, return_dict=False))


def load_rm_data(cfg: RMRunConfig, tokenizer):
    """(train, eval | None, report): pairs that fit `max_length`, as TRL preference datasets."""
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


def train(cfg: RMRunConfig) -> dict:
    """Train, export (EMA weights by default) and describe the reward model; returns final metrics."""
    refuse_ema_under_zero3({"ema.enabled": cfg.ema.enabled})
    checkpoint = find_checkpoint(cfg.output_dir, cfg.resume)
    args = build_training_args(cfg, has_eval=cfg.eval_fraction > 0)  # before the weights load: ZeRO-3 / FSDP init
    model, tokenizer = load_reward_model(cfg.model, cfg.dtype, cfg.seed)
    train_rows, eval_rows, report = load_rm_data(cfg, tokenizer)
    log.info(report.summary())
    ema = EMACallback(cfg.ema)
    trainer = ResumableRewardTrainer(model=model, args=args,
                                     train_dataset=train_rows, eval_dataset=eval_rows, processing_class=tokenizer,
                                     callbacks=[ema] if cfg.ema.enabled else [])
    trainer.add_callback(CommitCheckpoint(cfg.keep_checkpoints))  # last: after the EMA state is written
    if checkpoint:
        found = ema.restore(str(checkpoint), model)
        log.info("resuming from %s (EMA state %s)", checkpoint, "found" if found else "absent")
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics = {"train_loss": result.training_loss, "global_step": result.global_step}
    if cfg.ema.enabled and cfg.ema.export and ema.ema is not None:
        ema.ema.copy_to(trainer.model)  # evaluate and save what will be used: the smoothed RM
        metrics["ema_updates"] = ema.ema.num_updates
    if eval_rows is not None:
        metrics.update(trainer.evaluate())
    save_final(trainer, cfg, report, metrics)
    return metrics


def save_final(trainer, cfg: RMRunConfig, report: DataReport, metrics: dict) -> None:
    """The model, its card, and `metrics.json` (the final metrics, held-out pair accuracy included)."""
    weights = "the EMA of its weights" if cfg.ema.enabled and cfg.ema.export else "its last weights"
    if trainer.accelerator.is_main_process:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(cfg.output_dir) / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n",
                                                            encoding="utf-8")
    if save_with_card(trainer, cfg.output_dir, report, method="Reward model", base_model=cfg.model,
                      dataset=cfg.dataset, recipe=to_dict(cfg),
                      metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                      hub_repo=cfg.push_to_hub, auto_class="AutoModelForSequenceClassification",
                      notes=f"Sequence-classification reward model (one output) trained with TRL's RewardTrainer; "
                            f"saved with {weights}. Use it as `reward: {{kind: classifier, model: DIR}}`."):
        log.info("saved reward model and card to %s", cfg.output_dir)
