"""The data-quality section of a synth run: what a reader needs to judge the data, in one place.

`QualityTally` is fed the kept and rejected rows as `datagen.output.finalize` streams them back; `summary`
adds the run's stage counters and judge check and gives stats.json's `quality`:

- `yield_by_domain`: kept / (kept + rejected) records per domain;
- `judge`: the critique judge's AUC on the calibration pairs (datagen/filters/calibration.py), beside
  the AUC of graders that do not read the answers (prefer-the-longer, first-graded);
- `verification`: kept objective items whose answer is verified (majority by math-verify, or tests
  passed) vs unverifiable (continued as subjective), and the share verified;
- `answer_chars`: the chosen answers' length distribution (characters);
- `diversity`: distinct-1/2/3 of the kept instructions (unique word n-grams / all n-grams; the
  first `DIVERSITY_SAMPLE` instructions, so memory stays bounded);
- `duplicates_removed`, `contamination` (decontam and decontam_answers rejects by reason and by benchmark);
- `dpo_pairs`: DPO rows by how the pair was made (verified-wrong `rejected`, or critique-ranked).

`markdown_rows` gives the card's and the report's table of the same figures.
"""
from __future__ import annotations

import re

from datagen.filters.text import words

DIVERSITY_SAMPLE = 20000
_BENCHMARK = re.compile(r"^(\S+?):? ")


class QualityTally:
    def __init__(self) -> None:
        self.answer_chars: list[int] = []
        self.instructions: list[list[str]] = []
        self.outcomes: dict[str, int] = {}
        self.objective = {"kept": 0, "verified": 0, "unverifiable": 0}
        self.contamination: dict[str, dict[str, int]] = {"by_reason": {}, "by_benchmark": {}}
        self.referenced: dict[str, list[tuple[int, int]]] = {}  # domain → (right, sampled) per referenced item
        self.margins: dict[str, list[float]] = {}  # pair_source → chosen − rejected score of the pairs kept

    def add_kept(self, row: dict) -> None:
        if row.get("response"):
            self.answer_chars.append(len(row["response"]))
        if len(self.instructions) < DIVERSITY_SAMPLE:
            self.instructions.append(words(row.get("instruction") or ""))
        outcome = (row.get("consistency") or {}).get("outcome") or "unchecked"
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if row.get("objective"):
            self.objective["kept"] += 1
            if outcome in ("verified", "unverifiable"):
                self.objective[outcome] += 1

    def add_referenced(self, row: dict) -> None:
        """A referenced item's answers, right or not, kept or rejected (pass rates per domain)."""
        if (row.get("consistency") or {}).get("method") != "reference" and not (
                (row.get("consistency") or {}).get("method") == "code" and row.get("tests")
                and row.get("instruction") == row.get("seed_text")):
            return
        verdicts = [r.get("verdict") for r in row.get("responses") or []]
        if verdicts:
            self.referenced.setdefault(row.get("domain") or "general", []).append(
                (verdicts.count("verified"), len(verdicts)))

    def add_pair(self, pair: dict) -> None:
        chosen, rejected = pair.get("score_chosen"), pair.get("score_rejected")
        if chosen is not None and rejected is not None:
            self.margins.setdefault(pair["pair_source"], []).append(round(chosen - rejected, 4))

    def add_rejected(self, row: dict) -> None:
        if row.get("reject_stage") not in ("decontam", "decontam_answers"):
            return
        reason = row.get("reject_reason") or "unspecified"
        _bump(self.contamination["by_reason"], reason)
        match = _BENCHMARK.match(row.get("reject_detail") or "")
        _bump(self.contamination["by_benchmark"], match.group(1) if match else "unknown")

    def summary(self, stages: dict, domains: dict, judge_check: dict | None, dpo_sources: dict) -> dict:
        objective = self.objective
        return {
            "yield_by_domain": {d: round(c["kept"] / (c["kept"] + c["rejected"]), 3) if c["kept"] + c["rejected"]
                                else None for d, c in domains.items()},
            "judge": {**{k: judge_check.get(k) for k in ("auc", "grading", "pairs", "weak")},
                      **({"baselines": judge_check["baselines"]} if judge_check.get("baselines") else {})}
            if judge_check else None,
            "verification": {**objective, "outcomes": dict(sorted(self.outcomes.items())),
                             "share_verified": round(objective["verified"] / objective["kept"], 3)
                             if objective["kept"] else None},
            "answer_chars": distribution(self.answer_chars),
            "diversity": {f"distinct_{n}": distinct_n(self.instructions, n) for n in (1, 2, 3)}
            | {"instructions": len(self.instructions)},
            "duplicates_removed": sum((stages.get("dedup") or {}).get("rejected", {}).values()),
            "contamination": {"hits": sum(self.contamination["by_reason"].values()), **self.contamination},
            "dpo_pairs": dict(sorted(dpo_sources.items())),
            "pair_margins": {source: float_distribution(values) for source, values in sorted(self.margins.items())},
            "pass_rates": {domain: pass_rates(items) for domain, items in sorted(self.referenced.items())},
        }


