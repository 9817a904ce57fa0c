"""What a DPO run keeps between rounds and across a kill: the round plan, each round's log, and the
round state saved with every checkpoint (the round in progress and its rows, online cursors,
reward statistics, the moving reference), restored on resume."""
from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from datagen.config_loader import ConfigError
from posttrain.checkpoints import atomic_torch_save
from posttrain.ema import full_state_dict
from posttrain.online.feed import RoundFeed
from posttrain.online.rounds import OnlineRounds, RoundData

log = logging.getLogger("posttrain.dpo")
ROUND_STATE_FILE = "dpo_round_state.pt"


def round_plan(max_steps: int, steps_per_round: int) -> list[tuple[int, int]]:
    """(first step, last step) of every round; the last round may be shorter."""
    return [(start, min(start + steps_per_round, max_steps)) for start in range(0, max_steps, steps_per_round)]


def round_of_step(plan: list[tuple[int, int]], step: int) -> int:
    """The round that trains optimizer step `step` (0-based: the step after `step` finished ones)."""
    return next(index for index, (start, end) in enumerate(plan) if start <= step < end)


def rows_per_step(per_device_batch: int, accumulation: int, world_size: int) -> int:
    return per_device_batch * accumulation * world_size


def write_round_log(output_dir: str, round_index: int, data: RoundData) -> None:
    path = Path(output_dir) / "rounds" / f"round-{round_index:03d}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"kind": "stats", **data.stats, **{f"seconds/{k}": v for k, v in data.seconds.items()}})]
    lines += [json.dumps({"kind": "sample", **r}, ensure_ascii=False) for r in data.records]
    lines += [json.dumps({"kind": "train_row", **r}, ensure_ascii=False) for r in data.rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_reference(policy):
    """A frozen copy of the policy (explicit: TRL cannot reload a model that was never saved)."""
    reference = copy.deepcopy(policy).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference


class RoundStateCallback(TrainerCallback):
    """Writes the round state into every checkpoint (before CommitCheckpoint marks it complete)."""

    def __init__(self, feed: RoundFeed, rounds: OnlineRounds, reference, keep_reference: bool):
        self.feed, self.rounds, self.reference, self.keep_reference = feed, rounds, reference, keep_reference

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        # the moving reference in full: under FSDP every rank joins the gather of its shards
        reference = full_state_dict(self.reference, keep=state.is_world_process_zero) if self.keep_reference else None
        if not state.is_world_process_zero or not checkpoint.is_dir():
            return
        feed = self.feed
        atomic_torch_save({"round": feed.round_index, "start_step": feed.start_step, "end_step": feed.end_step,
                           "rows": feed.raw_rows, "online": self.rounds.state_dict(), "reference": reference},
                          checkpoint / ROUND_STATE_FILE)


@dataclass
class Restored:
    """The round a checkpoint was in: its index and rows (trained on again if it was not finished)."""

    round_index: int
    rows: list[dict]


def restore(checkpoint: Path, plan, policy, reference, rounds: OnlineRounds, ema) -> Restored:
    """Bring the round state back to the checkpoint's step (the Trainer restores weights, optimizer,
    scheduler and step itself)."""
    state = torch.load(checkpoint / ROUND_STATE_FILE, map_location="cpu", weights_only=True)
    index = state["round"]
    if index >= len(plan) or plan[index] != (state["start_step"], state["end_step"]):
        raise ConfigError(f"{checkpoint} was written in round {index} (steps {state['start_step']}-"
                          f"{state['end_step']}), which this config's max_steps/online.steps_per_round do not "
                          "reproduce: resume with the same values or set --resume never")
    if state["reference"] is not None:
        reference.load_state_dict(state["reference"])
    rounds.load_state_dict(state["online"])
    if ema is not None and not ema.restore(str(checkpoint), policy):
        log.warning("%s has no EMA state: the policy EMA restarts from the current weights", checkpoint)
    log.info("resuming in round %d from %s", index, checkpoint)
    return Restored(index, state["rows"])
