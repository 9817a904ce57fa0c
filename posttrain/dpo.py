"""One-stage DPO after the Hunyuan-Large report: offline + online best/worst-of-N pairs, SFT loss, EMA.

    accelerate launch posttrain/dpo.py --config configs/posttrain/dpo_tiny.yaml \
        [--output_dir DIR] [--max_steps N] [--online.ratio 0.5 ...]

The run is a sequence of online rounds. Each round (posttrain/online.py) samples N answers per
prompt from the current policy, scores them with the reward (rewards/scoring.py), keeps the best
and worst as a pair unless the margin is too small (skips are counted), and mixes those pairs
with offline ones at `online.ratio`; then one DPOTrainer phase trains `online.steps_per_round`
optimizer steps on them and checkpoints. Every phase resumes the previous one's checkpoint, so
optimizer, LR schedule and step carry over; a killed run resumes from its last finished round.

The loss is TRL's `loss_type: [sigmoid, sft]` (DPO plus NLL on the chosen answer) with
`loss_weights`, plus the MoE router aux loss (posttrain/moe.py; logged as `aux_loss`). An EMA of
the policy weights (rewards/ema.py) is exported as the final model when `ema.export`; TR-DPO's
moving reference (`sync_ref_model`: ref ← α·policy + (1 − α)·ref every `ref_model_sync_steps`)
is an option. Logs: TRL's DPO metrics (rewards/margins, logps, aux_loss, ...), and per round
reward statistics, chosen/rejected rewards and margins, KL to the reference, pairs skipped by
reason (also written to `DIR/rounds/round-NNN.jsonl`).
"""
from __future__ import annotations

import copy
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

if __package__ in (None, ""):  # `accelerate launch posttrain/dpo.py` runs this file as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import TrainerCallback  # noqa: E402

from datagen.config import ConfigError, load_config, split_config_arg, to_dict  # noqa: E402
from posttrain.data import DataError, DataReport, load_view  # noqa: E402
from posttrain.moe import (MoEConfig, MoETrainerMixin, ModelLoadError, ModelSpec, is_moe,  # noqa: E402
                           load_policy, load_tokenizer)
from posttrain.online import OnlineConfig, OnlineRounds, RoundData, prompt_items_from_pairs  # noqa: E402
from rewards.ema import EMACallback, EMAConfig, atomic_torch_save  # noqa: E402
from rewards.pairs import as_messages, load_preference_pairs, prompt_length, reference_of  # noqa: E402
from rewards.scoring import RewardConfig, build_scorer  # noqa: E402

log = logging.getLogger("posttrain.dpo")
ROUND_STATE_FILE = "dpo_round_state.pt"


@dataclass
class DPORunConfig:
    """One DPO run: policy, offline pairs, online rounds, reward, loss, EMA and operations."""

    output_dir: str = "out/dpo"  # checkpoints, TensorBoard logs (runs/), rounds/ logs, final model and card
    dataset: str = "seeds"  # offline pairs: datagen output dir (dpo view), save_to_disk dir, file, hub id, or "seeds"
    view: str = "dpo"  # dataset config holding the pairs
    split: str = "train"  # split of the offline pairs (and of online.prompts)
    max_pairs: int = 0  # use only the first N usable offline pairs; 0 = all
    model: ModelSpec = field(default_factory=ModelSpec)  # the policy: alias, SFT output dir or hub id
    moe: MoEConfig = field(default_factory=MoEConfig)  # router aux loss (kept in the DPO loss), per-group LRs
    reward: RewardConfig = field(default_factory=RewardConfig)  # scores online samples
    online: OnlineConfig = field(default_factory=OnlineConfig)  # rounds, N, margin, offline/online ratio
    ema: EMAConfig = field(default_factory=EMAConfig)  # EMA of the policy weights, exported as the final model
    max_steps: int = 100  # optimizer steps in total, over all rounds
    learning_rate: float = 5e-7  # peak LR of the base parameter groups
    lr_scheduler_type: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"  # over all rounds
    warmup_steps: int = 0  # linear warm-up steps
    weight_decay: float = 0.0  # AdamW weight decay (norm weights never decay)
    max_grad_norm: float = 1.0  # gradient clipping
    per_device_train_batch_size: int = 4  # pairs per device and micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    beta: float = 0.1  # DPO temperature: higher keeps the policy closer to the reference
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid", "sft"])  # DPO + SFT on the chosen answer
    loss_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])  # one weight per loss_type
    max_length: int = 2048  # prompt + answer tokens; longer answers are truncated at the end
    max_prompt_length: int = 1024  # longer prompts are skipped and counted (must be < max_length)
    sync_ref_model: bool = False  # TR-DPO: move the reference toward the policy (an EMA of the policy)
    ref_model_mixup_alpha: float = 0.6  # α in ref ← α·policy + (1 − α)·ref
    ref_model_sync_steps: int = 64  # steps between reference updates
    gradient_checkpointing: bool = False  # trade compute for memory on big models
    bf16: bool = False  # bfloat16 mixed precision (GPUs; leave off on CPU)
    logging_steps: int = 1  # optimizer steps between log lines / TensorBoard points
    save_total_limit: int = 2  # round checkpoints kept on disk
    resume: str = "auto"  # auto = newest finished round in output_dir if any; never; or a checkpoint path
    report_to: str = "tensorboard"  # tensorboard (offline, DIR/runs/dpo) | none | any transformers integration
    seed: int = 42  # data order and mixing; online sampling uses seed + round index

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 (online rounds split a step budget), got {self.max_steps}")
        if self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length ({self.max_prompt_length}) must be < max_length "
                             f"({self.max_length}) so every answer keeps at least one token")
        if len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights needs one weight per loss_type: {self.loss_type} vs {self.loss_weights}")
        if self.reward.refresh.enabled and self.reward.kind != "classifier":
            raise ValueError("reward.refresh needs reward.kind: classifier (only a reward model can be retrained)")


