"""Critique model: four-tier scores on accuracy, relevance, completeness, usefulness, clarity.

Hunyuan-Large §3.1.2 scores SFT data with a critique model on five aspects, four tiers each.
Here every response of a record gets its own critique request (so the best and the worst of N
are known for the DPO view); each response's `score` is the mean of its parsed aspects, the best
one becomes `record.response` and its critique `record.critique`. The record is rejected with
`low_critique_score` when that best mean is below `min_mean` or one of its aspects is below
`min_each`, and with `critique_unparseable` when no critique could be read at all.

The parser (datagen/critique_parse.py) takes what models really write: JSON, "Accuracy: 3/4",
markdown tables, Chinese aspect names. A critique naming fewer than `min_aspects` aspects counts
as unparsed: its response gets no score.

The same prompts and parser serve without Beam (the DPO reward judge): `critique_requests(pairs,
cfg)` builds the requests for (question, answer) pairs, any LLM backend runs them, and
`read_critique(completion_text, cfg)` gives a ParsedCritique (`scores` per aspect, `mean`, or
`problem` when unusable).

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
from dataclasses import dataclass
from typing import Iterable

import apache_beam as beam

from datagen.config import option
from datagen.critique_parse import ParsedCritique, parse_critique
from datagen.inference.base import Completion, Request, SamplingParams
from datagen.inference.registry import ModelConfig
from datagen.record import Critique, Record
from datagen.stage import LLMStageFn, StageResult, run_stage

STAGE = "critique"
STYLES = ("fewshot", "chat")


@dataclass
class CritiqueConfig:
    model: str = option("default", "the judge: a key of `models`")
    style: str = option("fewshot", "fewshot: completion prompt with graded examples (small judges); "
                                   "chat: instructions (judges that follow them)")
    min_mean: float = option(2.5, "keep items whose chosen answer averages at least this (1..4)")
    min_each: int = option(1, "and no aspect below this (1 = no per-aspect floor, for the weak demo judge)")
    min_aspects: int = option(3, "a critique scoring fewer aspects than this counts as unparsed")
    max_answer_chars: int = option(4000, "longer answers are cut in the prompt (the judge's context is short)")
    max_tokens: int = option(128, "room for five scores and a one-sentence rationale")
    temperature: float = option(0.0, "sampling temperature; 0: greedy, the same grade on every run")
    seed: int = option(4567, "sampling seed (reproducible runs, cache hits)")

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


# -- plain functions: the stage below and the DPO reward judge both use these -------------------
def critique_params(cfg: CritiqueConfig) -> SamplingParams:
    """One greedy-by-default sample; a few-shot critique stops where the next example would start."""
    stop = FEWSHOT_STOP if cfg.style == "fewshot" else ()
    return SamplingParams(n=1, max_tokens=cfg.max_tokens, temperature=cfg.temperature, seed=cfg.seed, stop=stop)


def template_id(cfg: CritiqueConfig) -> str:
    return FEWSHOT_TEMPLATE_ID if cfg.style == "fewshot" else CHAT_TEMPLATE_ID


def critique_requests(pairs: Iterable[tuple[str, str]], cfg: CritiqueConfig) -> list[Request]:
    """One request per (question, answer) pair, for any LLM backend."""
    params = critique_params(cfg)
    return [critique_request(question, answer, cfg, params) for question, answer in pairs]


def read_critique(completion_text: str, cfg: CritiqueConfig) -> ParsedCritique:
    """The judge's completion → scores per aspect, rationale and `mean` (None when unusable)."""
    return parse_critique(critique_text(completion_text, cfg.style), cfg.min_aspects)


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

    def requests(self, record: Record) -> list[Request] | Record:
        if not record.responses:
            return record.rejected(STAGE, "no_responses", "nothing to critique")
        return critique_requests([(record.instruction, r.text) for r in record.responses], self.cfg)

    def complete(self, record: Record, completions: list[Completion]) -> Record:
        record = record.with_lineage(STAGE, self.llm.identity, template_id(self.cfg), TEMPLATE_VERSION,
                                     critique_params(self.cfg).to_dict())
        parsed = [read_critique(c.text, self.cfg) for c in completions]
        responses = [dataclasses.replace(r, score=p.mean) for r, p in zip(record.responses, parsed)]
        record = dataclasses.replace(record, responses=responses)
        scored = [i for i, p in enumerate(parsed) if not p.problem]
        if not scored:
            shown = critique_text(completions[0].text, self.cfg.style)
            return record.rejected(STAGE, "critique_unparseable", f"{parsed[0].problem}: {shown[:300]!r}")
        best = max(scored, key=lambda i: (responses[i].score, -i))  # ties: the earlier response
        critique = Critique(scores=parsed[best].scores, rationale=parsed[best].rationale,
                            model=self.llm.identity, mean=parsed[best].mean)
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
