"""How each round's pairs reach one long-lived DPO trainer: slots.

The trainer is built once, on a dataset of *slot numbers* 0 … max_steps × rows_per_step − 1, read in
order (the round's rows are already shuffled by mixing). A slot names "row i of the round that
covers its step": slot s belongs to step s // rows_per_step, so a round of steps [start, end)
owns slots [start × rows_per_step, end × rows_per_step) — under DDP too, where accelerate hands
rank p every P-th batch of the same ordered stream, so the ranks of one step share one round.

Why slots and not the rows themselves: accelerate's DataLoaderShard fetches one batch ahead and
the Trainer pulls all micro-batches of a step at once (`get_batch_samples`), so rows fetched from
the dataset would be read before the round that owns them exists. A slot is a number; it becomes a
row only in `training_step`, after the round-boundary callback (posttrain/online/round_callback.py) has built
the round on every rank. A slot outside the installed round is an error, never a stale row.

Resume: the Trainer skips the slots of the steps already trained (`ignore_data_skip` off), and
the checkpoint carries the round in progress (its rows), so a run resumed mid-round trains the
same rows it would have trained uninterrupted.
"""
from __future__ import annotations

from dataclasses import dataclass, field


def slot_dataset(total: int):
    from datasets import Dataset

    return Dataset.from_dict({"slot": list(range(total))})


@dataclass
class RoundFeed:
    """The round the trainer is on: its raw rows (kept for checkpoints) and tokenized rows."""

    rows_per_step: int
    round_index: int | None = None
    start_step: int = 0
    end_step: int = 0
    raw_rows: list[dict] = field(default_factory=list)
    tokenized: list[dict] = field(default_factory=list)

    def install(self, round_index: int, start_step: int, end_step: int, raw_rows: list[dict],
                tokenized: list[dict]) -> None:
        if not tokenized:
            raise ValueError(f"round {round_index} has no trainable rows (every pair was longer than max_length)")
        self.round_index, self.start_step, self.end_step = round_index, start_step, end_step
        self.raw_rows, self.tokenized = raw_rows, tokenized

    def rows_for(self, slots: list[int]) -> list[dict]:
        first, last = self.start_step * self.rows_per_step, self.end_step * self.rows_per_step
        rows = []
        for slot in slots:
            if not first <= slot < last:
                raise RuntimeError(f"batch slot {slot} (step {slot // self.rows_per_step}) is not in round "
                                   f"{self.round_index} (steps {self.start_step}-{self.end_step - 1}): the round "
                                   "must be built before its first step")
            # rows TRL dropped as too long are replaced by the round's next ones, round-robin
            rows.append(self.tokenized[(slot - first) % len(self.tokenized)])
        return rows
