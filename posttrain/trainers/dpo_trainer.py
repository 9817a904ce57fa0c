"""One-stage DPO after the Hunyuan-Large report: offline + online best/worst-of-N pairs, SFT loss, EMA.

The run is a sequence of online rounds trained by **one** DPOTrainer, built once and trained once
over all `max_steps`. At the first step of each round a callback (posttrain/online/round_callback.py) syncs
the policy's weights into the run's live vLLM engine (`online.backend: vllm`, started once,
posttrain/online/engine.py), samples N answers per prompt, scores them with the reward (rewards/),
keeps the best and worst as a pair unless the margin is too small (skips are counted), mixes those
pairs with offline ones at `online.ratio` (posttrain/online/), and hands the rows to the trainer
through slots (posttrain/online/feed.py): the dataset holds slot numbers, a slot becomes a row of
the current round in `training_step`. Optimizer, LR schedule, TRL's loss, logging and callbacks
simply continue; checkpoints are written every `save_steps` for resume only, and a killed run
resumes from its last complete checkpoint, in the round it was in, with that round's rows.

The loss is TRL's `loss_type: [sigmoid, sft]` (DPO plus NLL on the chosen answer) with
`loss_weights`, plus the MoE router aux loss (posttrain/moe/recipe.py; logged as `aux_loss`). An EMA of
the policy weights (posttrain/ema.py) is exported as the final model when `ema.export`; TR-DPO's
moving reference (`sync_ref_model`) is an option. Logs: TRL's DPO metrics, and per round reward
statistics, margins, KL to the reference, pairs skipped by reason (also in `DIR/rounds/`).
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import PartialState
from datasets import Dataset
from torch.utils.data import SequentialSampler
from trl import DPOConfig, DPOTrainer

from datagen.config_loader import ConfigError, to_dict
from posttrain.cards import write_model_card
from posttrain.checkpoints import CommitCheckpoint, find_checkpoint
from posttrain.data import DataReport
from posttrain.trainers.dpo_config import DPORunConfig, build_dpo_args
from posttrain.online.round_callback import RoundDriver, checkpoint_step, policy_is_sharded, start_engine
from posttrain.online.round_state import RoundStateCallback, make_reference, restore, round_plan, rows_per_step
from posttrain.ema import EMACallback, refuse_ema_under_zero3
from posttrain.model_loading import load_policy, load_tokenizer
from posttrain.moe.recipe import is_moe
from posttrain.online.engine import PolicyEngine
from posttrain.online.feed import RoundFeed, slot_dataset
from posttrain.online.prompts import load_online_prompts
from posttrain.online.rounds import OnlineRounds
from posttrain.pairs import load_preference_pairs
from posttrain.moe.param_groups import MoETrainerMixin
from posttrain.online.rm_refresh import RewardRefresher
from rewards.scoring import build_scorer

log = logging.getLogger("posttrain.dpo")


class MoEDPOTrainer(MoETrainerMixin, DPOTrainer):
    """DPOTrainer with MoE parameter groups, an expert-safe resume, the round's stats in its first
    log line, a guard that stops with a clear error instead of training on a non-finite loss, and
    slots: given a `feed` (posttrain/online/feed.py) its dataset holds slot numbers, read in order,
    that become the current round's rows in `training_step`."""

    def __init__(self, *args, feed: RoundFeed | None = None, noise_pairs: list[dict] | None = None, **kwargs):
        self.feed = feed
        self.noise_pairs = noise_pairs  # offline pairs: what the gradient noise scale is measured on
        self.round_stats: dict | None = None
        super().__init__(*args, **kwargs)
        self.pair_collator = self.data_collator  # TRL's padding collator, used on the rows of the slots
        if feed is not None:
            self.data_collator = collate_slots

    # ------------------------------------------------------------------ slots

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "slot" in dataset.column_names:
            return dataset  # rows are tokenized per round (tokenize_rows)
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "slot" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "slot"]

    def _get_train_sampler(self, train_dataset=None):
        if self.feed is not None:
            return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)
        return super()._get_train_sampler(train_dataset)

    def tokenize_rows(self, rows: list[dict], name: str) -> list[dict]:
        """TRL's own tokenization of prompt/chosen/rejected rows (the same as a dataset passed in)."""
        data = self._prepare_dataset(Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                        for r in rows]), self.processing_class, self.args, name)
        return [{k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")} for r in data]

    def training_step(self, model, inputs, num_items_in_batch=None):
        if "slot" in inputs:
            inputs = self.pair_collator(self.feed.rows_for(inputs["slot"].tolist()))
        return super().training_step(model, inputs, num_items_in_batch)

    def noise_scale_batches(self, count: int) -> list | None:
        """Small batches of one offline pair each (the online ones do not exist before round 0),
        tokenized and collated as the rounds' rows are."""
        if "slot" not in (self.train_dataset.column_names or []):
            return super().noise_scale_batches(count)
        if not self.noise_pairs:
            return None
        return [self.pair_collator([row]) for row in self.tokenize_rows(self.noise_pairs[:count], "noise scale")]

    # ------------------------------------------------------------------ logging and the loss guard

    def set_round_stats(self, stats: dict | None) -> None:
        self.flush_round_stats()
        self.round_stats = dict(stats) if stats else None

    def flush_round_stats(self) -> None:
        """A round that logged no line (logging_steps > its steps) logs its stats alone."""
        if self.round_stats:
            stats, self.round_stats = self.round_stats, None
            self.log(stats)

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


def collate_slots(examples: list[dict]) -> dict:
    return {"slot": torch.tensor([example["slot"] for example in examples])}


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
    engine: PolicyEngine | None = None


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
        if hasattr(scorer, "to"):  # a reward model scores on the policy's device (this rank's GPU)
            scorer.to(PartialState().device)
    refresher = None
    if cfg.uses_online and cfg.rm_refresh.enabled:
        refresh_pairs = pairs
        if cfg.rm_refresh.dataset:
            refresh_pairs, _ = load_preference_pairs(cfg.rm_refresh.dataset, cfg.view, cfg.split, tokenizer,
                                                     cfg.max_prompt_length)
        refresher = RewardRefresher(scorer, refresh_pairs, cfg.rm_refresh)
    gold = None
    if cfg.uses_online and cfg.online.gold:
        from rewards.math_verifier import MathVerifier

        gold = MathVerifier()
    rounds = OnlineRounds(cfg.online, policy, reference, tokenizer, scorer, pairs, prompts, cfg.seed, refresher, gold)
    return DPORun(policy, reference, tokenizer, rounds, report, prompt_report)


def train(cfg: DPORunConfig, policy=None, tokenizer=None, scorer=None, callbacks=None,
          on_round: Callable[[int, dict], None] | None = None) -> dict:
    """Run all rounds with one trainer and export the final model; returns a summary.

    `policy`, `tokenizer` and `scorer` may be passed in (tests build them in memory); `callbacks`
    are added to the trainer; `on_round(index, seconds)` hears where each round's time went
    (benchmarks time the shipped loop through it). The vLLM engine, if any, is stopped on the way
    out, whatever the way (end, error, Ctrl-C)."""
    refuse_ema_under_zero3({"ema.enabled": cfg.ema.enabled, "sync_ref_model": cfg.sync_ref_model,
                            "rm_refresh.enabled": cfg.uses_online and cfg.rm_refresh.enabled})
    args = build_dpo_args(cfg, moe_model=False)  # first: the distributed state exists before any model loads
    process = PartialState()
    checkpoint = find_checkpoint(cfg.output_dir, cfg.resume)
    engine = None
    try:
        if policy is None:  # start the engine's cold start now: it overlaps with loading everything else
            engine = start_engine(cfg, checkpoint, process)
        run = prepare_run(cfg, policy, tokenizer, scorer)
        if policy is not None:
            engine = start_engine(cfg, checkpoint, process, snapshot_of=run)
        run.engine = run.rounds.engine = engine
        if is_moe(run.policy):
            args.router_aux_loss_coef = cfg.moe.router_aux_loss_coef
        return train_rounds(cfg, args, run, checkpoint, engine, callbacks, on_round, process)
    finally:
        if engine is not None:
            engine.stop()


def train_rounds(cfg: DPORunConfig, args: DPOConfig, run: DPORun, checkpoint: Path | None,
                 engine: PolicyEngine | None, callbacks, on_round, process) -> dict:
    policy, reference, rounds = run.policy, run.reference, run.rounds
    tensorboard = tensorboard_callback(cfg)
    ema = EMACallback(cfg.ema) if cfg.ema.enabled else None
    plan = round_plan(cfg.max_steps, cfg.online.steps_per_round)
    restored = restore(checkpoint, plan, policy, reference, rounds, ema) if checkpoint else None
    feed = RoundFeed(rows_per_step(cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps,
                                   args.world_size))
    round_state = RoundStateCallback(feed, rounds, reference, cfg.sync_ref_model)

    def heard(index: int, seconds: dict) -> None:
        run.round_seconds.append(seconds)
        if on_round is not None:
            on_round(index, seconds)

    driver = RoundDriver(cfg.output_dir, plan, feed, rounds, engine=engine,
                         engine_step=checkpoint_step(checkpoint), restored=restored, on_round=heard)
    trainer = MoEDPOTrainer(
        model=policy, ref_model=reference, args=args,
        train_dataset=slot_dataset(cfg.max_steps * feed.rows_per_step), processing_class=run.tokenizer,
        moe_config=cfg.moe, feed=feed, noise_pairs=rounds.offline.items,
        callbacks=[driver] + [cb for cb in (ema, tensorboard) if cb is not None] + list(callbacks or [])
        + [round_state])
    trainer.add_callback(CommitCheckpoint(cfg.keep_checkpoints))  # last: after the round and EMA state
    driver.trainer = trainer
    if cfg.online.backend == "transformers" and cfg.uses_online and policy_is_sharded(trainer):
        raise ConfigError("online.backend transformers samples in the trainer's process, but FSDP / ZeRO-3 "
                          "shard the policy: use online.backend vllm")
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return export(cfg, run, trainer, ema, process)


def export(cfg: DPORunConfig, run: DPORun, trainer, ema: EMACallback | None, process) -> dict:
    """The final model (the policy EMA when `ema.export`), tokenizer, summary and model card."""
    policy, rounds, report = run.policy, run.rounds, run.report
    exported_ema = bool(ema is not None and ema.ema is not None and cfg.ema.export)
    if exported_ema:
        ema.ema.copy_to(policy)
    out = Path(cfg.output_dir)
    trainer.save_model(cfg.output_dir)  # gathers sharded weights under FSDP / ZeRO-3
    summary = {"weights": "policy EMA" if exported_ema else "last policy",
               "ema_updates": ema.ema.num_updates if exported_ema else 0,
               "pairs_skipped_total": dict(rounds.skipped_total),
               "reward_running_mean": rounds.normalizer.mean, "reward_running_std": rounds.normalizer.std,
               "offline_pairs": report.train_rows, "round_seconds": run.round_seconds,
               "global_step": trainer.state.global_step,
               "last_log": next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})}
    if run.engine is not None:
        summary["engine"] = dataclasses.asdict(run.engine.stats)
    if process.is_main_process:
        run.tokenizer.save_pretrained(out)
        report.write(out / "data_report.json")
        if run.prompt_report is not None:
            run.prompt_report.write(out / "prompt_report.json")
        (out / "dpo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
        metrics = {k: v for k, v in summary.get("last_log", {}).items() if isinstance(v, (int, float))}
        write_model_card(out, method="DPO", base_model=cfg.model.name, dataset=cfg.dataset, recipe=to_dict(cfg),
                         data_report=report.to_dict(), metrics=metrics, hub_repo=cfg.push_to_hub,
                         notes=f"One-stage DPO (sigmoid + SFT loss) mixing offline pairs with online best/worst-of-"
                               f"{cfg.online.num_samples} pairs (ratio {cfg.online.ratio}); saved weights: "
                               f"{summary['weights']}. Pairs skipped online: {dict(rounds.skipped_total) or 'none'}.")
        log.info("saved %s, tokenizer and model card to %s", summary["weights"], out)
    return summary
