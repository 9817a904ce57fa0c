"""Blind pairwise judging: which of two answers to the same instruction is better, in both orders.

Any `datagen.inference` model can judge. It sees "Answer A" and "Answer B" — never which model
wrote which — and every pair is judged twice, once per order (MT-Bench's remedy for position
bias), so a judge that always picks the first answer gives each side one win and one loss.

The parser accepts what small judges actually write ("Verdict: A", "[[B]]", "Answer A is better",
"Both are equally good", a bare "B."), in English or Chinese. A reply it cannot read is reported
as unreadable (verdict None, with the reply kept) and counted by the caller — never guessed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

from datagen.config_loader import option
from datagen.inference.base import Completion, Request, SamplingParams

Verdict = Literal["A", "B", "tie"]

SYSTEM = "You are a fair judge. You compare two answers to the same instruction."
TEMPLATE = """Compare two answers to the instruction below. Decide which answer is more helpful, correct and clear. \
Do not let the order or the length of the answers affect your decision.

[Instruction]
{instruction}

[Answer A]
{first}

[Answer B]
{second}

Reply with one line: "Verdict: A" if answer A is better, "Verdict: B" if answer B is better, \
or "Verdict: tie" if they are equally good."""


@dataclass
class PairwiseConfig:
    """How the judge model is asked; the defaults suit small judges (greedy, short replies)."""

    max_tokens: int = option(48, "tokens the judge may write (the verdict comes first)")
    temperature: float = option(0.0, "judge sampling temperature (0: greedy, reproducible)")
    seed: int = option(1234, "judge sampling seed (used when temperature > 0)")
    max_answer_chars: int = option(2000, "answers longer than this are cut in the judge prompt")


@dataclass(frozen=True)
class PairJudgement:
    """One instruction judged in both orders; verdicts are positional ("A" = the first answer)."""

    verdict_ab: Verdict | None  # model M's answer shown first
    verdict_ba: Verdict | None  # model M's answer shown second
    reply_ab: str
    reply_ba: str

    @property
    def score_ab(self) -> float | None:
        return score_for_first(self.verdict_ab)

    @property
    def score_ba(self) -> float | None:
        first = score_for_first(self.verdict_ba)
        return None if first is None else 1.0 - first


def score_for_first(verdict: Verdict | None) -> float | None:
    """The first answer's score under a verdict: 1 win, 0.5 tie, 0 loss, None unreadable."""
    return {"A": 1.0, "B": 0.0, "tie": 0.5}.get(verdict) if verdict else None


_TIE_WORDS = r"(tie|draw|equal|equally good|equally bad|same|平局|相同|一样)"
_EXPLICIT = [
    re.compile(r"verdict(\s+is)?[\s*\"'\[\(:：]*(answer\s+)?(?P<v>A|B|tie)(?![A-Za-z])", re.I),
    re.compile(r"\[\[\s*(?P<v>A|B|C|tie)\s*\]\]", re.I),
    re.compile(r"(判断|结论|裁决)\s*[:：]\s*(?P<v>A|B|平局)", re.I),
]
_BETTER = re.compile(r"(answer|response|assistant|option|回答|答案)\s*[\"'“”‘’]?(?P<v>A|B)(?![A-Za-z])[\"'“”‘’]?[^.\n。]{0,40}?"
                     r"(is|was|seems|looks|更好|较好)?\s*(better|superior|preferred|more helpful|wins|更好|较好)", re.I)
_LETTER_BETTER = re.compile(r"(^|[.\n]\s*)[\"'“”]?(?P<v>A|B)[\"'“”]?\s+is\s+(the\s+)?(better|superior|preferred|"
                            r"more helpful)", re.I)
_PREFER = re.compile(r"\b(prefer|choose|pick|select)\s+(answer\s+|response\s+)?(?P<v>A|B)\b", re.I)
_TIE = re.compile(r"\b(it'?s a tie|both (answers |responses )?are (equally )?(good|bad|correct|helpful|similar)|"
                  r"neither is better)\b|平局|同样好|一样好", re.I)
_BARE = re.compile(r"^\W*(?P<v>A|B|tie)\W*$", re.I)


def parse_verdict(reply: str) -> Verdict | None:
    """The verdict in a judge's reply, or None when it names none or contradicts itself."""
    text = reply.strip()
    if not text:
        return None
    for pattern in _EXPLICIT:
        found = {_normal(m.group("v")) for m in pattern.finditer(text)}
        if len(found) == 1:
            return found.pop()
        if len(found) > 1:
            return None  # "Verdict: A ... Verdict: B": contradictory, not guessed
    first_line = text.splitlines()[0]
    bare = _BARE.match(first_line)
    if bare:
        return _normal(bare.group("v"))
    picks = {_normal(m.group("v")) for p in (_BETTER, _LETTER_BETTER, _PREFER) for m in p.finditer(text)}
    tie = bool(_TIE.search(text))
    if len(picks) == 1 and not tie:
        return picks.pop()
    if tie and not picks:
        return "tie"
    return None


def _normal(value: str) -> Verdict:
    value = value.strip().lower()
    if value in ("a", "b"):
        return value.upper()  # type: ignore[return-value]
    return "tie"  # "tie", "c" ([[C]] is MT-Bench's tie), "平局"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " [...]"


def judge_request(cfg: PairwiseConfig, instruction: str, first: str, second: str) -> Request:
    params = SamplingParams(max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed)
    user = TEMPLATE.format(instruction=instruction, first=_cut(first, cfg.max_answer_chars),
                           second=_cut(second, cfg.max_answer_chars))
    return Request.chat(user, system=SYSTEM, params=params)


def both_orders(cfg: PairwiseConfig, instructions: Sequence[str], answers_m: Sequence[str],
                answers_b: Sequence[str]) -> list[Request]:
    """Two requests per instruction, M's answer first and then second; any backend can run them."""
    if not len(instructions) == len(answers_m) == len(answers_b):
        raise ValueError("pairwise judging needs one answer from each model per instruction")
    out = []
    for instruction, m, b in zip(instructions, answers_m, answers_b):
        out += [judge_request(cfg, instruction, m, b), judge_request(cfg, instruction, b, m)]
    return out


def collect(completions: Sequence[Completion]) -> list[PairJudgement]:
    """The completions of `both_orders` (two per instruction), paired into judgements."""
    if len(completions) % 2:
        raise ValueError(f"pairwise judging needs both orders of every pair, got {len(completions)} replies")
    judgements = []
    for ab, ba in zip(completions[::2], completions[1::2]):
        judgements.append(PairJudgement(
            parse_verdict(ab.text) if ab.ok else None, parse_verdict(ba.text) if ba.ok else None,
            ab.text if ab.ok else f"(judge call failed: {ab.error})",
            ba.text if ba.ok else f"(judge call failed: {ba.error})"))
    return judgements
