"""The judge check: does the critique judge tell a good answer from a bad one?

`datagen/data/judge_calibration.jsonl` holds pairs written for this project: one question, a
known-good and a known-bad answer (a wrong result, a buggy function, a false fact, advice that
harms, a reply that ignores the request), in every seed domain, in English and Chinese. The critique
stage's judge grades both answers of every pair at the start of a run (`critique.judge_check`), and
`summarize` turns the grades into what stats.json, the card and the report show:

- `auc`: the share of pairs whose good answer outscores its bad one, ties counted half (an answer
  the judge could not grade counts as a tie) — 0.5 is a coin, 1.0 a judge that always knows. This is
  what ranking the answers to one question needs (the best of N, critique-ranked DPO pairs);
- `auc_unpaired`: the same over every (good, bad) pair of answers across questions — what a fixed
  threshold (`critique.min_mean`) can separate;
- `per_aspect`, `by_domain`; `auc_sampled` / `auc_logprobs`: grades from the sampled digits and from
  the expected score under the judge's token probabilities (when the backend returned logprobs), on
  the same calls; `auc_all_aspects`: the mean of all five aspects instead of `critique.aspects`;
- `grade_noise`: the pooled spread of grades within the known-good and within the known-bad answers;
  critique-ranked DPO pairs need a margin above it;
- `baselines`: the AUC on the same pairs of graders that know nothing about the answers — `longer`
  (grade = the answer's length in characters; `longer_unpaired` across questions), `first_graded`
  (grade = the order the check grades a pair's two answers in: the judge sees one answer per call, so
  there is no position within a prompt to prefer; the check grades the good answer first in every
  other pair, which makes this 0.5 by design, as for `constant`, a grader that gives every answer the
  same grade). The good answer is the shorter one in half of the shipped pairs, in every domain and
  language (the known-bad ones there are long, confident and wrong), so `longer` is 0.5 on them;
  `by_length` gives the judge's AUC on the pairs where the good answer is the shorter and the longer one
  (a judge that prefers the longer answer scores 0 and 1 there);
- `copied_rationales`: critiques whose rationale repeats the prompt's own example (not a rationale);
- `unparsed`, and `weak` when `auc` is below WEAK_AUC: a critique that filters nothing meaningful,
  which the run, the card and the report say out loud.

`gate_failure` is what stops a run (`critique.min_auc` > 0): the judge below `min_auc`, or, with
`critique.must_beat_length`, not above the prefer-the-longer baseline on the same pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from datagen.filters.critique_parse import ParsedCritique
from datagen.readers.jsonl import read_objects
from datagen.record import CRITIQUE_ASPECTS

CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "data" / "judge_calibration.jsonl"
WEAK_AUC = 0.6
_FIELDS = ("id", "domain", "lang", "question", "good", "bad")


class CalibrationError(ValueError):
    """The calibration file is missing or malformed."""


@dataclass(frozen=True)
class CalibrationPair:
    id: str
    domain: str
    lang: str
    question: str
    good: str
    bad: str
    flaw: str = ""


def load_pairs(path: str | Path = CALIBRATION_FILE) -> list[CalibrationPair]:
    path = Path(path)
    pairs = []
    for line_no, item in read_objects(path, CalibrationError, "judge calibration"):
        missing = [k for k in _FIELDS if not isinstance(item.get(k), str) or not item[k].strip()]
        if missing:
            raise CalibrationError(f"{path}:{line_no}: needs non-empty {', '.join(missing)}")
        pairs.append(CalibrationPair(**{k: item[k] for k in (*_FIELDS, "flaw") if k in item}))
    if not pairs:
        raise CalibrationError(f"{path}: no calibration pairs")
    return pairs


def auc(good: Sequence[float | None], bad: Sequence[float | None]) -> float:
    """Share of pairs where good > bad; ties and ungraded answers count half."""
    if len(good) != len(bad) or not good:
        raise ValueError("auc needs as many good as bad scores, at least one")
    wins = sum(0.5 if g is None or b is None or g == b else float(g > b) for g, b in zip(good, bad))
    return round(wins / len(good), 4)


def _grade(critique: ParsedCritique | None, aspects: Sequence[str] | None, use_expected: bool) -> float | None:
    if critique is None or (use_expected and not critique.expected):
        return None
    return critique.grade(aspects, use_expected)


def _grades(critiques, aspects, use_expected) -> list[float | None]:
    return [_grade(c, aspects, use_expected) for c in critiques]


def _aucs(good, bad, aspects, use_expected) -> float:
    return auc(_grades(good, aspects, use_expected), _grades(bad, aspects, use_expected))


def good_first(pairs: Sequence[CalibrationPair]) -> list[bool]:
    """Per pair, whether the check grades its good answer before its bad one: every other pair, so a
    grader whose grades drift with the order of its calls gains nothing from the file's layout."""
    return [i % 2 == 0 for i in range(len(pairs))]


