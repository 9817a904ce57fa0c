"""`evaluate(cfg)`: answer every eval set with the model (and the baseline), score, judge, report.

Order of work: check roles, tasks and sets (bad input fails before any model starts); load the
reward model; generate every answer of the model, then of the baseline (one batch per model, so a
server stays busy); score math and code; judge every pair in both orders; write the outputs.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from datagen.readers import eval_sets
from datagen.config_loader import ConfigError, to_dict
from datagen.inference import registry
from pipelines.evaluation import model_roles, report, stats, tasks
from pipelines.evaluation.eval_config import EvalConfig
from rewards import pairwise

log = logging.getLogger("synthpost.eval")


def load_reward_scorer(name: str):
    """A sequence-classification reward model by directory, alias or hub id (ValueError if it cannot load)."""
    from rewards.scoring import RewardConfig, build_scorer

    return build_scorer(RewardConfig(kind="classifier", model=name))


def evaluate(cfg: EvalConfig, reward_scorer: Any = None, stop_servers: bool = True) -> dict[str, Any]:
    """Run the chosen tasks and write results.json, items.jsonl and report.html under `cfg.output`.

    `reward_scorer`: any object with `score(prompts, responses, references) -> list[float]`
    (default: `cfg.reward` loaded as a classifier). Returns the results (what results.json holds).
    Servers started here are stopped at the end unless `stop_servers` is False."""
    started = time.monotonic()
    chosen = cfg.chosen_tasks()
    roles = {"model": model_roles.model_config(cfg, cfg.model)}
    if cfg.baseline:
        roles["baseline"] = model_roles.model_config(cfg, cfg.baseline)
    if "judge" in chosen:
        roles["judge"] = model_roles.model_config(cfg, cfg.judge)
    sets = {name: eval_sets.load(name, cfg.limit) for name in ("math", "code") if name in chosen}
    if {"judge", "reward"} & set(chosen):
        sets["open"] = eval_sets.load("judge", cfg.limit)
    if "reward" in chosen and reward_scorer is None:
        reward_scorer = load_reward_scorer(cfg.reward)
    try:
        answers = {"model": answer_all(cfg, roles["model"], sets, "model")}
        if roles.get("baseline") == roles["model"]:
            log.info("the baseline is the model itself: its answers are reused (an A/A comparison)")
            answers["baseline"] = answers["model"]
        elif "baseline" in roles:
            answers["baseline"] = answer_all(cfg, roles["baseline"], sets, "baseline")
        results, rows = score_all(cfg, chosen, sets, answers, roles, reward_scorer)
    finally:
        if stop_servers:
            registry.shutdown_all()
    results = {"roles": {role: cfg_name for role, cfg_name in
                         (("model", cfg.model), ("baseline", cfg.baseline), ("judge", cfg.judge),
                          ("reward", cfg.reward if "reward" in chosen else "")) if cfg_name},
               "tasks": results, "limit": cfg.limit, "config": to_dict(cfg),
               "wall_seconds": round(time.monotonic() - started, 1)}
    report.write_all(cfg.output, results, rows)
    return results


def answer_all(cfg: EvalConfig, model, sets: dict[str, list[dict]], side: str) -> dict[str, list]:
    """Every answer of one model, all sets in one batch; {set name: completions}."""
    spans, requests = {}, []
    for name, items in sets.items():
        spans[name] = (len(requests), len(requests) + len(items))
        requests += tasks.REQUESTS[name](items, cfg.answers)
    completions = model_roles.generate(model, requests, f"answers of the {side} ({model.name})")
    return {name: completions[a:b] for name, (a, b) in spans.items()}


def score_all(cfg, chosen, sets, answers, roles, reward_scorer) -> tuple[dict, list[dict]]:
    results, rows = {}, []
    if "math" in chosen:
        results["math"] = verifiable(cfg, "math", sets["math"], answers, "correct", rows)
        log.info("math scored")
    if "code" in chosen:
        results["code"] = verifiable(cfg, "code", sets["code"], answers, "passed", rows)
        log.info("code run against HumanEval's tests")
    if "judge" in chosen:
        results["judge"] = judge_task(cfg, sets["open"], answers, roles["judge"], rows)
    if "reward" in chosen:
        results["reward"] = reward_task(cfg, sets["open"], answers, reward_scorer, rows)
    return results, rows


def _stats_kw(cfg: EvalConfig) -> dict:
    return {"samples": cfg.stats.bootstrap_samples, "seed": cfg.stats.seed, "confidence": cfg.stats.confidence}


def verifiable(cfg: EvalConfig, task: str, items: list[dict], answers: dict, key: str, rows: list) -> dict:
    """Accuracy (pass@1 for code) per side, per level for math, and the paired difference."""
    scored = {side: (tasks.score_math(items, answers[side][task]) if task == "math" else
                     tasks.score_code(items, answers[side][task], cfg.code)) for side in answers}
    out: dict[str, Any] = {}
    for side, per_item in scored.items():
        outcomes = [r[key] for r in per_item]
        out[side] = stats.accuracy(outcomes, cfg.stats.confidence).to_dict()
        out[f"{side}_failed_calls"] = sum(1 for r in per_item if "error" in r and not r["answer"])
        if task == "math":
            out[f"{side}_by_level"] = {level: stats.accuracy(v, cfg.stats.confidence).to_dict()
                                       for level, v in tasks.by_level(items, outcomes).items()}
    if "baseline" in scored:
        mine, theirs = [r[key] for r in scored["model"]], [r[key] for r in scored["baseline"]]
        out["difference"] = stats.paired_difference(mine, theirs, **_stats_kw(cfg)).to_dict()
        out["detectable"] = stats.detectable_difference(mine, theirs, cfg.stats.confidence, cfg.stats.power,
                                                        cfg.stats.expected_gain or None)
    reference = out.get("baseline", out["model"])
    if reference["value"] is not None:  # what a later comparison at this n could detect, before its data
        p = reference["value"]
        out["planned"] = stats.planned_detectable_difference(reference["n"], p, p, cfg.stats.confidence,
                                                             cfg.stats.power)
    for i, item in enumerate(items):
        row = {"task": task, "id": item["id"], "prompt": item.get("question", item.get("prompt")),
               "reference": item.get("answer", item.get("entry_point"))}
        if "level" in item:
            row["level"] = item["level"]
        for side, per_item in scored.items():
            row.update({f"{k}_{side}": v for k, v in per_item[i].items()})
        rows.append(row)
    return out


def judge_task(cfg: EvalConfig, items: list[dict], answers: dict, judge_model, rows: list) -> dict:
    """Blind pairwise judging of model vs baseline, both orders; win rate, LC win rate, bias, consistency.

    A pair whose answer failed on either side (the call returned no completion) is left out and
    counted, as math leaves a failed answer out of its accuracy: an empty answer is not a loss. The
    win rate is marked `signal: false` when the judge's order consistency or position bias shows it
    cannot tell the answers apart (`stats.judge_signal`); the figures stay in the results."""
    done = {side: [c.ok for c in answers[side]["open"]] for side in ("model", "baseline")}
    kept = [i for i in range(len(items)) if done["model"][i] and done["baseline"][i]]
    answer_m = [tasks.answer_text(c) for c in answers["model"]["open"]]
    answer_b = [tasks.answer_text(c) for c in answers["baseline"]["open"]]
    instructions = [items[i]["instruction"] for i in kept]
    pairs_m, pairs_b = [answer_m[i] for i in kept], [answer_b[i] for i in kept]
    completions = model_roles.generate(judge_model, pairwise.both_orders(cfg.pairwise, instructions, pairs_m, pairs_b),
                                       f"pairwise verdicts ({judge_model.name}, both orders)") if kept else []
    judgements = pairwise.collect(completions)
    by_item = dict(zip(kept, judgements))
    ab = [j.score_ab for j in judgements]
    ba = [j.score_ba for j in judgements]
    length_diff = [len(m) - len(b) for m, b in zip(pairs_m, pairs_b)]
    kw = _stats_kw(cfg)
    lc_kw = {**kw, "samples": max(1, kw["samples"] // 2)}
    for i, (item, m, b) in enumerate(zip(items, answer_m, answer_b)):
        row = {"task": "judge", "id": item["id"], "domain": item["domain"], "lang": item.get("lang", ""),
               "prompt": item["instruction"], "answer_model": m, "answer_baseline": b,
               "length_model": len(m), "length_baseline": len(b)}
        j = by_item.get(i)
        if j is None:
            failed = [side for side in ("model", "baseline") if not done[side][i]]
            row.update(left_out="failed answer: " + " and ".join(failed),
                       error={side: answers[side]["open"][i].error for side in failed})
        else:
            row.update(verdict_ab=j.verdict_ab, verdict_ba=j.verdict_ba, score_ab=j.score_ab, score_ba=j.score_ba,
                       reply_ab=j.reply_ab, reply_ba=j.reply_ba)
        rows.append(row)
    bias = stats.position_bias(ab, ba, **kw).to_dict()
    consistency = stats.order_consistency(ab, ba, cfg.stats.confidence).to_dict()
    signal, why = stats.judge_signal(consistency["value"], bias["value"], cfg.stats.min_order_consistency,
                                     cfg.stats.max_position_bias)
    return {
        "judge": judge_model.name,
        "win_rate": stats.win_rate(ab, ba, **kw).to_dict(),
        "length_controlled_win_rate": stats.length_controlled_win_rate(ab, ba, length_diff, **lc_kw).to_dict(),
        "position_bias": bias,
        "order_consistency": consistency,
        "signal": signal,
        "no_signal_reason": why,
        "signal_rule": {"min_order_consistency": cfg.stats.min_order_consistency,
                        "max_position_bias": cfg.stats.max_position_bias},
        "pairs": {"total": len(items), "judged": len(kept), "left_out": len(items) - len(kept),
                  "failed_answers": {side: done[side].count(False) for side in done}},
        "verdicts": {"judged": 2 * len(judgements), "unreadable": sum(v is None for v in ab + ba),
                     "model_first": outcome_counts(ab), "model_second": outcome_counts(ba)},
        "mean_length": {"model": sum(map(len, pairs_m)) / len(kept) if kept else None,
                        "baseline": sum(map(len, pairs_b)) / len(kept) if kept else None},
    }


def outcome_counts(scores: list) -> dict[str, int]:
    """Model's outcomes in one order: win / tie / loss / unreadable."""
    names = {1.0: "win", 0.5: "tie", 0.0: "loss", None: "unreadable"}
    return {name: sum(1 for s in scores if s == value) for value, name in names.items()}


