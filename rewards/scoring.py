"""The scoring interface and the config that picks a scorer.

A scorer maps a batch of (prompt, response) — plus, for verifiers, a gold reference — to one
float per item: `scorer.score(prompts, responses, references) -> list[float]`. NaN means "could
not score" (an unreadable judge reply, no gold answer, a non-finite reward-model output);
callers count NaN items and never train on them.

`build_scorer(RewardConfig)`: `classifier` (a reward model, rewards/reward_model.py), `critique`
(the datagen critique judge, rewards/judge.py) or `math` (math-verify, rewards/math_verifier.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from datagen.config_loader import option
from rewards.base import RewardScorer
from rewards.judge import JudgeConfig


@dataclass
class RewardConfig:
    """Which reward scores the policy's samples."""

    kind: Literal["classifier", "critique", "math"] = option(
        "classifier", "classifier: a reward model; critique: an LLM judge's mean aspect score; math: math-verify "
        "against the prompt's reference answer")
    model: str = option("", "classifier: reward-model directory (posttrain/rm.py output), alias or hub id")
    head_seed: int = option(0, "classifier from a causal-LM checkpoint: seed of its new, untrained score head")
    batch_size: int = option(8, "classifier: sequences per forward pass")
    max_length: int = option(1024, "classifier: tokens per (prompt, answer); longer inputs keep their end")
    dtype: Literal["float32", "bfloat16", "float16"] = option("float32", "classifier: weights dtype")
    judge: JudgeConfig = option(factory=JudgeConfig, help="critique: the judge model and its critique settings")


def build_scorer(cfg: RewardConfig) -> RewardScorer:
    if cfg.kind == "classifier":
        from rewards.reward_model import ClassifierScorer

        return ClassifierScorer.from_pretrained(cfg.model, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                                head_seed=cfg.head_seed, dtype=cfg.dtype)
    if cfg.kind == "critique":
        from datagen.inference.registry import get_llm
        from rewards.judge import CritiqueJudgeScorer

        return CritiqueJudgeScorer(get_llm(cfg.judge.model), cfg.judge)
    if cfg.kind == "math":
        from rewards.math_verifier import MathVerifier

        return MathVerifier()
    raise ValueError(f"unknown reward kind {cfg.kind!r} (classifier, critique, math)")
