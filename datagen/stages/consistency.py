"""Self-consistency and verification for objective items: which answers are right, which are proven wrong.

Hunyuan-Large §2.1.1 samples several answers per objective question and drops items whose answers
disagree. Here every answer also gets a `verdict` (datagen/record.py): `verified`, `wrong` (proven:
the DPO view's best `rejected`) or `unverified`; the item gets an `outcome`.

- math: each answer's final value (the last `\\boxed{...}`, "the answer is X", "... = X", the last
  number); answers agreeing by math-verify form classes. agreement = largest class / answers. When
  agreement >= `threshold` and the largest class is unique, the item is `verified`: the majority's
  answers are `verified`, an answer proven different from it (both numbers, or both parsed by
  math-verify and unequal) is `wrong`, any other `unverified`.
- short answers (closed Q&A, other domains): the same with normalised strings, but a minority string
  proves nothing (a paraphrase of the right answer differs too): it stays `unverified`.
- code: test outcomes, not stdout. Each answer's Python block runs in the sandbox with the item's
  `tests` (assert lines); the tests must call a name the answer defines, else the answer fails
  ("defines none of ..."); passing is `verified`, failing `wrong`. agreement = share passing.
  Without tests nothing is checked: each program still runs alone (a crash makes it `wrong`, a
  clean run is `unverified`, since no test was executed) and the item continues as subjective with
  outcome `unverifiable`: the critique decides, and its answers never count as verified.

- referenced items (a seed gave `reference`, the exact final answer): each answer is judged against
  the reference, not against the other samples: equal by math-verify is `verified` (right), proven
  different `wrong`, unreadable `unverified`; an expression that equals the reference without stating
  a value ("29 + 64") is `wrong`; a right value reached through a false step of working ("18 - 9 = 17",
  `check_working`) is `unverified`; method `reference`, agreement = share right, outcome
  `verified` when at least one answer is right, else rejected `no_right_answer`. A given code item's
  tests are its reference: one passing answer verifies it.

Rejections: `too_few_answers` (fewer than `min_answers` responses), `no_final_answer` (nothing
extractable in any response), `inconsistent` (detail `agreement=0.25 answers=[...]`), `all_answers_fail`
(no tests, and every program crashed). Non-objective records pass with method `skipped`, outcome
`subjective`. Every response is kept, with its verdict; the critique chooses among the candidates
(`Record.answer_candidates`). The code sandbox lives in datagen/filters/sandbox.py.
"""
from __future__ import annotations

import builtins
import dataclasses
import json
from dataclasses import dataclass
from typing import Callable, NamedTuple

import apache_beam as beam

from datagen.filters.answers import (extract_math_answer, extract_short_answer, math_differs, math_equivalent,
                                     false_equations, states_the_value)
from datagen.config_loader import option
from datagen.filters.python_code import called_names, defined_names, extract_code
from datagen.record import UNVERIFIED, VERIFIED, WRONG, Consistency, Record
from datagen.filters.sandbox import run_sandboxed
from datagen.stage import RecordFn, StageResult, run_stage

STAGE = "consistency"
UNVERIFIABLE, SUBJECTIVE = "unverifiable", "subjective"


@dataclass
class ConsistencyConfig:
    threshold: float = option(0.5, "minimum share of answers agreeing with the majority (code: passing the tests)")
    min_answers: int = option(2, "fewer responses than this cannot show agreement: too_few_answers")
    math_domains: list[str] = option(["math"], "domains whose answers are compared with math-verify")
    code_domains: list[str] = option(["code"], "domains whose answers run in the sandbox")
    code_timeout_seconds: float = option(5.0, "wall-clock limit per program (CPU limit: the same, rounded up)")
    code_memory_mb: int = option(256, "address-space limit per program")
    code_output_kb: int = option(256, "largest file (stdout included) a program may write")
    network_namespace: bool = option(True, "also cut the network with `unshare --net` where the host allows")
    check_working: bool = option(True, "a referenced math answer with the right final value but a false step "
                                       "in its working (\"18 - 9 = 17\") is unverified, not right: no SFT row, "
                                       "never a chosen answer (27 of the 658 math SFT rows of the 2026-12-07 loop)")


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


# -- reading answers ---------------------------------------------------------------------------
def answer_method(record: Record, cfg: ConsistencyConfig) -> str:
    if record.tests.strip() or record.domain in cfg.code_domains:
        return "code"
    return "math" if record.domain in cfg.math_domains else "short"


def code_verdict(text: str, tests: str, cfg: ConsistencyConfig) -> tuple[str, str]:
    """(verdict, what is shown) for one code answer: its program run with the tests, or alone."""
    code = extract_code(text)
    if code is None:
        return UNVERIFIED, "no code"
    if tests.strip():
        called = called_names(tests) - set(dir(builtins))
        if called and not called & defined_names(code):
            return WRONG, f"fail: defines none of {', '.join(sorted(called))[:120]}"
    result = run_sandboxed(code, tests, cfg.code_timeout_seconds, cfg.code_memory_mb,
                           cfg.code_output_kb, cfg.network_namespace)
    if not result.ok:
        return WRONG, f"fail: {result.error}"
    return (VERIFIED, "pass") if tests.strip() else (UNVERIFIED, "ran: no test executed")


def final_answers(record: Record, method: str) -> list[Answer]:
    extract = extract_math_answer if method == "math" else extract_short_answer
    return [Answer(a or "", a) for a in (extract(r.text) for r in record.responses)]


