"""Refreshing the reward model between online rounds, smoothed by an EMA of its weights.

When `rm_refresh.enabled` (DPO with a classifier reward), each online round first re-fits a live copy of the classifier
RM for a few Bradley–Terry steps (−log σ(r_chosen − r_rejected), the RewardTrainer loss) on
the next slice of preference pairs (fresh ones: the cursor moves through the pairs, so a round trains on pairs the
previous round did not), then moves the scoring RM toward the re-fit one by one EMA update,

    θ̄_r = d·θ̄_{r−1} + (1 − d)·θ_r      (θ_r: the live weights after round r's steps),

and scores the round's samples with θ̄_r. The EMA runs over re-fits, not over the steps inside one:
each weight of the scoring RM lies between the RM that scored the last round and the re-fit one,
so the policy chases a slowly moving reward, not the latest (and most exploitable) one.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

from datagen.config_loader import option
from posttrain.ema import WeightEMA

if TYPE_CHECKING:
    from rewards.reward_model import ClassifierScorer


@dataclass
class RefreshConfig:
    """Retrain the classifier reward model between online rounds (off by default)."""

    enabled: bool = option(False, "refresh the RM before each online round")
    dataset: str = option("", "preference pairs to refresh on (DIR, file, hub id); \"\" = the run's offline pairs")
    steps_per_round: int = option(2, "Bradley–Terry steps per round")
    batch_size: int = option(4, "pairs per step")
    learning_rate: float = option(1e-5, "AdamW learning rate of the refresh steps")
    ema_decay: float = option(0.9, "scoring uses θ̄ ← d·θ̄ + (1 − d)·θ, one update per round toward the re-fit weights θ")

    def __post_init__(self) -> None:
        if self.steps_per_round < 1 or self.batch_size < 1:
            raise ValueError("steps_per_round and batch_size must be >= 1")


class RewardRefresher:
    """Trains a live copy of `scorer.model`; after each round the scorer holds the EMA weights."""

    def __init__(self, scorer: "ClassifierScorer", pairs: list[dict], cfg: RefreshConfig) -> None:
        import torch

        if not pairs:
            raise ValueError("reward refresh needs at least one preference pair")
        self.scorer = scorer
        self.pairs = pairs
        self.cfg = cfg
        self.live = copy.deepcopy(scorer.model).train()
        self.optimizer = torch.optim.AdamW(self.live.parameters(), lr=cfg.learning_rate)
        self.ema = WeightEMA(self.live, cfg.ema_decay)
        self.cursor = 0  # next pair to train on; cycles through `pairs`

    def _next_batch(self) -> list[dict]:
        batch = [self.pairs[(self.cursor + i) % len(self.pairs)] for i in range(self.cfg.batch_size)]
        self.cursor = (self.cursor + self.cfg.batch_size) % len(self.pairs)
        return batch

    def refresh(self) -> dict[str, float]:
        import torch
        import torch.nn.functional as F

        losses, accuracies = [], []
        for _ in range(self.cfg.steps_per_round):
            batch = self._next_batch()
            prompts = [p["prompt"] for p in batch] * 2
            answers = [p["chosen"][0]["content"] for p in batch] + [p["rejected"][0]["content"] for p in batch]
            chosen, rejected = self.scorer.rewards(self.live, prompts, answers).chunk(2)
            loss = -F.logsigmoid(chosen - rejected).mean()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"reward-model refresh loss is {loss.item()}: check the refresh pairs "
                                         "and lower rm_refresh.learning_rate")
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad()
            losses.append(loss.item())
            accuracies.append((chosen > rejected).float().mean().item())
        self.ema.update(self.live)  # once per round: θ̄ moves toward the re-fit RM
        self.ema.copy_to(self.scorer.model)
        return {"rm_refresh/loss": sum(losses) / len(losses),
                "rm_refresh/accuracy": sum(accuracies) / len(accuracies),
                "rm_refresh/ema_updates": float(self.ema.num_updates)}

    def state_dict(self) -> dict:
        return {"live": self.live.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": self.ema.state_dict(), "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.live.load_state_dict(state["live"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.cursor = state["cursor"]
        self.ema.copy_to(self.scorer.model)
