"""Critique model: four-tier scores on accuracy, relevance, completeness, usefulness, clarity.

Hunyuan-Large §3.1.2 scores SFT data with a critique model on five aspects, four tiers each.
Every candidate answer of a record gets its own critique request (so the best and the worst of N
are known for the DPO view); on an objective item verification already settled, only its verified
answers are candidates, and an answer proven wrong never is (`Record.answer_candidates`). Each
answer's `score` is its critique mean; the best becomes `record.response` and its critique
`record.critique`. Rejections: `low_critique_score` (best mean below `min_mean`, or one aspect below
`min_each`), `critique_unparseable` (no critique could be read), `no_candidates`. A referenced item
(checked against its seed's reference) is not judged: its first right answer becomes `response`.

Grades: with `grading: logprobs` the judge returns its token probabilities and each aspect's grade is
the expected tier Σ s·p(s) at the position where it wrote the score (G-Eval); backends without
logprobs (transformers) fall back to the sampled digits, as does `grading: sampled`.

The judge check that runs before any stage: datagen/stages/judge_check.py.

A rationale that repeats the prompt's own example (the few-shot prompt's "Correct and clear, though
brief.", the chat prompt's "one sentence explaining the scores") is not a rationale: `read_critique`
stores it as "" (`copied_rationale`), the stage counts it (`copied_rationales`), the judge check too.

The same prompts and parser serve without Beam (the DPO reward judge): `critique_requests(pairs,
cfg)`, any LLM backend, `read_critique(completion, cfg)` → ParsedCritique (`mean`, or `problem`).
The parser (datagen/filters/critique_parse.py) takes JSON, "Accuracy: 3/4", tables, Chinese aspect names.

The embedded demo judge, SmolLM2-135M, is a weak critic: asked in chat it answered the question
instead (0 of 8 parsed), hence the few-shot completion prompt, and its AUC on the calibration pairs
is in docs and the card of every run. With a real judge use `style: chat`, `grading: logprobs`
where the endpoint returns logprobs (vLLM does), `min_mean: 3.0`, `min_each: 2`, `min_auc: 0.75`.
"""
from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics

from datagen.config_loader import option
from datagen.filters.critique_parse import ParsedCritique, copies_example, expected_scores, parse_critique
from datagen.inference.base import Completion, Request, SamplingParams
from datagen.inference.registry import ModelConfig
from datagen.record import CRITIQUE_ASPECTS, Critique, Record
from datagen.stage import STATS_NAMESPACE_PREFIX, LLMStageFn, StageResult, run_stage

log = logging.getLogger(__name__)
STAGE = "critique"
STYLES = ("fewshot", "chat")
GRADINGS = ("logprobs", "sampled")
CHECK_PLACES = ("auto", "launcher", "job")
COPIED_RATIONALES = "copied_rationales"  # counter in the critique stage's namespace


