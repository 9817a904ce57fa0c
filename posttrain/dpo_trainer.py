"""One-stage DPO after the Hunyuan-Large report: offline + online best/worst-of-N pairs, SFT loss, EMA.

The run is a sequence of online rounds. Each round (posttrain/online/) samples N answers per
prompt from the current policy, scores them with the reward (rewards/), keeps the best and worst
as a pair unless the margin is too small (skips are counted), and mixes those pairs with offline
ones at `online.ratio`; then one DPOTrainer phase trains `online.steps_per_round` optimizer steps
on them and checkpoints. Every phase resumes the previous one's checkpoint, so optimizer, LR
schedule and step carry over; a killed run resumes from its last finished round.

The loss is TRL's `loss_type: [sigmoid, sft]` (DPO plus NLL on the chosen answer) with
`loss_weights`, plus the MoE router aux loss (posttrain/moe.py; logged as `aux_loss`). An EMA of
the policy weights (posttrain/ema.py) is exported as the final model when `ema.export`; TR-DPO's
moving reference (`sync_ref_model`) is an option. Logs: TRL's DPO metrics, and per round reward
statistics, margins, KL to the reference, pairs skipped by reason (also in `DIR/rounds/`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import TrainerCallback
from trl import DPOConfig, DPOTrainer

from datagen.config import to_dict
from posttrain.cards import write_model_card
from posttrain.checkpoints import CommitCheckpoint, find_checkpoint
from posttrain.data import DataReport
from posttrain.dpo_config import DPORunConfig
from posttrain.dpo_state import (RoundStateCallback, make_reference, read_round_rows, remove_fused_head, restore,
                                 round_plan, rows_per_round, write_round_log)
from posttrain.ema import EMACallback
from posttrain.models import load_policy, load_tokenizer
from posttrain.moe import is_moe
from posttrain.online.prompts import load_online_prompts
from posttrain.online.rounds import OnlineRounds, RoundData
from posttrain.pairs import load_preference_pairs
from posttrain.param_groups import MoETrainerMixin
from posttrain.rm_refresh import RewardRefresher
from posttrain.trl_args import build_trl_args
from rewards.scoring import build_scorer

log = logging.getLogger("posttrain.dpo")


class MoEDPOTrainer(MoETrainerMixin, DPOTrainer):
    """DPOTrainer with MoE parameter groups, an expert-safe resume, the round's stats in its first
    log line, and a guard that stops with a clear error instead of training on a non-finite loss."""

    round_stats: dict | None = None

    def log(self, logs, *args, **kwargs):
        if self.round_stats and "loss" in logs:
            logs.update(self.round_stats)
            self.round_stats = None
        super().log(logs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = result[0] if return_outputs else result
        if not torch.isfinite(loss).all():
            raise FloatingPointError(
                f"non-finite DPO loss ({loss.item()}) at step {self.state.global_step}: lower the learning "
                "rate or check the pairs of this round in rounds/")
        return result


class StopAtStep(TrainerCallback):
    """Ends a training phase, with a checkpoint, when the round's last step is done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


def build_dpo_args(cfg: DPORunConfig, moe_model: bool) -> DPOConfig:
    return build_trl_args(
        DPOConfig, cfg,
        loss_type=list(cfg.loss_type), loss_weights=list(cfg.loss_weights),
        router_aux_loss_coef=cfg.moe.router_aux_loss_coef if moe_model else None,
        save_strategy="no",  # checkpoints only at round ends (StopAtStep)
        save_total_limit=None,  # CommitCheckpoint rotates, counting only complete checkpoints
        ignore_data_skip=True,  # every phase trains a fresh round dataset from its start
        report_to=[] if cfg.report_to in ("none", "tensorboard") else [cfg.report_to],
        data_seed=cfg.seed,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning needs an accelerator
        push_to_hub=False,
    )


def tensorboard_callback(cfg: DPORunConfig):
    """One TensorBoard run for all phases (the default would start a new run directory per phase)."""
    if cfg.report_to != "tensorboard":
        return None
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(Path(cfg.output_dir) / "runs" / "dpo")
    return callback


