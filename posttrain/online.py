"""Online rounds for one-stage DPO: best-and-worst-of-N pairs from the current policy.

Each round, before a phase of DPO training (see posttrain/dpo.py):

1. **sample** — the current policy answers `prompts_per_round` prompts N times each (in-process
   `generate`, or, with `backend: vllm`, a vLLM server on the last round's checkpoint);
2. **score** — the reward scorer (rewards/scoring.py) rates every answer; the running reward
   normaliser (rewards/ema.py) is updated and normalises the scores;
3. **select** — per prompt, the highest-scored answer becomes `chosen` and the lowest `rejected`;
   a prompt is skipped, and the skip counted by reason, when fewer than two answers could be
   scored (`too_few_scored`), all scores tie (`all_tied`), the two texts are the same
   (`identical_responses`) or the normalised best − worst margin is below `margin`
   (`below_margin`). Empty answers and NaN rewards are counted per answer;
4. **mix** — the round's training rows are `ratio` online pairs and the rest offline pairs
   (drawn in a seeded order that persists across rounds). A shortfall of online pairs is filled
   with offline ones and logged (`mix/online_shortfall`), so every round trains its full steps.

Stats per round (logged and written to `rounds/round-NNN.jsonl`) include the raw and normalised
reward statistics, chosen/rejected reward means and margins, skip counts and a Monte-Carlo
estimate of KL(policy ‖ reference) on the sampled answers.
"""
from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal, Sequence

from datagen.inference.registry import ModelConfig
from posttrain.data import DataError
from rewards.ema import RewardNormalizer

Messages = list[dict[str, str]]


@dataclass
class OnlineConfig:
    """Online best/worst-of-N pairs, sampled between DPO training phases."""

    enabled: bool = True  # false: offline pairs only (ratio is ignored)
    ratio: float = 0.5  # share of each round's training pairs that come from online sampling
    steps_per_round: int = 2  # optimizer steps trained on one round's pairs before sampling again
    num_samples: int = 4  # N answers sampled per prompt (best and worst become a pair)
    prompts_per_round: int = 0  # prompts sampled per round; 0 = as many as online pairs the round needs
    max_new_tokens: int = 64  # per sampled answer
    temperature: float = 1.0  # sampling temperature (diversity among the N answers)
    top_p: float = 1.0  # nucleus sampling
    margin: float = 0.5  # skip a prompt when (best − worst) / running reward std is below this
    normalizer_momentum: float = 0.9  # β of the EMA moments behind the running reward mean/std
    prompts: str = ""  # prompt dataset (`prompt` or `messages` column); "" = the offline pairs' prompts
    prompts_view: str = "dpo"  # config of the prompt dataset
    backend: Literal["transformers", "vllm"] = "transformers"  # vllm: a server on each round's policy checkpoint
    vllm: ModelConfig = field(default_factory=lambda: ModelConfig(backend="vllm"))  # server knobs; `model` is set per round
    generation_batch_size: int = 8  # prompts per generate() call (transformers backend)
    kl_samples: int = 8  # sampled answers used to estimate KL(policy ‖ reference) per round; 0 = off

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {self.ratio}")
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 (best and worst of N), got {self.num_samples}")
        if self.steps_per_round < 1:
            raise ValueError(f"steps_per_round must be >= 1, got {self.steps_per_round}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")


# --------------------------------------------------------------------------- sampling


def sample_with_transformers(model, tokenizer, prompts: Sequence[Messages], cfg: OnlineConfig,
                             seed: int) -> list[list[str]]:
    """N answers per prompt from the in-process policy (eval mode, no grad).

    Router logits are switched off: no aux loss is needed here, and posttrain/moe.py's aux-loss
    hook cannot pair cached-decoding router logits with the full attention mask."""
    import torch

    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    torch.manual_seed(seed)
    answers: list[list[str]] = []
    try:
        for start in range(0, len(prompts), cfg.generation_batch_size):
            batch = prompts[start:start + cfg.generation_batch_size]
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            sampling = cfg.temperature > 0
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=cfg.max_new_tokens, do_sample=sampling,
                                     temperature=cfg.temperature if sampling else None,
                                     top_p=cfg.top_p if sampling else None, num_return_sequences=cfg.num_samples,
                                     pad_token_id=tokenizer.pad_token_id, output_router_logits=False)
            decoded = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            answers += [decoded[i * cfg.num_samples:(i + 1) * cfg.num_samples] for i in range(len(batch))]
    finally:
        model.train(was_training)
        tokenizer.padding_side = side
    return answers