@dataclass
class CritiqueConfig:
    model: str = option("default", "the judge: a key of `models`")
    style: str = option("fewshot", "fewshot: completion prompt with graded examples (small judges); "
                                   "chat: instructions (judges that follow them)")
    min_mean: float = option(2.3, "keep items whose chosen answer's grade is at least this (1..4)")
    min_each: int = option(1, "and no aspect below this (1 = no per-aspect floor, for the weak demo judge)")
    min_aspects: int = option(3, "a critique scoring fewer aspects than this counts as unparsed")
    max_answer_chars: int = option(4000, "longer answers are cut in the prompt (the judge's context is short)")
    max_tokens: int = option(128, "room for five scores and a one-sentence rationale")
    temperature: float = option(0.0, "sampling temperature; 0: greedy, the same grade on every run")
    seed: int = option(4567, "sampling seed (reproducible runs, cache hits)")
    grading: str = option("logprobs", "logprobs: expected tier from the judge's token probabilities where the "
                                      "backend returns them (else the digits); sampled: the digits it wrote")
    top_logprobs: int = option(8, "alternatives per token asked for with grading logprobs (vLLM allows 20)")
    aspects: list[str] = option(["accuracy"], "aspects averaged into an answer's grade (all five are recorded); "
                                              "the demo judge ranks by accuracy alone (see the module docstring)")
    judge_check: bool = option(True, "grade the calibration pairs before the run; stats.json gets judge_check")
    calibration_file: str = option("", "calibration pairs (JSONL); '' = datagen/data/judge_calibration.jsonl")
    min_auc: float = option(0.0, "stop the run (exit 2) before any stage when the judge check's AUC is below "
                                 "this; 0: never stop (a judge below 0.6 is still reported loudly)")
    must_beat_length: bool = option(True, "with min_auc > 0, also stop when the judge's AUC is not above what "
                                          "preferring the longer answer scores on the same calibration pairs")
    judge_check_where: str = option("auto", "auto: from the launcher when the judge is reachable from it (a local "
                                            "runner, an openai endpoint), else as the job's first step on the "
                                            "workers; launcher; job")

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"critique.style must be one of {', '.join(STYLES)}, got {self.style!r}")
        if self.grading not in GRADINGS:
            raise ValueError(f"critique.grading must be one of {', '.join(GRADINGS)}, got {self.grading!r}")
        unknown = [a for a in self.aspects if a not in CRITIQUE_ASPECTS]
        if unknown or not self.aspects:
            raise ValueError(f"critique.aspects: {unknown or 'empty'}; choose from {', '.join(CRITIQUE_ASPECTS)}")
        if not 0.0 <= self.min_auc <= 1.0:
            raise ValueError(f"critique.min_auc must be in [0, 1], got {self.min_auc}")
        if self.judge_check_where not in CHECK_PLACES:
            raise ValueError(f"critique.judge_check_where must be one of {', '.join(CHECK_PLACES)}, "
                             f"got {self.judge_check_where!r}")


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
# The prompts' own example rationales: a critique repeating one of them gives no reason of its own.
PROMPT_RATIONALES = {"fewshot": tuple(re.findall(r"^Rationale: (.+)$", FEWSHOT_PROMPT, re.MULTILINE)),
                     "chat": tuple(re.findall(r"^Rationale: (.+)$", CHAT_PROMPT, re.MULTILINE))}


# -- plain functions: the stage below and the DPO reward judge both use these -------------------
def critique_params(cfg: CritiqueConfig) -> SamplingParams:
    """One greedy-by-default sample; a few-shot critique stops where the next example would start."""
    stop = FEWSHOT_STOP if cfg.style == "fewshot" else ()
    logprobs = cfg.top_logprobs if cfg.grading == "logprobs" else 0
    return SamplingParams(n=1, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed, stop=stop,
                          logprobs=logprobs)


def template_id(cfg: CritiqueConfig) -> str:
    return FEWSHOT_TEMPLATE_ID if cfg.style == "fewshot" else CHAT_TEMPLATE_ID


def critique_requests(pairs: Iterable[tuple[str, str]], cfg: CritiqueConfig) -> list[Request]:
    """One request per (question, answer) pair, for any LLM backend."""
    params = critique_params(cfg)
    return [critique_request(question, answer, cfg, params) for question, answer in pairs]


def read_critique(completion: Completion | str, cfg: CritiqueConfig) -> ParsedCritique:
    """The judge's completion → scores per aspect, rationale and `mean` (None when unusable); with
    grading logprobs and a completion carrying them, `expected` per aspect too (and `mean` from it)."""
    text = completion if isinstance(completion, str) else completion.text
    parsed = parse_critique(critique_text(text, cfg.style), cfg.min_aspects)
    if parsed.rationale and copies_example(parsed.rationale, PROMPT_RATIONALES[cfg.style]):
        parsed = parsed._replace(rationale="", copied_rationale=True)
    if isinstance(completion, str) or cfg.grading != "logprobs" or not completion.logprobs or parsed.problem:
        return parsed
    prefix = FEWSHOT_PREFILL if cfg.style == "fewshot" else ""
    expected = expected_scores(completion.logprobs[0], prefix)
    return parsed._replace(expected={a: v for a, v in expected.items() if a in parsed.scores})


