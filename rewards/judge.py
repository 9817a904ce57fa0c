"""The datagen critique judge as a reward: the mean of its 1–4 aspect scores.

Prompt, sampling and parser are datagen/stages/critique.py's own, so the data filter and the DPO reward
judge alike. The prompt's last user turn is the question; an unreadable or failed reply is NaN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from datagen.config_loader import option
from datagen.stages.critique import CritiqueConfig, critique_requests, read_critique
from datagen.inference.registry import ModelConfig
from rewards.base import check_lengths, last_user_turn


@dataclass
class JudgeConfig:
    """The judge model and the critique settings it grades with (datagen's CritiqueConfig; its
    keep/reject thresholds do not apply to rewards)."""

    model: ModelConfig = option(factory=ModelConfig, help="the judge: any datagen.inference backend")
    critique: CritiqueConfig = option(factory=CritiqueConfig, help="prompt style, sampling and parsing")


class CritiqueJudgeScorer:
    def __init__(self, llm, cfg: JudgeConfig | None = None) -> None:
        self.llm = llm
        self.cfg = cfg or JudgeConfig()
        self.name = f"critique:{llm.identity}"

    def score(self, prompts, responses, references=None) -> list[float]:
        check_lengths(prompts, responses, references)
        cfg = self.cfg.critique
        requests = critique_requests([(last_user_turn(p), r) for p, r in zip(prompts, responses)], cfg)
        scores = []
        for completion in self.llm.generate(requests):
            mean = read_critique(completion.text, cfg).mean if completion.ok else None
            scores.append(math.nan if mean is None else mean)
        return scores
