"""The one record schema every datagen stage reads and extends.

A Record starts as a seed document, becomes an instruction, gathers evolution steps,
responses, consistency statistics and a critique, and ends `kept` or `rejected` with the
stage and reason. Lineage (model, template id/version, sampling params per stage) travels
with it. `to_dict`/`from_dict` round-trip through JSONL and Arrow/Parquet without loss.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

KEPT = "kept"
REJECTED = "rejected"
CRITIQUE_ASPECTS = ("accuracy", "relevance", "completeness", "usefulness", "clarity")
# What verification says about one answer of an objective item: it agrees with the verified majority
# or passes its tests (verified), it is proven wrong (another final answer, failing tests, a crash),
# or nothing could be checked (no final answer, no test executed).
VERIFIED, WRONG, UNVERIFIED = "verified", "wrong", "unverified"


@dataclass
class LineageStep:
    """Who touched the record: one entry per model call or rule stage."""

    stage: str
    model: str = ""
    template_id: str = ""
    template_version: str = ""
    params_json: str = ""  # sampling params as JSON: a struct of varying keys would not round-trip


@dataclass
class EvolutionStep:
    round: int
    operation: str  # clarify | expand | harder
    before: str
    after: str
    accepted: bool = True
    reason: str = ""


@dataclass
class Response:
    text: str
    model: str = ""
    finish_reason: str = ""
    final_answer: str = ""
    score: float | None = None  # critique mean for this response, used for DPO views
    verdict: str = ""  # objective items: VERIFIED | WRONG | UNVERIFIED below; "" when not checked


@dataclass
class Consistency:
    answers: list[str] = field(default_factory=list)
    majority: str = ""
    agreement: float = 0.0
    method: str = ""  # math | code | short | skipped
    outcome: str = ""  # verified | unverifiable (continues as subjective: the critique decides) | subjective


@dataclass
class Critique:
    scores: dict[str, int] = field(default_factory=dict)  # aspect → 1..4
    rationale: str = ""
    model: str = ""
    mean: float = 0.0
    expected: dict[str, float] = field(default_factory=dict)  # aspect → expected score from logprobs
    grading: str = ""  # logprobs | sampled: what `mean` is made of


@dataclass
class Record:
    seed_id: str
    domain: str = "general"
    source: str = ""
    seed_text: str = ""
    instruction: str = ""
    language: str = ""
    objective: bool = False
    tests: str = ""  # code items: assert statements the answers must pass
    reference: str = ""  # math items from a referenced seed: the exact final answer (never shown to a model)
    evolution: list[EvolutionStep] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    response: str = ""  # the chosen answer
    consistency: Consistency | None = None
    critique: Critique | None = None
    lineage: list[LineageStep] = field(default_factory=list)
    status: str = KEPT
    reject_stage: str = ""
    reject_reason: str = ""
    reject_detail: str = ""
    id: str = ""

    def __post_init__(self) -> None:
        if not self.id:
            self.id = self.content_id()

    def content_id(self) -> str:
        """Stable id: hash of what the record *is* (seed + instruction), not of its history."""
        key = json.dumps([self.seed_id, self.domain, self.instruction], ensure_ascii=False)
        return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]

    def rejected(self, stage: str, reason: str, detail: str = "") -> "Record":
        return dataclasses.replace(
            self, status=REJECTED, reject_stage=stage, reject_reason=reason, reject_detail=detail[:2000]
        )

    def with_lineage(self, stage: str, model: str = "", template_id: str = "",
                     template_version: str = "", params: dict[str, Any] | None = None) -> "Record":
        step = LineageStep(stage, model, template_id, template_version,
                           json.dumps(params or {}, sort_keys=True))
        return dataclasses.replace(self, lineage=[*self.lineage, step])

    @property
    def referenced(self) -> bool:
        """An item a seed gave with its own check: an exact answer, or tests (a given item's instruction is
        its seed text; datagen/readers/seed_readers.py `given_item`). Its answers are judged against that
        check, and its instruction is used as written: never evolved, never capped."""
        return bool(self.reference.strip()) or (bool(self.tests.strip()) and self.instruction == self.seed_text)

    @property
    def verified(self) -> bool:
        """An objective item whose answers verification could check (majority or tests)."""
        return self.consistency is not None and self.consistency.outcome == VERIFIED

    def answer_candidates(self) -> list[int]:
        """Indices of the responses that may become the chosen answer: only verified ones on a verified
        item; never one verification proved wrong."""
        if self.verified:
            return [i for i, r in enumerate(self.responses) if r.verdict == VERIFIED]
        return [i for i, r in enumerate(self.responses) if r.verdict != WRONG]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        data = dict(data)
        data["evolution"] = [EvolutionStep(**s) for s in data.get("evolution") or []]
        data["responses"] = [Response(**r) for r in data.get("responses") or []]
        data["lineage"] = [LineageStep(**s) for s in data.get("lineage") or []]
        if data.get("consistency") is not None:
            data["consistency"] = Consistency(**data["consistency"])
        if data.get("critique") is not None:
            data["critique"] = Critique(**data["critique"])
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "Record":
        return cls.from_dict(json.loads(line))


_LINEAGE = pa.struct([("stage", pa.string()), ("model", pa.string()), ("template_id", pa.string()),
                      ("template_version", pa.string()), ("params_json", pa.string())])
_EVOLUTION = pa.struct([("round", pa.int64()), ("operation", pa.string()), ("before", pa.string()),
                        ("after", pa.string()), ("accepted", pa.bool_()), ("reason", pa.string())])
_RESPONSE = pa.struct([("text", pa.string()), ("model", pa.string()), ("finish_reason", pa.string()),
                       ("final_answer", pa.string()), ("score", pa.float64()), ("verdict", pa.string())])
_CONSISTENCY = pa.struct([("answers", pa.list_(pa.string())), ("majority", pa.string()),
                          ("agreement", pa.float64()), ("method", pa.string()), ("outcome", pa.string())])
# scores as a struct of the five aspects (null when not scored), not a map: `datasets` has no
# feature type for Arrow maps, so load_dataset would fail on the Parquet shards.
_SCORES = pa.struct([(aspect, pa.int64()) for aspect in CRITIQUE_ASPECTS])
_EXPECTED = pa.struct([(aspect, pa.float64()) for aspect in CRITIQUE_ASPECTS])
_CRITIQUE = pa.struct([("scores", _SCORES), ("rationale", pa.string()), ("model", pa.string()),
                       ("mean", pa.float64()), ("expected", _EXPECTED), ("grading", pa.string())])

ARROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("seed_id", pa.string()), ("domain", pa.string()), ("source", pa.string()),
    ("seed_text", pa.string()), ("instruction", pa.string()), ("language", pa.string()),
    ("objective", pa.bool_()), ("tests", pa.string()), ("reference", pa.string()),
    ("evolution", pa.list_(_EVOLUTION)), ("responses", pa.list_(_RESPONSE)), ("response", pa.string()),
    ("consistency", _CONSISTENCY), ("critique", _CRITIQUE), ("lineage", pa.list_(_LINEAGE)),
    ("status", pa.string()), ("reject_stage", pa.string()), ("reject_reason", pa.string()),
    ("reject_detail", pa.string()),
])


def to_arrow(records: list[Record]) -> pa.Table:
    """Records → Arrow table. Aspects outside CRITIQUE_ASPECTS are not representable: they raise."""
    rows = [r.to_dict() for r in records]
    for row in rows:
        if row["critique"] is not None:
            for key in ("scores", "expected"):
                values = row["critique"][key]
                unknown = sorted(set(values) - set(CRITIQUE_ASPECTS))
                if unknown:
                    raise ValueError(f"record {row['id']}: unknown critique aspects {unknown}")
                row["critique"][key] = {aspect: values.get(aspect) for aspect in CRITIQUE_ASPECTS}
    return pa.Table.from_pylist(rows, schema=ARROW_SCHEMA)


def from_arrow(table: pa.Table) -> list[Record]:
    records = []
    for row in table.to_pylist():
        if row.get("critique") is not None:
            for key in ("scores", "expected"):
                values = row["critique"].get(key) or {}
                row["critique"][key] = {a: s for a, s in values.items() if s is not None}
        records.append(Record.from_dict(row))
    return records
