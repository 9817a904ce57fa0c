"""The round boundary of one-stage DPO, as a callback of the one trainer of the run, and the
vLLM engine it samples from (`start_engine`).

At the first step of every round (`on_step_begin`, after the previous step's checkpoint was saved),
on every rank:

1. **sync** — with `online.backend: vllm`, the policy's current weights go into the live engine
   (posttrain/online/engine.py). The main process writes them; under FSDP / ZeRO-3 every rank first
   joins the gather of the full weights;
2. **build** — the main process samples, scores, selects and mixes the round (posttrain/online/),
   writes `rounds/round-NNN.jsonl`, and broadcasts rows and stats to every rank (a failure there is
   broadcast too, so no rank waits forever);
3. **tokenize** — every rank tokenizes the rows with TRL's own `_prepare_dataset` and installs them
   in the `RoundFeed`, which turns the next batches' slots into rows (posttrain/online/feed.py).

A run resumed in the middle of a round installs that round's rows from the checkpoint instead of
sampling again. The round's stats join the first training log line after it; `on_round(index,
seconds)` hears where each round's time went, from this round's start to the next one's.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from accelerate import PartialState
from transformers import TrainerCallback

from posttrain.checkpoints import find_checkpoint
from posttrain.distributed import FailedOnAnotherRank
from posttrain.online.round_state import Restored, round_of_step, write_round_log
from posttrain.model_loading import resolve_name
from posttrain.online.engine import PolicyEngine
from posttrain.online.feed import RoundFeed
from posttrain.online.weights import shared_memory_dir

log = logging.getLogger("posttrain.dpo")


def checkpoint_step(checkpoint: Path | None) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1]) if checkpoint else 0


def start_engine(cfg, checkpoint: Path | None, process, snapshot_of=None):
    """The run's one vLLM engine (main process only), launched in the background on the policy's
    weights: the resumed checkpoint, else the model directory, else a snapshot of an in-memory policy."""
    if not (cfg.uses_online and cfg.online.backend == "vllm" and process.is_main_process):
        return None
    if checkpoint is not None:
        source = str(checkpoint)
    elif snapshot_of is None:
        source = resolve_name(cfg.model.name)
    else:
        source = tempfile.mkdtemp(prefix="policy-snapshot-", dir=shared_memory_dir())
        snapshot_of.policy.save_pretrained(source)
        snapshot_of.tokenizer.save_pretrained(source)
    first = (source, checkpoint_step(checkpoint))

    def last_checkpoint() -> tuple[str, int]:
        newest = find_checkpoint(cfg.output_dir, "auto")
        return (str(newest), checkpoint_step(newest)) if newest is not None else first

    tokenizer = resolve_name(cfg.model.tokenizer) if cfg.model.tokenizer else ""
    engine = PolicyEngine(cfg.online.vllm, source, first[1], tokenizer_dir=tokenizer,
                          sync_timeout=cfg.online.vllm.request_timeout, restart_source=last_checkpoint,
                          transport=cfg.online.weight_sync)
    if snapshot_of is not None:
        engine.on_stop(lambda: shutil.rmtree(source, ignore_errors=True))
    return engine


def policy_is_sharded(trainer) -> bool:
    """FSDP, or DeepSpeed ZeRO-3: no rank holds the whole policy, so a forward needs them all."""
    if trainer.is_fsdp_enabled:
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return bool(trainer.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)


class RoundDriver(TrainerCallback):
    def __init__(self, output_dir: str, plan: list[tuple[int, int]], feed: RoundFeed, rounds, engine=None,
                 engine_step: int | None = None, restored: Restored | None = None,
                 on_round: Callable[[int, dict], None] | None = None) -> None:
        self.output_dir, self.plan, self.feed, self.rounds = output_dir, plan, feed, rounds
        self.engine = engine  # the main process's PolicyEngine, or None
        self.engine_step = engine_step  # policy step of the weights the engine started from (all ranks know it)
        self.restored, self.on_round = restored, on_round
        self.trainer = None  # set once the trainer exists (it needs this callback first)
        self.process = PartialState()
        self.seconds: dict[str, float] = {}
        self.round_began = self.update_began = 0.0

    # ------------------------------------------------------------------ trainer hooks

    def on_train_begin(self, args, state, control, **kwargs):
        if policy_is_sharded(self.trainer) and self.rounds.kl_enabled and self.rounds.cfg.kl_samples:
            self.rounds.kl_enabled = False
            log.info("online/kl_to_reference is skipped: the policy is sharded, and a forward on the main "
                     "process alone would wait forever for the other ranks")

    def on_step_begin(self, args, state, control, **kwargs):
        index = round_of_step(self.plan, state.global_step)
        if index != self.feed.round_index:
            self.finish_round()
            self.begin_round(index)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.feed.end_step and "update" not in self.seconds:
            self.seconds["update"] = time.perf_counter() - self.update_began

    def on_train_end(self, args, state, control, **kwargs):
        self.finish_round()

    # ------------------------------------------------------------------ one round

    def begin_round(self, index: int) -> None:
        start, end = self.plan[index]
        self.round_began = time.perf_counter()
        if self.restored is not None and self.restored.round_index == index:
            rows, stats, self.seconds = self.restored.rows, None, {}  # resumed mid-round: the same rows
            log.info("round %d: continuing with the %d rows of the checkpoint", index, len(rows))
        else:
            rows, stats, self.seconds = self.build_everywhere(index, start, end)
        self.restored = None
        clock = time.perf_counter()
        tokenized = self.trainer.tokenize_rows(rows, f"round {index}")
        self.feed.install(index, start, end, rows, tokenized)
        self.seconds["tokenize"] = time.perf_counter() - clock
        self.trainer.set_round_stats(stats)
        self.update_began = time.perf_counter()

    def finish_round(self) -> None:
        if self.feed.round_index is None or "round" in self.seconds:
            return
        self.trainer.flush_round_stats()
        self.seconds["round"] = time.perf_counter() - self.round_began
        if self.on_round is not None:
            self.on_round(self.feed.round_index, dict(self.seconds))

    def build_everywhere(self, index: int, start: int, end: int) -> tuple[list[dict], dict, dict]:
        """Sync the engine and build the round on the main process; every rank gets the result."""
        writer = self.weights_writer(start)
        result = None
        if self.process.is_main_process:
            try:
                result = self.build_on_main(index, start, end, writer)
            except Exception as err:
                if self.process.num_processes == 1:
                    raise
                from posttrain.cli import USER_ERRORS

                lines = str(err).strip().splitlines()
                self.broadcast({"error": f"{type(err).__name__}: {lines[0] if lines else ''}".rstrip(": "),
                                "user_error": isinstance(err, USER_ERRORS)})
                raise
        result = self.broadcast(result)
        if "error" in result:  # one line here (posttrain/cli.py); the main process reports the cause
            where = "" if result["user_error"] else " (its traceback is on the main process)"
            raise FailedOnAnotherRank(f"round {index} failed on the main process: {result['error']}{where}",
                                      result["user_error"])
        return result["rows"], result["stats"], result["seconds"]

    def build_on_main(self, index: int, start: int, end: int, writer) -> dict:
        seconds = {}
        if self.engine is not None:
            synced = self.engine.stats.sync_seconds
            clock = time.perf_counter()
            self.engine.sync(writer, start)
            seconds["engine_wait"] = time.perf_counter() - clock - (self.engine.stats.sync_seconds - synced)
            seconds["sync"] = self.engine.stats.sync_seconds - synced
        data = self.rounds.build(index, (end - start) * self.feed.rows_per_step)
        write_round_log(self.output_dir, index, data)
        log.info("round %d: %s", index, brief(data))
        return {"rows": data.rows, "stats": data.stats, "seconds": {**seconds, **data.seconds}}

    def weights_writer(self, step: int):
        """The policy of `step` for the engine. Sharded: every rank joins the gather of the full weights
        now (only the main process keeps them), whether or not the engine turns out to need them."""
        if self.rounds.cfg.backend != "vllm" or not self.rounds.cfg.enabled:
            return None
        from posttrain.online.weights import PolicyWeights

        trainer, state = self.trainer, None
        if policy_is_sharded(trainer) and step != self.engine_step:
            state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        return PolicyWeights(trainer.accelerator.unwrap_model(trainer.model), state)

    def broadcast(self, value):
        if self.process.num_processes == 1:
            return value
        from accelerate.utils import broadcast_object_list

        box = [value]
        broadcast_object_list(box, from_process=0)
        return box[0]


def brief(data) -> str:
    keys = ("online/pairs", "online/pairs_skipped", "mix/online_pairs", "mix/offline_pairs", "reward/mean",
            "online/kl_to_reference")
    parts = [f"{k.split('/')[-1]}={data.stats[k]:.4g}" for k in keys if k in data.stats]
    parts += [f"{k}={v:.1f}s" for k, v in data.seconds.items() if v]
    return " ".join(parts)