# --------------------------------------------------------------------------- the trainer


def make_trainer_class():
    import torch
    from trl import DPOTrainer

    class HunyuanDPOTrainer(MoETrainerMixin, DPOTrainer):
        """DPOTrainer with MoE parameter groups, an expert-preserving resume (posttrain/moe.py), the
        round's stats in its first log line, and a guard that stops with a clear error instead of
        training on a non-finite loss."""

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

    return HunyuanDPOTrainer


class StopAtStep(TrainerCallback):
    """Ends a training phase, with a checkpoint, when the round's last step is done."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
            control.should_save = True
        return control


def build_dpo_args(cfg: DPORunConfig, moe_model: bool):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=cfg.output_dir,
        max_steps=cfg.max_steps,  # the whole run: the LR schedule spans all rounds
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        beta=cfg.beta,
        loss_type=list(cfg.loss_type),
        loss_weights=list(cfg.loss_weights),
        max_length=cfg.max_length,
        router_aux_loss_coef=cfg.moe.router_aux_loss_coef if moe_model else None,
        sync_ref_model=cfg.sync_ref_model,
        ref_model_mixup_alpha=cfg.ref_model_mixup_alpha,
        ref_model_sync_steps=cfg.ref_model_sync_steps,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=cfg.bf16,
        logging_steps=cfg.logging_steps,
        save_strategy="no",  # checkpoints only at round ends (StopAtStep)
        save_total_limit=cfg.save_total_limit,
        ignore_data_skip=True,  # every phase trains a fresh round dataset from its start
        report_to=[] if cfg.report_to in ("none", "tensorboard") else [cfg.report_to],
        seed=cfg.seed,
        data_seed=cfg.seed,
    )


def tensorboard_callback(cfg: DPORunConfig):
    """One TensorBoard run for all phases (the default would start a new run directory per phase)."""
    if cfg.report_to != "tensorboard":
        return None
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(Path(cfg.output_dir) / "runs" / "dpo")
    return callback


# --------------------------------------------------------------------------- data


def load_online_prompts(cfg: DPORunConfig, tokenizer, offline_pairs: list[dict]) -> tuple[list[dict], DataReport | None]:
    """Prompts for online sampling: a dataset's `prompt` or `messages` column, or the offline prompts."""
    if not cfg.online.prompts:
        return prompt_items_from_pairs(offline_pairs), None
    ds = load_view(cfg.online.prompts, cfg.online.prompts_view, cfg.split)
    report = DataReport(source=cfg.online.prompts, view=cfg.online.prompts_view, rows_read=len(ds),
                        max_length=cfg.max_prompt_length)
    items = []
    for row in ds:
        prompt = as_messages(row.get("prompt"), "user") if row.get("prompt") is not None else None
        if prompt is None and isinstance(row.get("messages"), list):
            prompt = as_messages(row["messages"], "user")
            while prompt and prompt[-1]["role"] == "assistant":
                prompt = prompt[:-1]
        if not prompt or prompt[-1]["role"] != "user" or not prompt[-1]["content"].strip():
            report.skip("no_prompt")
        elif prompt_length(tokenizer, prompt) > cfg.max_prompt_length:
            report.skip("prompt_too_long")
        else:
            items.append({"prompt": prompt, "reference": reference_of(row)})
    report.train_rows = len(items)
    if not items:
        raise DataError(f"no usable prompts in {cfg.online.prompts}: {report.summary()}")
    return items, report