@dataclass
class DPORun:
    """Everything a run holds besides the trainer: models, data reports and the online rounds."""

    policy: object
    reference: object
    tokenizer: object
    rounds: OnlineRounds
    report: DataReport  # offline pairs
    prompt_report: DataReport | None  # online prompts, when they come from their own dataset
    round_seconds: list[dict] = field(default_factory=list)  # per round: where the time went


def prepare_run(cfg: DPORunConfig, policy=None, tokenizer=None, scorer=None) -> DPORun:
    """Load policy, reference, pairs, prompts and the reward; build the online rounds."""
    if scorer is None:
        cfg.check_reward_given()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    pairs, report = load_preference_pairs(cfg.dataset, cfg.view, cfg.split, tokenizer, cfg.max_prompt_length,
                                          cfg.max_pairs, seeds_dir=Path(cfg.output_dir) / "seed_pairs")
    log.info(report.summary())
    prompts, prompt_report = load_online_prompts(cfg.online, cfg.split, cfg.max_prompt_length, tokenizer, pairs)
    policy = policy if policy is not None else load_policy(cfg.model, cfg.moe)
    reference = make_reference(policy)
    if cfg.uses_online and scorer is None:
        scorer = build_scorer(cfg.reward)
    refresher = None
    if cfg.uses_online and cfg.rm_refresh.enabled:
        refresh_pairs = pairs
        if cfg.rm_refresh.dataset:
            refresh_pairs, _ = load_preference_pairs(cfg.rm_refresh.dataset, cfg.view, cfg.split, tokenizer,
                                                     cfg.max_prompt_length)
        refresher = RewardRefresher(scorer, refresh_pairs, cfg.rm_refresh)
    rounds = OnlineRounds(cfg.online, policy, reference, tokenizer, scorer, pairs, prompts, cfg.seed, refresher,
                          snapshot_root=str(Path(cfg.output_dir) / "rounds"))
    return DPORun(policy, reference, tokenizer, rounds, report, prompt_report)


def train(cfg: DPORunConfig, policy=None, tokenizer=None, scorer=None, callbacks=None,
          on_round: Callable[[int, dict], None] | None = None) -> dict:
    """Run all rounds and export the final model; returns a summary.

    `policy`, `tokenizer` and `scorer` may be passed in (tests build them in memory); `callbacks`
    are added to every phase's trainer; `on_round(index, seconds)` hears where each round's time
    went (benchmarks time the shipped loop through it)."""
    process = PartialState()
    run = prepare_run(cfg, policy, tokenizer, scorer)
    policy, reference, rounds = run.policy, run.reference, run.rounds
    ema = EMACallback(cfg.ema) if cfg.ema.enabled else None
    board = tensorboard_callback(cfg)
    plan = round_plan(cfg.max_steps, cfg.online.steps_per_round)

    checkpoint = find_checkpoint(cfg.output_dir, cfg.resume)
    first = restore(checkpoint, plan, policy, reference, rounds, ema) if checkpoint else 0
    trainer = None
    for index in range(first, len(plan)):
        start, end = plan[index]
        seconds, stats, round_began = {}, None, time.perf_counter()
        if process.is_main_process:  # sampling and scoring once; every rank reads the same rows
            data = rounds.build(index, rows_per_round(end - start, cfg.per_device_train_batch_size,
                                                      cfg.gradient_accumulation_steps, process.num_processes),
                                policy_dir=str(checkpoint) if checkpoint else "")
            write_round_log(cfg.output_dir, index, data)
            log.info("round %d: %s", index, _brief(data))
            stats, seconds = data.stats, dict(data.seconds)
        process.wait_for_everyone()
        clock = time.perf_counter()
        phase_callbacks = [cb for cb in (ema, board) if cb is not None] + list(callbacks or []) + [
            StopAtStep(end), RoundStateCallback(index, end, rounds, reference, cfg.sync_ref_model)]
        trainer = MoEDPOTrainer(model=policy, ref_model=reference, args=build_dpo_args(cfg, is_moe(policy)),
                                train_dataset=Dataset.from_list(read_round_rows(cfg.output_dir, index)),
                                processing_class=run.tokenizer, moe_config=cfg.moe, callbacks=phase_callbacks)
        trainer.add_callback(CommitCheckpoint(cfg.keep_checkpoints))  # last: after the round and EMA state
        seconds["trainer_build"] = time.perf_counter() - clock
        clock = time.perf_counter()
        train_phase(trainer, checkpoint, stats)
        seconds["update"] = time.perf_counter() - clock
        remove_fused_head(policy, reference)
        checkpoint = Path(cfg.output_dir) / f"checkpoint-{end}"
        process.wait_for_everyone()
        seconds["round"] = time.perf_counter() - round_began
        run.round_seconds.append(seconds)
        if on_round is not None:
            on_round(index, seconds)
    return export(cfg, run, trainer, ema, process)


