"""Scoring the sampled answers and picking each prompt's best and worst, with every skip counted.

A prompt is skipped, and the skip counted by reason, when fewer than two answers could be scored
(`too_few_scored`), all scores tie (`all_tied`), the two texts are the same (`identical_responses`)
or the normalised best − worst margin is below `margin` (`below_margin`). Empty answers and NaN
rewards are counted per answer.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from rewards.normalize import RewardNormalizer

Messages = list[dict[str, str]]


def score_answers(scorer, prompts: Sequence[Messages], references: Sequence[str],
                  answers: Sequence[Sequence[str]]) -> list[list[float]]:
    """The scorer's reward for every answer, shaped like `answers`; empty answers get NaN unscored."""
    flat = [(i, j) for i, group in enumerate(answers) for j, text in enumerate(group) if text.strip()]
    scores = [[math.nan] * len(group) for group in answers]
    if not flat:
        return scores
    values = scorer.score([prompts[i] for i, _ in flat], [answers[i][j] for i, j in flat],
                          [references[i] for i, _ in flat])
    for (i, j), value in zip(flat, values):
        scores[i][j] = float(value) if value is not None and math.isfinite(value) else math.nan
    return scores


@dataclass
class Selection:
    """The pairs of one round and what happened to the rest."""

    pairs: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # prompt-level skip reason → prompts
    answers: Counter = field(default_factory=Counter)  # answer-level: total, empty, nan_reward
    records: list[dict] = field(default_factory=list)  # every prompt's answers, scores and outcome (for the log)


def select_pairs(prompts: Sequence[Messages], references: Sequence[str], answers: Sequence[Sequence[str]],
                 raw: Sequence[Sequence[float]], normalized: Sequence[Sequence[float]], margin: float) -> Selection:
    """Best (argmax) and worst (argmin) answer per prompt, unless the prompt is skipped."""
    result = Selection()
    for prompt, reference, texts, raws, norms in zip(prompts, references, answers, raw, normalized):
        result.answers["total"] += len(texts)
        result.answers["empty"] += sum(1 for t in texts if not t.strip())
        result.answers["nan_reward"] += sum(1 for t, s in zip(texts, raws) if t.strip() and not math.isfinite(s))
        valid = [j for j, s in enumerate(raws) if math.isfinite(s) and texts[j].strip()]
        outcome, pair = "paired", None
        if len(valid) < 2:
            outcome = "too_few_scored"
        else:
            best = max(valid, key=lambda j: raws[j])  # first maximum on ties
            worst = min(valid, key=lambda j: raws[j])
            if raws[best] == raws[worst]:
                outcome = "all_tied"
            elif texts[best].strip() == texts[worst].strip():
                outcome = "identical_responses"
            elif norms[best] - norms[worst] < margin:
                outcome = "below_margin"
            else:
                pair = {"prompt": list(prompt), "chosen": [{"role": "assistant", "content": texts[best]}],
                        "rejected": [{"role": "assistant", "content": texts[worst]}],
                        "score_chosen": raws[best], "score_rejected": raws[worst],
                        "margin": norms[best] - norms[worst]}
        if pair is None:
            result.skipped[outcome] += 1
        else:
            result.pairs.append(pair)
        record = {"prompt": list(prompt), "reference": reference, "answers": list(texts), "scores": list(raws),
                  "outcome": outcome}
        if pair is not None:
            record["picked"] = [best, worst]  # indices of chosen and rejected in `answers`
        result.records.append(record)
    return result


def reward_stats(raw: Sequence[Sequence[float]], selection: Selection, normalizer: RewardNormalizer) -> dict:
    """Reward statistics of one round, for the training log."""
    finite = [s for group in raw for s in group if math.isfinite(s)]
    stats: dict[str, float] = {
        "online/pairs": float(len(selection.pairs)),
        "online/pairs_skipped": float(sum(selection.skipped.values())),
        "online/answers": float(selection.answers["total"]),
        "online/answers_empty": float(selection.answers["empty"]),
        "online/answers_nan_reward": float(selection.answers["nan_reward"]),
        "reward/running_mean": normalizer.mean,
        "reward/running_std": normalizer.std,
    }
    stats.update({f"online/skipped_{reason}": float(n) for reason, n in selection.skipped.items()})
    prompts = len(selection.pairs) + sum(selection.skipped.values())
    if prompts:
        stats["online/skipped_share"] = sum(selection.skipped.values()) / prompts
    lengths = [len(a) for r in selection.records for a in r["answers"] if a.strip()]
    if lengths:
        stats["online/answer_chars_mean"] = sum(lengths) / len(lengths)
    if finite:
        mean = sum(finite) / len(finite)
        stats.update({"reward/mean": mean, "reward/min": min(finite), "reward/max": max(finite),
                      "reward/std": math.sqrt(sum((s - mean) ** 2 for s in finite) / len(finite))})
    if selection.pairs:
        n = len(selection.pairs)
        stats.update({
            "reward/chosen_mean": sum(p["score_chosen"] for p in selection.pairs) / n,
            "reward/rejected_mean": sum(p["score_rejected"] for p in selection.pairs) / n,
            "reward/margin_mean": sum(p["score_chosen"] - p["score_rejected"] for p in selection.pairs) / n,
            "reward/normalized_margin_mean": sum(p["margin"] for p in selection.pairs) / n,
        })
    return stats


def gold_stats(gold: Sequence[Sequence[float]], selection: Selection) -> dict[str, float]:
    """The gold verifier's view of one round (logged only): the share of samples it finds right, and of
    the chosen and the rejected answers; each record gets its samples' gold scores."""
    for record, scores in zip(selection.records, gold):
        record["gold"] = list(scores)
    finite = [s for group in gold for s in group if math.isfinite(s)]
    stats: dict[str, float] = {"gold/scored": float(len(finite))}
    if finite:
        stats["gold/accuracy"] = sum(finite) / len(finite)
    for side, k in (("chosen", 0), ("rejected", 1)):
        values = [r["gold"][r["picked"][k]] for r in selection.records if "picked" in r]
        values = [v for v in values if math.isfinite(v)]
        if values:
            stats[f"gold/{side}_accuracy"] = sum(values) / len(values)
    return stats
