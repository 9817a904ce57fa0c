"""What a DPO run keeps between rounds and across a kill: the round plan, each round's log, and the
round state saved with every round's checkpoint (online cursors, reward statistics, the moving
reference), restored on resume."""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from transformers import TrainerCallback

from datagen.config import ConfigError
from posttrain.checkpoints import atomic_torch_save, load_weights
from posttrain.online.rounds import OnlineRounds, RoundData

log = logging.getLogger("posttrain.dpo")
ROUND_STATE_FILE = "dpo_round_state.pt"


def round_plan(max_steps: int, steps_per_round: int) -> list[tuple[int, int]]:
    """(first step, last step) of every round; the last round may be shorter."""
    return [(start, min(start + steps_per_round, max_steps)) for start in range(0, max_steps, steps_per_round)]


def rows_per_round(steps: int, per_device_batch: int, accumulation: int, world_size: int) -> int:
    return steps * per_device_batch * accumulation * world_size


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


def make_reference(policy):
    """A frozen copy of the policy (explicit: TRL cannot reload a model that was never saved)."""
    reference = copy.deepcopy(policy).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    return reference


def remove_fused_head(*models) -> None:
    """DPOTrainer patches `forward` on each construction; drop the patch so phases don't stack it."""
    for model in models:
        model.__dict__.pop("forward", None)


class RoundStateCallback(TrainerCallback):
    """Writes the round state into each round's checkpoint (before CommitCheckpoint marks it complete)."""

    def __init__(self, round_index: int, end_step: int, rounds: OnlineRounds, reference, keep_reference: bool):
        self.round_index, self.end_step = round_index, end_step
        self.rounds, self.reference, self.keep_reference = rounds, reference, keep_reference

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not state.is_world_process_zero or not checkpoint.is_dir():
            return
        atomic_torch_save({"round": self.round_index, "end_step": self.end_step, "online": self.rounds.state_dict(),
                           "reference": self.reference.state_dict() if self.keep_reference else None},
                          checkpoint / ROUND_STATE_FILE)


def restore(checkpoint: Path, plan, policy, reference, rounds: OnlineRounds, ema) -> int:
    """Bring everything back to the end of the checkpoint's round; returns the next round."""
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