def reward_task(cfg: EvalConfig, items: list[dict], answers: dict, scorer, rows: list) -> dict:
    """Mean reward of the model's answers (and the baseline's) on the same instructions."""
    prompts = [item["instruction"] for item in items]
    texts = {side: [tasks.answer_text(c) for c in answers[side]["open"]] for side in answers}
    rewards = {}
    for side in texts:  # a failed answer is left out (NaN), as math does, not scored as ""
        ok = [i for i, c in enumerate(answers[side]["open"]) if c.ok]
        scores = scorer.score([prompts[i] for i in ok], [texts[side][i] for i in ok], None) if ok else []
        rewards[side] = [float("nan")] * len(prompts)
        for i, v in zip(ok, scores):
            rewards[side][i] = float(v)
    kw = _stats_kw(cfg)
    out: dict[str, Any] = {"scorer": getattr(scorer, "name", type(scorer).__name__)}
    for side, values in rewards.items():
        out[f"{side}_mean"] = stats.bootstrap_mean(values, **kw).to_dict()
    if "baseline" in rewards:
        m, b = rewards["model"], rewards["baseline"]
        out["difference"] = stats.paired_difference(m, b, **kw).to_dict()
        wins = [float("nan") if x != x or y != y else (1.0 if x > y else 0.5 if x == y else 0.0) for x, y in zip(m, b)]
        out["win_rate"] = stats.bootstrap_mean(wins, **kw).to_dict()
    for i, item in enumerate(items):
        row = {"task": "reward", "id": item["id"], "prompt": prompts[i]}
        for side in rewards:
            row.update({f"answer_{side}": texts[side][i], f"reward_{side}": rewards[side][i]})
        rows.append(row)
    if not any(v == v for v in rewards["model"]):
        raise ConfigError(f"reward: the scorer {out['scorer']} scored none of the answers")
    return out