def sample_with_llm(llm, prompts: Sequence[Messages], cfg: OnlineConfig, seed: int) -> list[list[str]]:
    """N answers per prompt from a datagen.inference backend (a vLLM server on the policy snapshot).

    A failed request gives no answers for its prompt (counted later as `too_few_scored`)."""
    from datagen.inference.base import Request, SamplingParams

    params = SamplingParams(n=cfg.num_samples, max_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            top_p=cfg.top_p, seed=seed)
    requests = [Request(messages=tuple((m["role"], m["content"]) for m in p), params=params) for p in prompts]
    return [list(c.texts) if c.ok else [] for c in llm.generate(requests)]


# --------------------------------------------------------------------------- scoring and selection


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
        result.records.append({"prompt": list(prompt), "reference": reference, "answers": list(texts),
                               "scores": list(raws), "outcome": outcome})
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


# --------------------------------------------------------------------------- KL to the reference


def completion_logprobs(model, tokenizer, prompts: Sequence[Messages], answers: Sequence[str]):
    """Sum of the answer tokens' log-probabilities under `model`, one value per (prompt, answer)."""
    import torch

    rows, starts = [], []
    for prompt, answer in zip(prompts, answers):
        prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                   return_dict=False)
        full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=True,
                                             return_dict=False)
        rows.append(full)
        starts.append(len(prompt_ids))
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=model.device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False,
                       output_router_logits=False).logits[:, :-1].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    positions = torch.arange(1, width, device=model.device)[None, :]
    in_answer = (positions >= torch.tensor(starts, device=model.device)[:, None]) & mask[:, 1:].bool()
    return (token_logps * in_answer).sum(dim=1)


def estimate_kl(policy, reference, tokenizer, prompts: Sequence[Messages], answers: Sequence[str]) -> float:
    """Monte-Carlo KL(policy ‖ reference) ≈ mean of log π(y|x) − log π_ref(y|x) over sampled y.

    Exact in expectation for y ~ π at temperature 1; with other sampling settings it is an estimate."""
    was_training = policy.training
    policy.eval()
    try:
        diff = completion_logprobs(policy, tokenizer, prompts, answers) - \
            completion_logprobs(reference, tokenizer, prompts, answers)
    finally:
        policy.train(was_training)
    return float(diff.mean())


# --------------------------------------------------------------------------- mixing


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


# --------------------------------------------------------------------------- one round, end to end


@dataclass
class RoundData:
    rows: list[dict]  # the round's training rows (prompt/chosen/rejected/source)
    stats: dict[str, float]  # for the training log
    records: list[dict]  # every sampled prompt: answers, scores, outcome (written to rounds/)
    seconds: dict[str, float]  # RM refresh / generation / scoring / selection / KL-estimate time