def pass_rates(items: list[tuple[int, int]]) -> dict:
    """Referenced items of one domain: pass@1 (mean share of right samples), pass@k (share of items with
    at least one right answer among their k samples), k as sampled."""
    ks = sorted({n for _, n in items})
    return {"items": len(items), "k": ks[0] if len(ks) == 1 else ks,
            "pass@1": round(sum(right / n for right, n in items) / len(items), 4),
            "pass@k": round(sum(right > 0 for right, _ in items) / len(items), 4),
            "right_answers": sum(right for right, _ in items)}


def float_distribution(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(ordered), "min": ordered[0], "p10": ordered[int(0.1 * len(ordered))],
            "median": ordered[len(ordered) // 2], "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "max": ordered[-1]}


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def distribution(values: list[int]) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def quantile(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"n": len(ordered), "min": ordered[0], "p10": quantile(0.1), "median": quantile(0.5),
            "p90": quantile(0.9), "max": ordered[-1], "mean": round(sum(ordered) / len(ordered), 1)}


def distinct_n(texts: list[list[str]], n: int) -> float | None:
    """Unique n-grams / all n-grams over the texts (Li et al. 2016); None when there are none."""
    grams = [tuple(tokens[i:i + n]) for tokens in texts for i in range(len(tokens) - n + 1)]
    return round(len(set(grams)) / len(grams), 3) if grams else None


def markdown_rows(quality: dict) -> list[list[str]]:
    """(figure, value) rows for the card and the report."""
    judge = quality.get("judge") or {}
    verification = quality["verification"]
    lengths = quality["answer_chars"]
    diversity = quality["diversity"]
    contamination = quality["contamination"]
    rows = [
        ["yield per domain (kept / all records)",
         ", ".join(f"{d} {v:.0%}" for d, v in quality["yield_by_domain"].items() if v is not None) or "–"],
        ["critique judge AUC (calibration pairs)",
         f"{judge['auc']:.2f} on {judge['pairs']} pairs ({judge['grading']} grades"
         + (f"; graders that do not read the answers: prefer-the-longer {judge['baselines']['longer']:.2f}, "
            f"first-graded {judge['baselines']['first_graded']:.2f}" if judge.get("baselines") else "") + ")"
         + (" — below 0.6: the critique filters nothing meaningful" if judge.get("weak") else "")
         if judge else "not measured"],
        ["objective items verified",
         f"{verification['verified']} of {verification['kept']} kept ({_share(verification['share_verified'])}); "
         f"{verification['unverifiable']} unverifiable, judged as subjective"],
        ["answer length (characters)",
         f"median {lengths['median']}, p10 {lengths['p10']}, p90 {lengths['p90']}, max {lengths['max']}"
         if lengths["n"] else "no answers"],
        ["instruction diversity (distinct-1/2/3)",
         " / ".join("–" if diversity[f"distinct_{n}"] is None else f"{diversity[f'distinct_{n}']:.2f}"
                    for n in (1, 2, 3)) + f" over {diversity['instructions']} instructions"],
        ["near-duplicates removed", str(quality["duplicates_removed"])],
        ["contamination hits", f"{contamination['hits']}" + (" (" + ", ".join(
            f"{k}: {v}" for k, v in {**contamination["by_reason"], **contamination["by_benchmark"]}.items()) + ")"
            if contamination["hits"] else "")],
        ["DPO pairs by provenance", ", ".join(f"{k} {v}" for k, v in quality["dpo_pairs"].items()) or "none"],
    ]
    for source, margin in (quality.get("pair_margins") or {}).items():
        rows.append([f"score margin of {source} pairs (chosen − rejected)",
                     f"median {margin['median']:.3f}, p10 {margin['p10']:.3f}, p90 {margin['p90']:.3f}, "
                     f"min {margin['min']:.3f} over {margin['n']} pairs"])
    for domain, rates in (quality.get("pass_rates") or {}).items():
        rows.append([f"referenced {domain} items: pass@1 / pass@k (k={rates['k']})",
                     f"{rates['pass@1']:.1%} / {rates['pass@k']:.1%} over {rates['items']} items "
                     f"(pass@k: the share with at least one right answer; {rates['right_answers']} right answers)"])
    return rows


def _share(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"
