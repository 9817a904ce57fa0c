"""One online round, end to end: best-and-worst-of-N pairs from the current policy.

Each round, before a phase of DPO training (see posttrain/trainers/dpo_trainer.py):

1. **sample** — the current policy answers `prompts_per_round` prompts N times each (in-process
   `generate`, or, with `backend: vllm`, the run's live vLLM engine, posttrain/online/engine.py,
   into which the trainer has just synced the policy's weights);
2. **score** — the reward scorer (rewards/scoring.py) rates every answer; the running reward
   normaliser (rewards/normalize.py) is updated and normalises the scores;
3. **select** — per prompt, the highest-scored answer becomes `chosen` and the lowest `rejected`;
   a prompt is skipped, and the skip counted by reason, when fewer than two answers could be
   scored (`too_few_scored`), all scores tie (`all_tied`), the two texts are the same
   (`identical_responses`) or the normalised best − worst margin is below `margin`
   (`below_margin`). Empty answers and NaN rewards are counted per answer;
4. **mix** — the round's training rows are `ratio` online pairs and the rest offline pairs
   (drawn in a seeded order that persists across rounds). A shortfall of online pairs is filled
   with offline ones and logged (`mix/online_shortfall`), so every round trains its full steps.

Stats per round (logged and written to `rounds/round-NNN.jsonl`) include the raw and normalised
reward statistics, chosen/rejected reward means and margins, skip counts and share, the mean answer
length in characters, with `online.gold` the gold verifier's accuracy of the samples, of the chosen
and of the rejected answers (logged, never trained on), and a Monte-Carlo
estimate of KL(policy ‖ reference) on the sampled answers (skipped, and logged once, when the
policy is sharded: its forward would need every rank).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from posttrain.online.online_config import OnlineConfig
from posttrain.online.kl import estimate_kl
from posttrain.online.mixing import Cursor, mix_pairs, online_share
from posttrain.online.sampling import Messages, sample_with_llm, sample_with_transformers
from posttrain.online.selection import Selection, gold_stats, reward_stats, score_answers, select_pairs
from rewards.normalize import RewardNormalizer


@dataclass
class RoundData:
    rows: list[dict]  # the round's training rows (prompt/chosen/rejected/source)
    stats: dict[str, float]  # for the training log
    records: list[dict]  # every sampled prompt: answers, scores, outcome (written to rounds/)
    seconds: dict[str, float]  # RM refresh / generation / scoring / selection / KL-estimate time


class OnlineRounds:
    """Builds each round's training rows; holds what must survive a resume (see `state_dict`)."""

    def __init__(self, cfg: OnlineConfig, policy, reference, tokenizer, scorer, offline_pairs: list[dict],
                 prompt_items: list[dict], seed: int, refresher=None, gold=None) -> None:
        self.cfg = cfg
        self.policy, self.reference, self.tokenizer = policy, reference, tokenizer
        self.scorer = scorer
        self.refresher = refresher  # posttrain.online.rm_refresh.RewardRefresher, when the RM is refreshed between rounds
        self.gold = gold  # a verifier logged beside the reward (online.gold), never trained on
        self.seed = seed
        self.engine = None  # posttrain.online.engine.PolicyEngine, for backend: vllm (set by the trainer)
        self.kl_enabled = True  # off when the policy is sharded (a forward on one rank would hang)
        self.normalizer = RewardNormalizer(cfg.normalizer_momentum)
        self.offline = Cursor(offline_pairs, seed)
        self.prompts = Cursor(prompt_items, seed + 1)  # items: {"prompt": messages, "reference": str}
        self.skipped_total: Counter = Counter()

    def online_target(self, total: int) -> int:
        return online_share(self.cfg.ratio, total) if self.cfg.enabled else 0

    def build(self, round_index: int, total: int) -> RoundData:
        """The round's `total` training rows, sampled from the current policy."""
        target = self.online_target(total)
        stats: dict[str, float] = {"online/round": float(round_index)}
        seconds = {"rm_refresh": 0.0, "generation": 0.0, "scoring": 0.0, "selection": 0.0, "kl": 0.0}
        selection = Selection()
        if target > 0 and self.prompts.items:
            selection = self._online_pairs(round_index, target, stats, seconds)
        rows, mix = mix_pairs(selection.pairs, self.offline, total, self.cfg.ratio if target else 0.0,
                              self.seed + round_index)
        stats.update(mix)
        stats.update({f"online/skipped_total_{r}": float(n) for r, n in self.skipped_total.items()})
        return RoundData(rows, stats, selection.records, seconds)

    def _online_pairs(self, round_index: int, target: int, stats: dict, seconds: dict) -> Selection:
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
        answers = self.sample(prompts, self.seed + round_index)
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
        if self.gold is not None:
            start = clock()
            stats.update(gold_stats(score_answers(self.gold, prompts, references, answers), selection))
            seconds["gold"] = clock() - start
        start = clock()
        stats.update(self.kl_stats(prompts, answers))
        seconds["kl"] = clock() - start
        return selection

    def sample(self, prompts: list[Messages], seed: int) -> list[list[str]]:
        if self.cfg.backend == "transformers":
            return sample_with_transformers(self.policy, self.tokenizer, prompts, self.cfg, seed)
        if self.engine is None:
            raise RuntimeError("online.backend vllm needs the run's engine (set by posttrain.trainers.dpo_trainer.train)")
        return sample_with_llm(self.engine, prompts, self.cfg, seed)

    def kl_stats(self, prompts: list[Messages], answers: list[list[str]]) -> dict[str, float]:
        if not self.cfg.kl_samples or not self.kl_enabled:
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
