"""Critique model: four-tier scores on accuracy, relevance, completeness, usefulness, clarity.

Hunyuan-Large §3.1.2 scores SFT data with a critique model on five aspects, four tiers each.
Here every response of a record gets its own critique request (so the best and the worst of N
are known for the DPO view); each response's `score` is the mean of its parsed aspects, the best
one becomes `record.response` and its critique `record.critique`. The record is rejected with
`low_critique_score` when that best mean is below `min_mean` or one of its aspects is below
`min_each`, and with `critique_unparseable` when no critique could be read at all.

The parser takes what models really write: JSON (fenced or not), "Accuracy: 3/4", "accuracy - 3",
markdown tables, bold names, Chinese aspect names (准确性 相关性 完整性 有用性 清晰度), full-width
digits. A value out of 1..4 without a stated scale is dropped (a "5" may mean a 1-5 scale, or
nothing); "x/N" on another scale maps linearly from 1..N onto 1..4. A critique naming fewer
than `min_aspects` aspects counts as unparsed: its response gets no score.

The default style and thresholds are for the embedded demo judge, SmolLM2-135M, which is a weak
critic. Asked in chat, it answered the question instead of grading it (0 of 8 parsed), hence the
few-shot completion prompt. Measured on 12 probe pairs (6 right answers, 6 wrong ones; greedy):
all 12 critiques parsed; means ranged 2.0-3.0, averaging 2.61 for right answers and 2.38 for wrong
ones; accuracy was often 1 whatever the answer (copied from the first example), so `min_each` is
1. `min_mean` 2.5 kept 7 of 12 single answers (4 right, 3 wrong), and more items once the best of
N answers is taken. This filters a little and keeps enough for the demo, but it does not
judge. With a real critique model use `style: chat`, `min_mean: 3.0`, `min_each: 2`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam

from datagen.inference.base import Completion, Request, SamplingParams
from datagen.inference.registry import ModelConfig
from datagen.record import CRITIQUE_ASPECTS, Critique, Record
from datagen.stage import LLMStageFn, StageResult, run_stage

STAGE = "critique"
STYLES = ("fewshot", "chat")


@dataclass
class CritiqueConfig:
    model: str = "default"  # a key of `models`
    style: str = "fewshot"  # fewshot: completion prompt with graded examples (small judges); chat: instructions
    min_mean: float = 2.5  # keep items whose chosen answer averages at least this (1..4)
    min_each: int = 1  # and no aspect below this (1 = no per-aspect floor, for the weak demo judge)
    min_aspects: int = 3  # a critique scoring fewer aspects than this counts as unparsed
    max_answer_chars: int = 4000  # longer answers are cut in the prompt (the judge's context is short)
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int = 4567

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"critique.style must be one of {', '.join(STYLES)}, got {self.style!r}")


# A completion prompt: the model continues after "Accuracy:" in the format of two graded
# examples. Tiny instruct models ignore format instructions in chat (SmolLM2-135M answered the
# question instead of grading it) but continue a pattern reliably.
FEWSHOT_TEMPLATE_ID = "critique/fewshot"
FEWSHOT_PREFILL = "Accuracy:"
FEWSHOT_PROMPT = """Each answer below is graded on five aspects, from 1 (poor) to 4 (excellent).

### Question
What is 2 + 2?
### Answer
2 + 2 = 5.
### Grades
Accuracy: 1
Relevance: 4
Completeness: 2
Usefulness: 1
Clarity: 3
Rationale: On topic and clear, but the sum is wrong.

### Question
Why do we have seasons?
### Answer
Earth's axis is tilted, so each hemisphere gets more direct sunlight for part of the year.
### Grades
Accuracy: 4
Relevance: 4
Completeness: 3
Usefulness: 3
Clarity: 4
Rationale: Correct and clear, though brief.

### Question
{instruction}
### Answer
{answer}
### Grades
""" + FEWSHOT_PREFILL
FEWSHOT_STOP = ("###", "\n\n")

# A chat prompt for judges that follow instructions.
CHAT_TEMPLATE_ID = "critique/chat"
SYSTEM = "You are a strict reviewer. You grade answers and reply only in the requested format."
CHAT_PROMPT = """Grade the answer to the question below. Give each aspect a score from 1 to 4:
1 = poor, 2 = fair, 3 = good, 4 = excellent.