def train_phase(trainer, checkpoint: Path | None, round_stats: dict | None) -> None:
    """One round of optimizer steps, continuing the previous round's checkpoint."""
    trainer.round_stats = dict(round_stats) if round_stats else None
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if trainer.round_stats:  # the phase logged no line (logging_steps > its steps): log the round alone
        trainer.log(trainer.round_stats)


def _brief(data: RoundData) -> str:
    keys = ("online/pairs", "online/pairs_skipped", "mix/online_pairs", "mix/offline_pairs", "reward/mean",
            "online/kl_to_reference")
    parts = [f"{k.split('/')[-1]}={data.stats[k]:.4g}" for k in keys if k in data.stats]
    parts += [f"{k}={v:.1f}s" for k, v in data.seconds.items() if v]
    return " ".join(parts)


def export(cfg: DPORunConfig, run: DPORun, trainer, ema: EMACallback | None, process) -> dict:
    """The final model (the policy EMA when `ema.export`), tokenizer, summary and model card."""
    policy, rounds, report = run.policy, run.rounds, run.report
    exported_ema = bool(ema is not None and ema.ema is not None and cfg.ema.export)
    if exported_ema:
        ema.ema.copy_to(policy)
    out = Path(cfg.output_dir)
    if trainer is not None:
        trainer.save_model(cfg.output_dir)  # gathers sharded weights under FSDP / ZeRO-3
    elif process.is_main_process:
        policy.save_pretrained(out)
    summary = {"weights": "policy EMA" if exported_ema else "last policy",
               "ema_updates": ema.ema.num_updates if exported_ema else 0,
               "pairs_skipped_total": dict(rounds.skipped_total),
               "reward_running_mean": rounds.normalizer.mean, "reward_running_std": rounds.normalizer.std,
               "offline_pairs": report.train_rows, "round_seconds": run.round_seconds}
    if trainer is not None:
        summary["global_step"] = trainer.state.global_step
        summary["last_log"] = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
    if process.is_main_process:
        run.tokenizer.save_pretrained(out)
        report.write(out / "data_report.json")
        if run.prompt_report is not None:
            run.prompt_report.write(out / "prompt_report.json")
        (out / "dpo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        metrics = {k: v for k, v in summary.get("last_log", {}).items() if isinstance(v, (int, float))}
        write_model_card(out, method="DPO", base_model=cfg.model.name, dataset=cfg.dataset, recipe=to_dict(cfg),
                         data_report=report.to_dict(), metrics=metrics,
                         notes=f"One-stage DPO (sigmoid + SFT loss) mixing offline pairs with online best/worst-of-"
                               f"{cfg.online.num_samples} pairs (ratio {cfg.online.ratio}); saved weights: "
                               f"{summary['weights']}. Pairs skipped online: {dict(rounds.skipped_total) or 'none'}.")
        log.info("saved %s, tokenizer and model card to %s", summary["weights"], out)
    return summary
