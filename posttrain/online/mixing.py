"""Mixing a round's online pairs with offline ones at `online.ratio`, in a seeded order that persists
across rounds and resumes. A shortfall of online pairs is filled with offline ones and logged."""
from __future__ import annotations

import math
import random

from posttrain.data import DataError


class Cursor:
    """Items in a seeded order, reshuffled every pass; the position survives resumes."""

    def __init__(self, items: list, seed: int) -> None:
        self.items = items
        self.seed = seed
        self.epoch = 0
        self.position = 0

    def _order(self) -> list[int]:
        order = list(range(len(self.items)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, n: int) -> list:
        if not self.items:
            return []
        taken, order = [], self._order()
        while len(taken) < n:
            if self.position == len(order):
                self.epoch, self.position = self.epoch + 1, 0
                order = self._order()
            taken.append(self.items[order[self.position]])
            self.position += 1
        return taken

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


TRAIN_FIELDS = ("prompt", "chosen", "rejected")


def online_share(ratio: float, total: int) -> int:
    """ratio·total rounded half up (Python's round() would send 0.5 to 0)."""
    return math.floor(ratio * total + 0.5)


def mix_pairs(online: list[dict], offline: Cursor, total: int, ratio: float, seed: int) -> tuple[list[dict], dict]:
    """`total` training rows: ratio·total (rounded half up) online pairs, the rest offline, shuffled.

    Too few online pairs: offline pairs fill the gap (logged as the shortfall). No offline pairs
    at all: online pairs repeat. Only TRL's columns are kept, tagged with their `source`."""
    target = online_share(ratio, total)
    n_online = min(target, len(online))
    chosen_online = online[:n_online]
    if not offline.items and n_online < total:
        if not online:
            raise DataError("this round has no training pairs: no offline pairs and every online prompt was "
                             "skipped (see online/skipped_* in the log); lower online.margin or add offline data")
        chosen_online = [online[i % len(online)] for i in range(total)]
        n_online = total
    rows = [{**{k: p[k] for k in TRAIN_FIELDS}, "source": "online"} for p in chosen_online]
    rows += [{**{k: p[k] for k in TRAIN_FIELDS}, "source": "offline"} for p in offline.take(total - n_online)]
    random.Random(seed).shuffle(rows)
    stats = {"mix/online_pairs": float(n_online), "mix/offline_pairs": float(total - n_online),
             "mix/online_ratio": n_online / total if total else 0.0,
             "mix/online_shortfall": float(max(0, target - len(online)))}
    return rows, stats