def rows_per_round(cfg: DPORunConfig, steps: int, world_size: int) -> int:
    return steps * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world_size


def round_plan(max_steps: int, steps_per_round: int) -> list[tuple[int, int]]:
    """(first step, last step) of every round; the last round may be shorter."""
    return [(start, min(start + steps_per_round, max_steps)) for start in range(0, max_steps, steps_per_round)]


def write_round_log(output_dir: str, round_index: int, data: RoundData) -> None:
    path = Path(output_dir) / "rounds" / f"round-{round_index:03d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"kind": "stats", **data.stats, **{f"seconds/{k}": v for k, v in data.seconds.items()}})]
    lines += [json.dumps({"kind": "sample", **r}, ensure_ascii=False) for r in data.records]
    lines += [json.dumps({"kind": "train_row", **r}, ensure_ascii=False) for r in data.rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_round_rows(output_dir: str, round_index: int) -> list[dict]:
    path = Path(output_dir) / "rounds" / f"round-{round_index:03d}.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows if r["kind"] == "train_row"]


# --------------------------------------------------------------------------- checkpoints


def make_reference(policy):
    """A frozen copy of the policy (explicit: TRL cannot reload a model that was never saved)."""
    reference = copy.deepcopy(policy).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference


def finished_rounds(output_dir: str) -> list[Path]:
    """Checkpoints whose round state was fully written (a kill mid-save leaves none), newest first."""
    found = [c for c in Path(output_dir).glob("checkpoint-*")
             if (c / ROUND_STATE_FILE).is_file() and c.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda c: int(c.name.split("-")[-1]), reverse=True)


def checkpoint_to_resume(cfg: DPORunConfig) -> Path | None:
    if cfg.resume == "never":
        return None
    if cfg.resume != "auto":
        path = Path(cfg.resume)
        if not (path / ROUND_STATE_FILE).is_file():
            raise ConfigError(f"resume: {path} is not a finished DPO round (no {ROUND_STATE_FILE})")
        return path
    rounds = finished_rounds(cfg.output_dir) if Path(cfg.output_dir).is_dir() else []
    return rounds[0] if rounds else None


def load_weights(model, checkpoint: Path) -> None:
    """Load a checkpoint's weights into `model`, strictly, before any trainer exists (the first
    round's sampling needs them). Through `from_pretrained`: checkpoints hold one tensor per expert,
    the model fused ones (the same reason as posttrain/moe.py's CheckpointResumeMixin)."""
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(checkpoint, config=model.config, dtype=model.dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    del loaded


def save_round_state(checkpoint: Path, round_index: int, end_step: int, rounds: OnlineRounds, reference,
                     cfg: DPORunConfig) -> None:
    state = {"round": round_index, "end_step": end_step, "online": rounds.state_dict(),
             "reference": reference.state_dict() if cfg.sync_ref_model else None}
    atomic_torch_save(state, str(checkpoint / ROUND_STATE_FILE))


def restore(checkpoint: Path, plan, policy, reference, rounds: OnlineRounds, ema: EMACallback | None,
            cfg: DPORunConfig) -> int:
    """Bring everything back to the end of the checkpoint's round; returns the next round."""
    import torch

    state = torch.load(checkpoint / ROUND_STATE_FILE, map_location="cpu", weights_only=True)
    if state["round"] >= len(plan) or plan[state["round"]][1] != state["end_step"]:
        raise ConfigError(f"{checkpoint} ended round {state['round']} at step {state['end_step']}, which this "
                          "config's max_steps/online.steps_per_round do not reproduce: resume with the same values "
                          "or set --resume never")
    load_weights(policy, checkpoint)
    if state["reference"] is not None:
        reference.load_state_dict(state["reference"])
    rounds.load_state_dict(state["online"])
    if ema is not None and not ema.restore(str(checkpoint), policy):
        log.warning("%s has no EMA state: the policy EMA restarts from the current weights", checkpoint)
    log.info("resumed after round %d (step %d) from %s", state["round"], state["end_step"], checkpoint)
    return state["round"] + 1


def remove_fused_head(*models) -> None:
    """DPOTrainer patches `forward` on each construction; drop the patch so phases don't stack it."""
    for model in models:
        model.__dict__.pop("forward", None)


# --------------------------------------------------------------------------- the run


@dataclass
class DPORun:
    """Everything a run holds besides the trainer: models, data reports and the online rounds."""

    policy: object
    reference: object
    tokenizer: object
    rounds: OnlineRounds
    report: DataReport  # offline pairs
    prompt_report: DataReport | None  # online prompts, when they come from their own dataset


def prepare_run(cfg: DPORunConfig, policy=None, tokenizer=None, scorer=None) -> DPORun:
    """Load policy, reference, pairs, prompts and the reward; build the online rounds."""
    from rewards.refresh import RewardRefresher

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    pairs, report = load_preference_pairs(cfg.dataset, cfg.view, cfg.split, tokenizer, cfg.max_prompt_length,
                                          cfg.max_pairs, seeds_dir=Path(cfg.output_dir) / "seed_pairs")
    log.info(report.summary())
    prompts, prompt_report = load_online_prompts(cfg, tokenizer, pairs)  # data errors before loading models
    policy = policy if policy is not None else load_policy(cfg.model, cfg.moe)
    reference = make_reference(policy)
    uses_online = cfg.online.enabled and cfg.online.ratio > 0
    if uses_online and scorer is None:
        scorer = build_scorer(cfg.reward)
    refresher = None
    if uses_online and cfg.reward.refresh.enabled:
        refresh_pairs = pairs
        if cfg.reward.refresh.dataset:
            refresh_pairs, _ = load_preference_pairs(cfg.reward.refresh.dataset, cfg.view, cfg.split, tokenizer,
                                                     cfg.max_prompt_length)
        refresher = RewardRefresher(scorer, refresh_pairs, cfg.reward.refresh)
    rounds = OnlineRounds(cfg.online, policy, reference, tokenizer, scorer, pairs, prompts, cfg.seed, refresher,
                          snapshot_root=str(Path(cfg.output_dir) / "rounds"))
    return DPORun(policy, reference, tokenizer, rounds, report, prompt_report)


def train(cfg: DPORunConfig, policy=None, tokenizer=None, scorer=None, callbacks=None) -> dict:
    """Run all rounds and export the final model; returns a summary.

    `policy`, `tokenizer` and `scorer` may be passed in (tests build them in memory); `callbacks`
    are added to every phase's trainer."""
    from accelerate import PartialState
    from datasets import Dataset

    process = PartialState()
    run = prepare_run(cfg, policy, tokenizer, scorer)
    policy, reference, rounds = run.policy, run.reference, run.rounds
    ema = EMACallback(cfg.ema) if cfg.ema.enabled else None
    board = tensorboard_callback(cfg)
    plan = round_plan(cfg.max_steps, cfg.online.steps_per_round)

    checkpoint = checkpoint_to_resume(cfg)
    first = restore(checkpoint, plan, policy, reference, rounds, ema, cfg) if checkpoint else 0
    trainer, trainer_cls = None, make_trainer_class()
    for index in range(first, len(plan)):
        start, end = plan[index]
        stats = None
        if process.is_main_process:  # sampling and scoring once; every rank reads the same rows
            data = rounds.build(index, rows_per_round(cfg, end - start, process.num_processes),
                                policy_dir=str(checkpoint) if checkpoint else "")
            write_round_log(cfg.output_dir, index, data)
            log.info("round %d: %s", index, _brief(data))
            stats = data.stats
        process.wait_for_everyone()
        phase_callbacks = [cb for cb in (ema, board) if cb is not None] + list(callbacks or []) + [StopAtStep(end)]
        trainer = trainer_cls(model=policy, ref_model=reference, args=build_dpo_args(cfg, is_moe(policy)),
                              train_dataset=Dataset.from_list(read_round_rows(cfg.output_dir, index)),
                              processing_class=run.tokenizer, moe_config=cfg.moe, callbacks=phase_callbacks)
        train_phase(trainer, checkpoint, stats)
        remove_fused_head(policy, reference)
        checkpoint = Path(cfg.output_dir) / f"checkpoint-{end}"
        if process.is_main_process:
            save_round_state(checkpoint, index, end, rounds, reference, cfg)
        process.wait_for_everyone()
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
    from posttrain.cards import write_model_card

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
               "offline_pairs": report.train_rows}
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[dpo] %(message)s")
    config_path, overrides = split_config_arg(sys.argv[1:] if argv is None else argv, __doc__)
    try:
        cfg = load_config(DPORunConfig, config_path, overrides)
        summary = train(cfg)
    except (ConfigError, DataError, ModelLoadError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info("done: %s", json.dumps({k: v for k, v in summary.items() if k != "last_log"}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
