"""Reading a critique: per-aspect four-tier scores and a rationale from what judges really write.

The critique stage's parser (datagen/stages/critique.py builds the prompts and runs the stage; a reward
judge calls `critique.read_critique`). It takes JSON (fenced or not), "Accuracy: 3/4",
"accuracy - 3", markdown tables, bold names, Chinese aspect names (准确性 相关性 完整性 有用性 清晰度),
full-width digits. A value out of 1..4 without a stated scale is dropped (a "5" may mean a 1-5
scale, or nothing); "x/N" on another scale maps linearly from 1..N onto 1..4. A critique naming
fewer than `min_aspects` aspects counts as unparsed (`problem` says why).
"""
from __future__ import annotations

import difflib
import json
import math
import re
import unicodedata
from typing import Iterable, NamedTuple, Sequence

from datagen.record import CRITIQUE_ASPECTS

ASPECT_NAMES = {
    "accuracy": ("accuracy", "accurate", "correctness", "准确性", "准确度", "正确性"),
    "relevance": ("relevance", "relevancy", "relevant", "相关性", "相关度"),
    "completeness": ("completeness", "complete", "完整性", "完整度"),
    "usefulness": ("usefulness", "useful", "helpfulness", "有用性", "实用性"),
    "clarity": ("clarity", "clearness", "clear", "清晰度", "清晰性"),
}
_WORD_TIERS = {"poor": 1, "fair": 2, "good": 3, "excellent": 4}
_ALIAS_TO_ASPECT = {alias: aspect for aspect, aliases in ASPECT_NAMES.items() for alias in aliases}
# Longest aliases first, so "relevance" wins over "relevant" in the alternation.
_ALIASES = "|".join(sorted((re.escape(a) for a in _ALIAS_TO_ASPECT), key=len, reverse=True))
# name, optional "(1-4)" or "score", separators (: = - | * …), a number, an optional "/N" or
# "out of N". A range such as "1-4" (the format echoed back) is not a score.
_SEPARATORS = r"""[\s:=\-–—|*>#"']*"""
_SCORE_LINE = re.compile(
    rf"({_ALIASES})(?![a-z])[^\S\n]*(?:\([^)\n]*\))?(?:[^\S\n]*(?:score|rating|得分|评分|分数))?{_SEPARATORS}"
    r"(\d+(?:\.\d+)?)(?![\d.]*\s*[-–~]\s*\d)(?:\s*(?:/|out of)\s*(\d+))?",
    re.IGNORECASE)
_RATIONALE = re.compile(r"(?:rationale|reason(?:ing)?|explanation|justification|理由|说明)[\s*]*[:：\-]\s*(.+)",
                        re.IGNORECASE | re.DOTALL)


class ParsedCritique(NamedTuple):
    scores: dict[str, int]  # aspect → 1..4, only the aspects found
    rationale: str
    problem: str  # "" when usable, else why not (e.g. "no scores found")
    expected: dict[str, float] = {}  # aspect → expected score under the judge's token probabilities
    copied_rationale: bool = False  # the judge's rationale repeated the prompt's own example (`rationale` is "")

    def grade(self, aspects: Sequence[str] | None = None, use_expected: bool = True) -> float | None:
        """The mean over `aspects` (all scored ones when None) of the expected score where known
        (`use_expected`) and the sampled digit elsewhere; None when unusable or no such aspect was scored."""
        if self.problem:
            return None
        chosen = [a for a in (aspects or self.scores) if a in self.scores]
        if not chosen:
            return None
        return mean_score({a: self.expected.get(a, self.scores[a]) if use_expected else self.scores[a]
                           for a in chosen})

    @property
    def mean(self) -> float | None:
        """The mean grade of every scored aspect (expected scores where known); None when unusable."""
        return self.grade()

    @property
    def sampled_mean(self) -> float | None:
        return self.grade(use_expected=False)


def parse_critique(text: str, min_aspects: int = 3) -> ParsedCritique:
    """Scores and rationale from a critique, JSON first, then line patterns. Never raises."""
    if not isinstance(text, str) or not text.strip():
        return ParsedCritique({}, "", "empty critique")
    text = unicodedata.normalize("NFKC", text)
    scores, rationale = _from_json(text)
    if len(scores) < min_aspects:
        line_scores = _from_lines(text)
        if len(line_scores) > len(scores):
            scores = line_scores
        rationale = rationale or _rationale(text)
    if not scores:
        return ParsedCritique({}, rationale, "no scores found")
    if len(scores) < min_aspects:
        return ParsedCritique(scores, rationale, f"only {len(scores)} aspects scored: {', '.join(scores)}")
    ordered = {a: scores[a] for a in CRITIQUE_ASPECTS if a in scores}
    return ParsedCritique(ordered, rationale, "")