def baselines(pairs: Sequence[CalibrationPair], first: Sequence[bool] | None = None) -> dict:
    """The AUC of graders that do not read the answers, on the same pairs (see the module docstring)."""
    first = good_first(pairs) if first is None else first
    good_len, bad_len = [len(p.good) for p in pairs], [len(p.bad) for p in pairs]
    return {"longer": auc(good_len, bad_len), "longer_unpaired": unpaired_auc(good_len, bad_len),
            "first_graded": auc([1 if f else 0 for f in first], [0 if f else 1 for f in first]),
            "constant": auc([1] * len(pairs), [1] * len(pairs))}


def summarize(pairs: Sequence[CalibrationPair], good: Sequence[ParsedCritique | None],
              bad: Sequence[ParsedCritique | None], grading: str, aspects: Sequence[str] | None = None,
              first: Sequence[bool] | None = None) -> dict:
    """stats.json's `judge_check` from the judge's critiques of each pair's good and bad answer (None:
    the call failed). The grade is the mean over `aspects` (all when None) of the expected scores
    (grading logprobs, when the judge returned them) or of the sampled digits. `first`: per pair,
    whether its good answer was graded first (default `good_first`)."""
    with_logprobs = any(c is not None and c.expected for c in (*good, *bad))
    use_expected = grading == "logprobs" and with_logprobs
    aspects = list(aspects or CRITIQUE_ASPECTS)
    good_grades, bad_grades = _grades(good, aspects, use_expected), _grades(bad, aspects, use_expected)

    def auc_of(keep) -> float | None:  # the AUC on the pairs that `keep` picks (None: it picks none)
        picked = [(g, b) for p, g, b in zip(pairs, good_grades, bad_grades) if keep(p)]
        return auc([g for g, _ in picked], [b for _, b in picked]) if picked else None

    by_domain = {domain: auc_of(lambda p: p.domain == domain) for domain in sorted({p.domain for p in pairs})}
    by_length = {name: auc_of(lambda p: (len(p.good) < len(p.bad)) == shorter)
                 for name, shorter in (("good_shorter", True), ("good_longer", False))}
    summary = {
        "pairs": len(pairs),
        "grading": "logprobs" if use_expected else "sampled",
        "aspects": aspects,
        "auc": auc(good_grades, bad_grades),
        "auc_unpaired": unpaired_auc(good_grades, bad_grades),
        "per_aspect": {a: _aucs(good, bad, [a], use_expected) for a in CRITIQUE_ASPECTS},
        "auc_sampled": _aucs(good, bad, aspects, False),
        "auc_logprobs": _aucs(good, bad, aspects, True) if with_logprobs else None,
        "auc_all_aspects": _aucs(good, bad, None, use_expected),
        "by_domain": by_domain,
        "baselines": baselines(pairs, first),
        "by_length": by_length,
        "unparsed": sum(1 for c in (*good, *bad) if c is None or c.problem),
        "copied_rationales": sum(1 for c in (*good, *bad) if c is not None and c.copied_rationale),
        "mean_good": _mean(good_grades),
        "mean_bad": _mean(bad_grades),
        "grade_noise": grade_noise(good_grades, bad_grades),
    }
    summary["weak"] = summary["auc"] < WEAK_AUC
    return summary


def unpaired_auc(good: Sequence[float | None], bad: Sequence[float | None]) -> float | None:
    """Share of (any good, any bad) answer pairs ordered right, ties half: what a fixed threshold
    across questions can separate (the paired `auc` is what ranking answers to one question needs)."""
    gs, bs = [g for g in good if g is not None], [b for b in bad if b is not None]
    if not gs or not bs:
        return None
    wins = sum(0.5 if g == b else float(g > b) for g in gs for b in bs)
    return round(wins / (len(gs) * len(bs)), 4)


def grade_noise(good: Sequence[float | None], bad: Sequence[float | None]) -> float | None:
    """The judge's spread at a fixed quality: the pooled standard deviation of its grades within the
    known-good answers and within the known-bad ones. A critique-ranked DPO pair whose margin is not
    above it is indistinguishable from two answers of the same quality (datagen/output/finalize.py)."""
    spreads = []
    for values in (good, bad):
        known = [v for v in values if v is not None]
        if len(known) >= 2:
            mean = sum(known) / len(known)
            spreads.append(sum((v - mean) ** 2 for v in known) / (len(known) - 1))
    return round((sum(spreads) / len(spreads)) ** 0.5, 4) if spreads else None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 3) if known else None


