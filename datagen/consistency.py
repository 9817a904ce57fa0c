"""Self-consistency for objective items: several answers, keep the majority, drop the inconsistent.

Hunyuan-Large §2.1.1 samples several answers per objective question and drops items whose
answers disagree. Each response gets a final answer by the item's kind:

- math: the last `\\boxed{...}`, else "the answer is X" / "Answer: X", else "... = X" at the
  end, else the last number; two answers agree when math-verify says so (falling back to a
  normalised string match when it cannot parse them);
- code: the answer's Python code block runs in a sandbox against the item's `tests` (assert
  lines); answers that pass agree. Without tests the programs run on their own and agree when
  they print the same stdout (programs that print nothing agree only in running cleanly);
- short answers (closed Q&A): normalised match (case, punctuation, whitespace, articles).

Decisions: agreement = size of the largest class / number of responses (a response with no
extractable answer, or a program that fails, counts against agreement). An item is kept when
agreement >= `threshold` and the largest class is unique; responses are then narrowed to the
majority class. Rejections: `too_few_answers` (fewer than `min_answers` responses: one sample
cannot disagree with itself), `no_final_answer` (nothing extractable in any response),
`inconsistent` (detail `agreement=0.25 answers=[...]`). Non-objective records pass with
method `skipped`.

The code sandbox lives in datagen/sandbox.py.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable, NamedTuple

import apache_beam as beam

from datagen.answers import extract_math_answer, extract_short_answer, math_equivalent
from datagen.config import option
from datagen.python_code import extract_code
from datagen.record import Consistency, Record
from datagen.sandbox import run_sandboxed
from datagen.stage import RecordFn, StageResult, run_stage

STAGE = "consistency"


@dataclass
class ConsistencyConfig:
    threshold: float = option(0.5, "minimum share of answers agreeing with the majority")
    min_answers: int = option(2, "fewer responses than this cannot show agreement: too_few_answers")
    math_domains: list[str] = option(["math"], "domains whose answers are compared with math-verify")
    code_domains: list[str] = option(["code"], "domains whose answers run in the sandbox")
    code_timeout_seconds: float = option(5.0, "wall-clock limit per program (CPU limit: the same, rounded up)")
    code_memory_mb: int = option(256, "address-space limit per program")
    code_output_kb: int = option(256, "largest file (stdout included) a program may write")
    network_namespace: bool = option(True, "also cut the network with `unshare --net` where the host allows")


class Answer(NamedTuple):
    """One response's final answer: `shown` is stored on the record ("" = none found);
    `value` is what gets compared (None = agrees with nothing, e.g. a failing program)."""

    shown: str
    value: object | None


# -- grouping ----------------------------------------------------------------------------------
def group_answers(answers: list[Answer], same: Callable[[object, object], bool]) -> list[list[int]]:
    """Equivalence classes (indices into `answers`), in order of first appearance. Answers
    with value None join no class."""
    classes: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer.value is None:
            continue
        home = next((c for c in classes if _same(same, answers[c[0]].value, answer.value)), None)
        if home is None:
            classes.append([i])
        else:
            home.append(i)
    return classes


def _same(same: Callable[[object, object], bool], a: object, b: object) -> bool:
    try:
        return bool(same(a, b))
    except Exception:  # noqa: BLE001 - an equivalence check that fails means "different"
        return False


# -- the stage ---------------------------------------------------------------------------------
def answer_method(record: Record, cfg: ConsistencyConfig) -> str:
    if record.tests.strip() or record.domain in cfg.code_domains:
        return "code"
    return "math" if record.domain in cfg.math_domains else "short"


def _code_answer(text: str, tests: str, cfg: ConsistencyConfig) -> Answer:
    code = extract_code(text)
    if code is None:
        return Answer("", None)
    result = run_sandboxed(code, tests, cfg.code_timeout_seconds, cfg.code_memory_mb,
                           cfg.code_output_kb, cfg.network_namespace)
    if not result.ok:
        return Answer(f"fail: {result.error}", None)
    if tests.strip():
        return Answer("pass", "pass")
    stdout = "\n".join(line.rstrip() for line in result.stdout.strip().splitlines())
    return Answer(f"stdout: {stdout[:200]}" if stdout else "stdout: (empty)", stdout)


def final_answers(record: Record, method: str, cfg: ConsistencyConfig) -> list[Answer]:
    out = []
    for response in record.responses:
        if method == "code":
            out.append(_code_answer(response.text, record.tests, cfg))
            continue
        extracted = (extract_math_answer if method == "math" else extract_short_answer)(response.text)
        out.append(Answer(extracted or "", extracted))
    return out


class ConsistencyFn(RecordFn):
    stage = STAGE

    def __init__(self, cfg: ConsistencyConfig) -> None:
        self.cfg = cfg

    def transform(self, record: Record) -> Record:
        if not record.objective:
            return dataclasses.replace(record, consistency=Consistency(method="skipped"))
        method = answer_method(record, self.cfg)
        record = record.with_lineage(STAGE, params={"method": method, "threshold": self.cfg.threshold})
        if len(record.responses) < self.cfg.min_answers:
            return record.rejected(STAGE, "too_few_answers",
                                   f"{len(record.responses)} responses, need {self.cfg.min_answers}")
        answers = final_answers(record, method, self.cfg)
        shown = [a.shown for a in answers]
        if not any(shown):
            return record.rejected(STAGE, "no_final_answer", f"method={method} responses={len(answers)}")
        classes = group_answers(answers, math_equivalent if method == "math" else _equal)
        sizes = sorted((len(c) for c in classes), reverse=True) or [0]
        agreement = sizes[0] / len(answers)
        tie = len(sizes) > 1 and sizes[0] == sizes[1] and agreement >= self.cfg.threshold
        if agreement < self.cfg.threshold or tie or not classes:
            detail = (f"agreement={agreement:.2f}{' tie' if tie else ''} "
                      f"answers={json.dumps([s[:80] for s in shown], ensure_ascii=False)}")
            return record.rejected(STAGE, "inconsistent", detail)
        majority = max(classes, key=len)  # unique: ties were rejected above
        responses = [dataclasses.replace(record.responses[i], final_answer=shown[i]) for i in majority]
        summary = Consistency(answers=shown, majority=shown[majority[0]], agreement=agreement, method=method)
        return dataclasses.replace(record, responses=responses, consistency=summary)


def _equal(a: object, b: object) -> bool:
    return a == b


class ConsistencyStage(beam.PTransform):
    """Records → StageResult(kept, rejected) by self-consistency of their answers."""

    def __init__(self, cfg: ConsistencyConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def expand(self, pcoll: beam.PCollection) -> StageResult:
        return run_stage(pcoll, "Consistency", ConsistencyFn(self.cfg))