def to_tier(value: object, scale: object = None) -> int | None:
    """1..4 from a raw value (3, "3", "3/4", "good", {"score": 3}); None when it is not a tier.
    A value on another scale ("7/10") maps linearly from 1..N onto 1..4."""
    if isinstance(value, dict):
        value = next((value[k] for k in ("score", "rating", "value") if k in value), None)
    if isinstance(value, str):
        if value.strip().lower() in _WORD_TIERS:
            return _WORD_TIERS[value.strip().lower()]
        match = re.match(r"\s*(\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?", value)
        if not match:
            return None
        value, scale = match.group(1), match.group(2) or scale
    if isinstance(value, bool) or value is None:
        return None
    try:
        number, top = float(value), float(scale) if scale not in (None, "") else 4.0
    except (TypeError, ValueError, OverflowError):
        return None
    if not (number == number and 1.0 < top < 1000):  # NaN, or no usable scale
        return None
    if top != 4.0:
        if not 0 <= number <= top:
            return None
        number = min(4.0, max(1.0, 1 + 3 * (number - 1) / (top - 1)))
    return math.floor(number + 0.5) if 1 <= number <= 4 else None


def _from_json(text: str) -> tuple[dict[str, int], str]:
    for candidate in _json_objects(text):
        try:
            data = json.loads(candidate)
        except (ValueError, RecursionError):
            continue
        if not isinstance(data, dict):
            continue
        if isinstance(data.get("scores"), dict):
            data = {**data["scores"], **{k: v for k, v in data.items() if k != "scores"}}
        scores: dict[str, int] = {}
        for key, value in data.items():
            aspect = _ALIAS_TO_ASPECT.get(str(key).strip().lower())
            tier = to_tier(value) if aspect else None
            if aspect and tier is not None and aspect not in scores:
                scores[aspect] = tier
        if scores:
            rationale = next((str(v) for k, v in data.items()
                              if str(k).lower() in ("rationale", "reason", "explanation", "理由")), "")
            return scores, rationale.strip()[:1000]
    return {}, ""


def _json_objects(text: str) -> list[str]:
    """Balanced {...} spans, outermost first (the model may wrap JSON in prose or fences)."""
    spans, depth, start = [], 0, -1
    for i, ch in enumerate(text[:20000]):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start:i + 1])
    return spans


def _from_lines(text: str) -> dict[str, int]:
    scores: dict[str, int] = {}
    for match in _SCORE_LINE.finditer(text[:20000]):
        aspect = _ALIAS_TO_ASPECT[match.group(1).lower()]
        tier = to_tier(match.group(2), match.group(3))
        if tier is not None and aspect not in scores:  # first valid mention wins
            scores[aspect] = tier
    return scores


def _rationale(text: str) -> str:
    match = _RATIONALE.search(text)
    if match:
        return match.group(1).strip()[:1000]
    prose = [line for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("|") and not _SCORE_LINE.search(line)]
    return " ".join(line.strip() for line in prose)[:1000]


# -- rationales that are the prompt's, not the judge's ------------------------------------------------
COPY_SIMILARITY = 0.8  # difflib ratio of the normalised texts at or above which a rationale is a copy


def _normalised(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join("".join(ch if ch.isalnum() else " " for ch in text).split())


def copies_example(rationale: str, examples: Iterable[str]) -> bool:
    """Whether `rationale` repeats one of the prompt's own example rationales (case, punctuation and
    spacing aside, or nearly word for word): a small judge continuing a few-shot pattern copies them
    ("Correct and clear, though brief." under an answer that is neither)."""
    mine = _normalised(rationale)
    if not mine:
        return False
    for example in examples:
        theirs = _normalised(example)
        if theirs and (mine == theirs or difflib.SequenceMatcher(None, mine, theirs).ratio() >= COPY_SIMILARITY):
            return True
    return False


# -- grades from token probabilities (G-Eval) -----------------------------------------------------
_TIERS = ("1", "2", "3", "4")
_ASPECT_BEFORE = re.compile(rf"({_ALIASES})(?![a-z])[^\S\n]*(?:\([^)\n]*\))?[\s:=\-–—|*>#\"'：]*$", re.IGNORECASE)


def expected_scores(tokens: list[dict], prefix: str = "") -> dict[str, float]:
    """Per aspect, the expected tier Σ s·p(s) / Σ p(s) over the tokens "1".."4" at the position where
    the judge wrote that aspect's score (G-Eval, Liu et al. 2023). `tokens` are a completion's
    generated tokens with their most likely alternatives ({"token", "logprob", "top"}); `prefix` is
    text the prompt ended with (the few-shot prompt's "Accuracy:"). A tier missing from the
    alternatives counts as probability 0; the first score position of an aspect wins."""
    text, found = prefix, {}
    for token in tokens:
        piece = token.get("token") or ""
        if piece.strip() in _TIERS:
            match = _ASPECT_BEFORE.search(unicodedata.normalize("NFKC", text[-80:]))
            aspect = _ALIAS_TO_ASPECT.get(match.group(1).lower()) if match else None
            if aspect and aspect not in found:
                found[aspect] = _expectation(token.get("top") or {piece: token.get("logprob", 0.0)})
        text += piece
    return {a: v for a, v in found.items() if v is not None}


def _expectation(top: dict[str, float]) -> float | None:
    mass = {tier: 0.0 for tier in _TIERS}
    for alternative, logprob in top.items():
        if alternative.strip() in mass and logprob is not None:
            mass[alternative.strip()] += math.exp(logprob)
    total = sum(mass.values())
    return round(sum(int(t) * p for t, p in mass.items()) / total, 4) if total > 0 else None


def mean_score(scores: dict[str, float]) -> float:
    return round(sum(scores.values()) / len(scores), 3) if scores else 0.0