def gate_failure(check: dict, min_auc: float, must_beat_length: bool = True) -> str:
    """Why the judge check stops the run ("" when it passes or `min_auc` is 0): the judge's AUC below
    `min_auc`, or (`must_beat_length`) not above what preferring the longer answer scores on the same
    pairs — a check a judge could pass by answer length measures nothing about judging."""
    if not check or min_auc <= 0:
        return ""
    head = f"critique judge AUC {check['auc']:.2f} on {check['pairs']} calibration pairs is"
    if check["auc"] < min_auc:
        return f"{head} below critique.min_auc {min_auc}: stopped before any stage ran"
    longer = (check.get("baselines") or {}).get("longer")
    if must_beat_length and longer is not None and check["auc"] <= longer:
        return (f"{head} not above {longer:.2f}, what preferring the longer answer scores on the same pairs "
                f"(critique.must_beat_length): stopped before any stage ran")
    return ""


def warning_line(check: dict) -> str:
    """The loud line for a judge below WEAK_AUC ("" when the judge discriminates)."""
    if not check or not check.get("weak"):
        return ""
    return (f"WARNING: the critique judge scored {check['auc']:.2f} AUC on {check['pairs']} calibration pairs "
            f"(0.5 = a coin): its critique filters nothing meaningful. Use a stronger judge "
            f"(critique.model) or read the critique scores as noise.")


def describe(check: dict) -> str:
    """The judge check in a paragraph, for the card."""
    grade = "+".join(check.get("aspects") or ["all aspects"])
    compare = f"sampled digits {check['auc_sampled']:.2f}" + (
        f", logprob grades {check['auc_logprobs']:.2f}" if check.get("auc_logprobs") is not None else "") + (
        f", the mean of all five aspects {check['auc_all_aspects']:.2f}" if check.get("auc_all_aspects") is not None
        else "")
    across = check.get("auc_unpaired")
    text = (f"The critique judge `{check.get('model', '')}` graded {check['pairs']} calibration pairs (one question, a "
            f"known-good and a known-bad answer; every domain, English and Chinese). AUC = the share of pairs whose "
            f"good answer scores higher (ties half; 0.5 is a coin): **{check['auc']:.2f}** with {check['grading']} "
            f"grades of {grade} ({compare}); {check['unparsed']} of {2 * check['pairs']} critiques unreadable."
            + (f" Across questions, which is what the `min_mean` threshold relies on, its grades order good above "
               f"bad answers {across:.2f} of the time." if across is not None else ""))
    return " ".join([text, *_baseline_sentences(check)])


def _baseline_sentences(check: dict) -> list[str]:
    out = []
    base, by_length = check.get("baselines"), check.get("by_length") or {}
    if base:
        out.append(f"Graders that do not read the answers score, on the same pairs: prefer-the-longer "
                   f"{base['longer']:.2f}, first-graded {base['first_graded']:.2f} (the judge sees one answer per "
                   f"call, so no position within a prompt; the check grades the good answer first in every other "
                   f"pair), constant {base['constant']:.2f}.")
    if by_length.get("good_shorter") is not None and by_length.get("good_longer") is not None:
        out.append(f"Where the good answer is the shorter one the judge scores {by_length['good_shorter']:.2f}, where "
                   f"it is the longer one {by_length['good_longer']:.2f}.")
    if check.get("copied_rationales") is not None:
        in_run = check.get("copied_rationales_in_run")
        out.append(f"{check['copied_rationales']} of {2 * check['pairs']} rationales repeat the prompt's own example"
                   + (f" ({in_run} of this run's critiques did; their rationale is stored as \"\")"
                      if in_run is not None else "") + ".")
    return out


def table_rows(check: dict) -> list[list[str]]:
    grade = "+".join(check.get("aspects") or ["all aspects"])
    base, by_length = check.get("baselines") or {}, check.get("by_length") or {}
    return [[f"grade ({grade})", f"{check['auc']:.2f}"], *[[a, f"{v:.2f}"] for a, v in check["per_aspect"].items()],
            *[[f"domain {d}", f"{v:.2f}"] for d, v in check["by_domain"].items()],
            *[[f"pairs where the good answer is the {which.split('_')[1]} one", f"{by_length[which]:.2f}"]
              for which in ("good_shorter", "good_longer") if by_length.get(which) is not None],
            *([["baseline: prefer the longer answer", f"{base['longer']:.2f}"],
               ["baseline: prefer the answer graded first", f"{base['first_graded']:.2f}"],
               ["baseline: constant grade", f"{base['constant']:.2f}"]] if base else [])]