Question:
{instruction}

Answer:
{answer}

Reply in exactly this format, with one number on each line:
Accuracy: N
Relevance: N
Completeness: N
Usefulness: N
Clarity: N
Rationale: one sentence explaining the scores"""
TEMPLATE_VERSION = "1"

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


def mean_score(scores: dict[str, int]) -> float:
    return round(sum(scores.values()) / len(scores), 3) if scores else 0.0


def critique_request(instruction: str, answer: str, cfg: CritiqueConfig, params: SamplingParams) -> Request:
    if len(answer) > cfg.max_answer_chars:
        answer = answer[:cfg.max_answer_chars] + "\n[... answer cut for length ...]"
    fields = {"instruction": instruction.strip(), "answer": answer.strip()}
    if cfg.style == "fewshot":  # markdown headings in the texts would blur the example boundaries
        fields = {k: v.replace("###", "#") for k, v in fields.items()}
        return Request(prompt=FEWSHOT_PROMPT.format(**fields), params=params)
    return Request.chat(CHAT_PROMPT.format(**fields), system=SYSTEM, params=params)


def critique_text(completion_text: str, style: str) -> str:
    """The whole critique: a few-shot completion starts after the prefilled "Accuracy:"."""
    return FEWSHOT_PREFILL + completion_text if style == "fewshot" else completion_text


def describe(scores: dict[str, int], mean: float) -> str:
    return f"mean={mean:.2f} " + " ".join(f"{aspect}={tier}" for aspect, tier in scores.items())


class CritiqueFn(LLMStageFn):
    stage = STAGE

    def __init__(self, cfg: CritiqueConfig, model: ModelConfig) -> None:
        super().__init__(model)
        self.cfg = cfg

    def params(self) -> SamplingParams:
        stop = FEWSHOT_STOP if self.cfg.style == "fewshot" else ()
        return SamplingParams(n=1, max_tokens=self.cfg.max_tokens, temperature=self.cfg.temperature,
                              seed=self.cfg.seed, stop=stop)

    def template_id(self) -> str:
        return FEWSHOT_TEMPLATE_ID if self.cfg.style == "fewshot" else CHAT_TEMPLATE_ID

    def requests(self, record: Record) -> list[Request] | Record:
        if not record.responses:
            return record.rejected(STAGE, "no_responses", "nothing to critique")
        return [critique_request(record.instruction, r.text, self.cfg, self.params()) for r in record.responses]

    def complete(self, record: Record, completions: list[Completion]) -> Record:
        record = record.with_lineage(STAGE, self.llm.identity, self.template_id(), TEMPLATE_VERSION,
                                     self.params().to_dict())
        texts = [critique_text(c.text, self.cfg.style) for c in completions]
        parsed = [parse_critique(text, self.cfg.min_aspects) for text in texts]
        responses = [dataclasses.replace(r, score=None if p.problem else mean_score(p.scores))
                     for r, p in zip(record.responses, parsed)]
        record = dataclasses.replace(record, responses=responses)
        scored = [i for i, p in enumerate(parsed) if not p.problem]
        if not scored:
            return record.rejected(STAGE, "critique_unparseable",
                                   f"{parsed[0].problem}: {texts[0][:300]!r}")
        best = max(scored, key=lambda i: (responses[i].score, -i))  # ties: the earlier response
        critique = Critique(scores=parsed[best].scores, rationale=parsed[best].rationale,
                            model=self.llm.identity, mean=mean_score(parsed[best].scores))
        record = dataclasses.replace(record, critique=critique, response=responses[best].text)
        low = [a for a, tier in critique.scores.items() if tier < self.cfg.min_each]
        if critique.mean < self.cfg.min_mean or low:
            return record.rejected(STAGE, "low_critique_score", describe(critique.scores, critique.mean))
        return record


class CritiqueStage(beam.PTransform):
    """Records → StageResult(kept, rejected) by the critique model's scores."""

    def __init__(self, cfg: CritiqueConfig, models: dict[str, ModelConfig]) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = models[cfg.model]

    def expand(self, pcoll: beam.PCollection) -> StageResult:
        return run_stage(pcoll, "Critique", CritiqueFn(self.cfg, self.model))