def grade(parsed: ParsedCritique, cfg: CritiqueConfig) -> float | None:
    """An answer's grade: the mean of `cfg.aspects`, expected scores with grading logprobs."""
    return parsed.grade(cfg.aspects, cfg.grading == "logprobs")


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


def describe(grades: dict[str, float], mean: float) -> str:
    return f"mean={mean:.2f} " + " ".join(f"{aspect}={grade:g}" if float(grade).is_integer()
                                           else f"{aspect}={grade:.2f}" for aspect, grade in grades.items())


class CritiqueFn(LLMStageFn):
    stage = STAGE

    def __init__(self, cfg: CritiqueConfig, model: ModelConfig) -> None:
        super().__init__(model)
        self.cfg = cfg

    def setup(self) -> None:
        super().setup()
        self._copied = Metrics.counter(STATS_NAMESPACE_PREFIX + STAGE, COPIED_RATIONALES)

    def requests(self, record: Record) -> list[Request] | Record:
        if not record.responses:
            return record.rejected(STAGE, "no_responses", "nothing to critique")
        if record.referenced and record.verified:  # its answers were checked against the seed's own reference
            return dataclasses.replace(record, response=record.responses[record.answer_candidates()[0]].text)
        candidates = record.answer_candidates()
        if not candidates:
            verdicts = [r.verdict for r in record.responses]
            return record.rejected(STAGE, "no_candidates", f"no answer may be chosen (verdicts {verdicts})")
        return critique_requests([(record.instruction, record.responses[i].text) for i in candidates], self.cfg)

    def complete(self, record: Record, completions: list[Completion]) -> Record:
        record = record.with_lineage(STAGE, self.llm.identity, template_id(self.cfg), TEMPLATE_VERSION,
                                     critique_params(self.cfg).to_dict())
        candidates = record.answer_candidates()
        parsed = dict(zip(candidates, (read_critique(c, self.cfg) for c in completions)))
        responses = [dataclasses.replace(r, score=grade(parsed[i], self.cfg)) if i in parsed else r
                     for i, r in enumerate(record.responses)]
        record = dataclasses.replace(record, responses=responses)
        scored = [i for i in candidates if responses[i].score is not None]
        if not scored:
            problem = parsed[candidates[0]].problem or f"none of {', '.join(self.cfg.aspects)} scored"
            shown = critique_text(completions[0].text, self.cfg.style)
            return record.rejected(STAGE, "critique_unparseable", f"{problem}: {shown[:300]!r}")
        best = max(scored, key=lambda i: (responses[i].score, -i))  # ties: the earlier response
        chosen = parsed[best]
        if chosen.copied_rationale:  # stored as "": the prompt's example is not this judge's reason
            self._copied.inc()
        critique = Critique(scores=chosen.scores, rationale=chosen.rationale, model=self.llm.identity,
                            mean=responses[best].score, expected=chosen.expected,
                            grading="logprobs" if chosen.expected else "sampled")
        record = dataclasses.replace(record, critique=critique, response=responses[best].text)
        grades = {a: chosen.expected.get(a, tier) for a, tier in chosen.scores.items()}
        low = [a for a, value in grades.items() if value < self.cfg.min_each]
        if critique.mean < self.cfg.min_mean or low:
            return record.rejected(STAGE, "low_critique_score", describe(grades, critique.mean))
        return record


class CritiqueStage(beam.PTransform):
    """Records → StageResult(kept, rejected) by the critique model's scores."""

    def __init__(self, cfg: CritiqueConfig, models: dict[str, ModelConfig]) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = models[cfg.model]

    def expand(self, pcoll: beam.PCollection) -> StageResult:
        return run_stage(pcoll, "Critique", CritiqueFn(self.cfg, self.model))
