"""Supervised fine-tuning of a (MoE) causal LM with TRL's SFTTrainer, after the Hunyuan-Large recipe.

Reads the datagen output's `messages` view (or any HF chat dataset), trains with packing, MoE
parameter groups and the router aux loss in the loss, evaluates on a held-out split, checkpoints
every `save_steps` (rerunning the same command resumes from the newest complete checkpoint), logs
to TensorBoard (`DIR/runs`), and saves the final model in HF format with a model card.
"""
from __future__ import annotations

import logging

from trl import SFTTrainer

from datagen.config_loader import to_dict
from posttrain.cards import save_with_card
from posttrain.checkpoints import CommitCheckpoint, find_checkpoint
from posttrain.data import DataReport
from posttrain.model_loading import load_policy, load_tokenizer
from posttrain.moe.recipe import is_moe, prepare_moe_model
from posttrain.moe.param_groups import MoETrainerMixin, build_param_groups, describe_param_groups
from posttrain.trainers.sft_config import SFTRunConfig, build_training_args
from posttrain.trainers.sft_data import load_sft_splits

log = logging.getLogger("posttrain.sft")


class MoESFTTrainer(MoETrainerMixin, SFTTrainer):
    """SFTTrainer with MoE parameter groups, per-group LR logging and an expert-safe resume."""


def build_trainer(cfg: SFTRunConfig, model=None, tokenizer=None, callbacks=None):
    """(trainer, data report). `model`/`tokenizer` may be passed in (tests build them in memory)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    train, evaluation, report = load_sft_splits(cfg.dataset, cfg.data, tokenizer, cfg.max_length)
    log.info(report.summary())
    args = build_training_args(cfg, has_eval=evaluation is not None)  # before the weights load
    if model is None:
        model = load_policy(cfg.model, cfg.moe)
    else:
        prepare_moe_model(model, cfg.moe)  # same recipe for a model built in memory
    if is_moe(model):
        args.router_aux_loss_coef = cfg.moe.router_aux_loss_coef
    trainer = MoESFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                            processing_class=tokenizer, moe_config=cfg.moe, callbacks=callbacks)
    trainer.add_callback(CommitCheckpoint(cfg.keep_checkpoints))  # last: after every state writer
    return trainer, report


def train(cfg: SFTRunConfig, model=None, tokenizer=None, callbacks=None):
    """Run SFT end to end; returns (trainer, final metrics)."""
    checkpoint = find_checkpoint(cfg.output_dir, cfg.resume)  # before the heavy work: a bad path fails fast
    trainer, report = build_trainer(cfg, model, tokenizer, callbacks)
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics = {"train_loss": result.training_loss, "global_step": result.global_step}
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    save_final(trainer, cfg, report, metrics)
    return trainer, metrics


def save_final(trainer, cfg: SFTRunConfig, report: DataReport, metrics: dict) -> None:
    """HF-format weights + tokenizer, the recipe, the data report and a model card in output_dir."""
    groups = build_param_groups(trainer.model, cfg.learning_rate, cfg.weight_decay, cfg.moe)
    if save_with_card(trainer, cfg.output_dir, report, method="SFT", base_model=cfg.model.name,
                      dataset=cfg.dataset, recipe=to_dict(cfg), metrics=_card_metrics(metrics, trainer),
                      param_groups=describe_param_groups(groups), hub_repo=cfg.push_to_hub):
        log.info("saved model, tokenizer and model card to %s", cfg.output_dir)


def _card_metrics(metrics: dict, trainer) -> dict:
    card = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    aux = [h["aux_loss"] for h in trainer.state.log_history if "aux_loss" in h and "loss" in h]
    if aux:
        card["final_aux_loss"] = aux[-1]
    return card