class OnlineRounds:
    """Builds each round's training rows; holds what must survive a resume (see `state_dict`)."""

    def __init__(self, cfg: OnlineConfig, policy, reference, tokenizer, scorer, offline_pairs: list[dict],
                 prompt_items: list[dict], seed: int, refresher=None, snapshot_root: str = "") -> None:
        self.cfg = cfg
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.scorer = scorer
        self.refresher = refresher  # rewards.refresh.RewardRefresher, when the RM is refreshed between rounds
        self.seed = seed
        self.snapshot_root = snapshot_root  # where vLLM rounds without a checkpoint snapshot the policy
        self.normalizer = RewardNormalizer(cfg.normalizer_momentum)
        self.offline = Cursor(offline_pairs, seed)
        self.prompts = Cursor(prompt_items, seed + 1)  # items: {"prompt": messages, "reference": str}
        self.skipped_total: Counter = Counter()

    def online_target(self, total: int) -> int:
        return online_share(self.cfg.ratio, total) if self.cfg.enabled else 0

    def build(self, round_index: int, total: int, policy_dir: str = "") -> RoundData:
        """The round's `total` training rows; `policy_dir` holds the current policy's weights on disk
        (the last checkpoint) for the vLLM backend, "" to snapshot the in-memory policy."""
        target = self.online_target(total)
        stats: dict[str, float] = {"online/round": float(round_index)}
        seconds = {"rm_refresh": 0.0, "generation": 0.0, "scoring": 0.0, "selection": 0.0, "kl": 0.0}
        selection = Selection()
        if target > 0 and self.prompts.items:
            selection = self._online_pairs(round_index, target, policy_dir, stats, seconds)
        rows, mix = mix_pairs(selection.pairs, self.offline, total, self.cfg.ratio if target else 0.0,
                              self.seed + round_index)
        stats.update(mix)
        stats.update({f"online/skipped_total_{r}": float(n) for r, n in self.skipped_total.items()})
        return RoundData(rows, stats, selection.records, seconds)

    def _online_pairs(self, round_index: int, target: int, policy_dir: str, stats: dict,
                      seconds: dict) -> Selection:
        """Refresh the RM (optional), sample, score, normalise, select, estimate KL; timing each."""
        import time

        clock = time.perf_counter
        if self.refresher is not None:
            start = clock()
            stats.update(self.refresher.refresh())
            seconds["rm_refresh"] = clock() - start
        items = self.prompts.take(self.cfg.prompts_per_round or target)
        prompts = [it["prompt"] for it in items]
        references = [it.get("reference", "") for it in items]
        start = clock()
        answers = self.sample(prompts, self.seed + round_index, policy_dir)
        seconds["generation"] = clock() - start
        start = clock()
        raw = score_answers(self.scorer, prompts, references, answers)
        seconds["scoring"] = clock() - start
        start = clock()
        self.normalizer.update(s for group in raw for s in group)
        normalized = [self.normalizer.normalize(group) for group in raw]
        selection = select_pairs(prompts, references, answers, raw, normalized, self.cfg.margin)
        self.skipped_total.update(selection.skipped)
        stats.update(reward_stats(raw, selection, self.normalizer))
        seconds["selection"] = clock() - start
        start = clock()
        stats.update(self.kl_stats(prompts, answers))
        seconds["kl"] = clock() - start
        return selection

    def sample(self, prompts: list[Messages], seed: int, policy_dir: str = "") -> list[list[str]]:
        if self.cfg.backend == "transformers":
            return sample_with_transformers(self.policy, self.tokenizer, prompts, self.cfg, seed)
        return self._sample_with_vllm(prompts, seed, policy_dir)

    def _sample_with_vllm(self, prompts: list[Messages], seed: int, policy_dir: str) -> list[list[str]]:
        """vLLM serves weights from disk: the last round's checkpoint (written by the Trainer, which
        gathers sharded weights), or a snapshot of the in-memory policy. One server per round."""
        import dataclasses
        import shutil
        import tempfile
        from pathlib import Path

        from datagen.inference.registry import get_llm

        snapshot = ""
        if not policy_dir:
            if self.snapshot_root:
                Path(self.snapshot_root).mkdir(parents=True, exist_ok=True)
            snapshot = policy_dir = tempfile.mkdtemp(prefix="policy-", dir=self.snapshot_root or None)
            self.policy.save_pretrained(snapshot)
            self.tokenizer.save_pretrained(snapshot)
        llm = get_llm(dataclasses.replace(self.cfg.vllm, model=policy_dir, served_name="policy"))
        try:
            return sample_with_llm(llm, prompts, self.cfg, seed)
        finally:
            llm.close()
            if snapshot:
                shutil.rmtree(snapshot, ignore_errors=True)

    def kl_stats(self, prompts: list[Messages], answers: list[list[str]]) -> dict[str, float]:
        if not self.cfg.kl_samples:
            return {}
        picked = [(p, a) for p, group in zip(prompts, answers) for a in group if a.strip()][:self.cfg.kl_samples]
        if not picked:
            return {}
        kl = estimate_kl(self.policy, self.reference, self.tokenizer, [p for p, _ in picked], [a for _, a in picked])
        return {"online/kl_to_reference": kl}

    def state_dict(self) -> dict:
        state = {"normalizer": self.normalizer.state_dict(), "offline": self.offline.state_dict(),
                 "prompts": self.prompts.state_dict(), "skipped_total": dict(self.skipped_total)}
        if self.refresher is not None:
            state["refresher"] = self.refresher.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.normalizer.load_state_dict(state["normalizer"])
        self.offline.load_state_dict(state["offline"])
        self.prompts.load_state_dict(state["prompts"])
        self.skipped_total = Counter(state["skipped_total"])
        if self.refresher is not None and "refresher" in state:
            self.refresher.load_state_dict(state["refresher"])


def prompt_items_from_pairs(pairs: list[dict]) -> list[dict]:
    """Distinct prompts of the offline pairs (first occurrence wins), with their references."""
    seen, items = set(), []
    for pair in pairs:
        key = tuple((m["role"], m["content"]) for m in pair["prompt"])
        if key not in seen:
            seen.add(key)
            items.append({"prompt": pair["prompt"], "reference": pair.get("reference", "")})
    return items