# -- the stage ---------------------------------------------------------------------------------
class ConsistencyFn(RecordFn):
    stage = STAGE

    def __init__(self, cfg: ConsistencyConfig) -> None:
        self.cfg = cfg

    def transform(self, record: Record) -> Record:
        if not record.objective:
            return dataclasses.replace(record, consistency=Consistency(method="skipped", outcome=SUBJECTIVE))
        method = answer_method(record, self.cfg)
        record = record.with_lineage(STAGE, params={"method": method, "threshold": self.cfg.threshold})
        if len(record.responses) < self.cfg.min_answers:
            return record.rejected(STAGE, "too_few_answers",
                                   f"{len(record.responses)} responses, need {self.cfg.min_answers}")
        if method == "code":
            return self.check_code(record)
        if record.reference.strip():
            return self.check_reference(record, method)
        return self.check_answers(record, method)

    def check_reference(self, record: Record, method: str) -> Record:
        """Each answer against the seed's exact answer, not against the other samples: equal is `verified`
        (right), proven different `wrong`, nothing readable `unverified`. Kept when one answer is right."""
        answers = final_answers(record, method)
        shown, reference = [a.shown for a in answers], record.reference.strip()
        same = math_equivalent if method == "math" else _equal

        def verdict(answer: Answer, text: str) -> str:
            if not answer.shown:
                return UNVERIFIED
            if _same(same, answer.value, reference if method == "math" else extract_short_answer(reference)):
                if method != "math":
                    return VERIFIED
                if not states_the_value(answer.shown, reference):
                    return WRONG  # "29 + 64" equals 93 but restates the question: only a stated value is right
                return UNVERIFIED if self.cfg.check_working and false_equations(text) else VERIFIED
            if method == "math" and not math_differs(answer.shown, reference):
                return UNVERIFIED  # neither equal nor provably different (e.g. unparseable)
            return WRONG

        verdicts = [verdict(a, r.text) for a, r in zip(answers, record.responses)]
        right = verdicts.count(VERIFIED)
        record = self._decided(record, shown, verdicts, reference, right / len(answers), "reference",
                               VERIFIED if right else WRONG)
        if not right:
            return record.rejected(STAGE, "no_right_answer",
                                   f"0 of {len(answers)} answers equal the reference {reference!r}; read: "
                                   f"{json.dumps([s[:80] for s in shown], ensure_ascii=False)}")
        return record

    def check_answers(self, record: Record, method: str) -> Record:
        answers = final_answers(record, method)
        shown = [a.shown for a in answers]
        if not any(shown):
            return record.rejected(STAGE, "no_final_answer", f"method={method} responses={len(answers)}")
        classes = group_answers(answers, math_equivalent if method == "math" else _equal)
        sizes = sorted((len(c) for c in classes), reverse=True) or [0]
        agreement = sizes[0] / len(answers)
        tie = len(sizes) > 1 and sizes[0] == sizes[1] and agreement >= self.cfg.threshold
        if agreement < self.cfg.threshold or tie or not classes:
            return self._inconsistent(record, agreement, shown, tie)
        majority = max(classes, key=len)  # unique: ties were rejected above
        reference = shown[majority[0]]

        def verdict(i: int) -> str:
            if i in majority:
                return VERIFIED
            proven = method == "math" and shown[i] and math_differs(shown[i], reference)
            return WRONG if proven else UNVERIFIED

        return self._decided(record, shown, [verdict(i) for i in range(len(answers))], reference, agreement,
                             method, VERIFIED)

    def check_code(self, record: Record) -> Record:
        checked = [code_verdict(r.text, record.tests, self.cfg) for r in record.responses]
        verdicts, shown = [v for v, _ in checked], [s for _, s in checked]
        if not record.tests.strip():  # nothing to verify against: the critique decides
            if all(v == WRONG for v in verdicts):
                return record.rejected(STAGE, "all_answers_fail",
                                       "no tests; every program failed: " + json.dumps(shown, ensure_ascii=False))
            return self._decided(record, shown, verdicts, "", 0.0, "code", UNVERIFIABLE)
        agreement = verdicts.count(VERIFIED) / len(verdicts)
        if record.referenced and agreement:  # a given item's tests are its reference: one pass is enough
            return self._decided(record, shown, verdicts, "pass", agreement, "code", VERIFIED)
        if agreement < self.cfg.threshold or not agreement:
            failed = self._decided(record, shown, verdicts, "", agreement, "code", WRONG)  # verdicts kept
            return self._inconsistent(failed, agreement, shown, False)
        return self._decided(record, shown, verdicts, "pass", agreement, "code", VERIFIED)

    def _inconsistent(self, record: Record, agreement: float, shown: list[str], tie: bool) -> Record:
        detail = (f"agreement={agreement:.2f}{' tie' if tie else ''} "
                  f"answers={json.dumps([s[:80] for s in shown], ensure_ascii=False)}")
        return record.rejected(STAGE, "inconsistent", detail)

    @staticmethod
    def _decided(record: Record, shown: list[str], verdicts: list[str], majority: str, agreement: float,
                 method: str, outcome: str) -> Record:
        responses = [dataclasses.replace(r, final_answer=s, verdict=v)
                     for r, s, v in zip(record.responses, shown, verdicts)]
        summary = Consistency(answers=shown, majority=majority, agreement=agreement, method=method, outcome=outcome)
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
