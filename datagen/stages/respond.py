"""Response generation by specialized models, routed per domain.

`routing` maps a domain to a key of `models` ("*" is the fallback); the stage partitions the
records by routed model, runs one `RespondFn` per model and flattens the results, so each
model's server sees only its own domains. Objective items (math, code, closed Q&A) get
`n_objective` samples in ONE request (`SamplingParams.n`) for self-consistency; others get
`n_subjective` (best and worst feed the DPO view). Math prompts ask for a boxed final answer
and code prompts for one Python block, so the consistency stage can extract answers.
Every response records the serving model and its finish reason.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import apache_beam as beam

from datagen.config_loader import ConfigError, option
from datagen.inference.base import Request, SamplingParams
from datagen.inference.registry import ModelConfig
from datagen.record import Record, Response
from datagen.stage import LLMStageFn, RecordFn, StageResult, run_stage
from datagen.filters.text import is_mostly_cjk

STAGE = "respond"
ANY_DOMAIN = "*"
TEMPLATE_ID = "respond/answer"
TEMPLATE_VERSION = "1"
# Appended to the instruction the model sees (not to the stored instruction); Chinese items get Chinese hints.
FORMAT_HINTS = {
    "math": "\n\nSolve it step by step, then give the final answer as \\boxed{{answer}}.",
    "code": "\n\nAnswer with one Python code block.{tests}",
}
FORMAT_HINTS_ZH = {
    "math": "\n\n请逐步求解，最后把答案写成 \\boxed{{答案}}。",
    "code": "\n\n请用一个 Python 代码块作答。{tests}",
}


@dataclass
class RespondConfig:
    routing: dict[str, str] = option({"*": "default"}, "domain → models key (\"specialized models\"); "
                                                       "\"*\" is the fallback")
    objective_domains: list[str] = option(["math", "code"], "domains answered as objective even if unflagged")
    n_objective: int = option(4, "sampled answers per objective item, in one request (`n`)")
    n_subjective: int = option(2, "answers per other item (best and worst feed the DPO view)")
    max_tokens: int = option(384, "per answer; answers cut here are dropped later by the truncation rule")
    temperature: float = option(0.7, "> 0: the n samples must differ for self-consistency to mean anything")
    referenced_temperature: float = option(0.5, "for items with a reference answer: nearer greedy, as the eval "
                                                "answers (the embedded model on the loop's problems, 4 samples: "
                                                "as written at 0.5 pass@1 16.5%, pass@4 40.2%; hinted at 0.7 "
                                                "10.8%, 27.8%)")
    hint_referenced_math: bool = option(False, "append the step-by-step/boxed hint to math items with a "
                                               "reference too; off: asked as written, as a user or the eval asks "
                                               "(math-verify reads the final answer boxed or not), so the SFT "
                                               "rows answer the bare question")
    top_p: float = option(0.95, "nucleus sampling")
    seed: int = option(3456, "sampling seed (reproducible runs, cache hits)")

    def __post_init__(self) -> None:
        if self.n_objective < 1 or self.n_subjective < 1:
            raise ValueError("n_objective and n_subjective must be at least 1")
        if self.temperature < 0 or self.referenced_temperature < 0:
            raise ValueError("temperature and referenced_temperature must be 0 or more")


def route_for(domain: str, routing: dict[str, str]) -> str | None:
    """The models key serving `domain`, or None when neither it nor "*" is routed."""
    return routing.get(domain, routing.get(ANY_DOMAIN))


def check_routing(cfg: RespondConfig, domains: Iterable[str]) -> None:
    """Every domain the pipeline can produce has a route (that each route's model is defined under
    `models` is the synth config's check)."""
    for domain in domains:
        if route_for(domain, cfg.routing) is None:
            raise ConfigError(f"respond.routing: domain {domain!r} has no route and there is no "
                              f"{ANY_DOMAIN!r} fallback")


def is_objective_item(record: Record, cfg: RespondConfig) -> bool:
    return record.objective or record.domain in cfg.objective_domains


def build_prompt(record: Record, hint_referenced_math: bool = True) -> str:
    if record.domain == "math" and record.reference.strip() and not hint_referenced_math:
        return record.instruction  # a referenced math item, asked as written
    hints = FORMAT_HINTS_ZH if is_mostly_cjk(record.instruction) else FORMAT_HINTS
    hint = hints.get(record.domain, "")
    tests = f"\nIt must pass these tests:\n{record.tests}" if record.tests.strip() else ""
    return record.instruction + hint.format(tests=tests)


class RespondFn(LLMStageFn):
    stage = STAGE

    def __init__(self, cfg: RespondConfig, model: ModelConfig) -> None:
        super().__init__(model)
        self.cfg = cfg

    def params(self, record: Record) -> SamplingParams:
        n = self.cfg.n_objective if is_objective_item(record, self.cfg) else self.cfg.n_subjective
        temperature = self.cfg.referenced_temperature if record.referenced else self.cfg.temperature
        return SamplingParams(n=n, max_tokens=self.cfg.max_tokens, temperature=temperature,
                              top_p=self.cfg.top_p, seed=self.cfg.seed)

    def requests(self, record: Record) -> list[Request] | Record:
        if not record.instruction.strip():
            return record.rejected(STAGE, "empty_instruction", "nothing to answer")
        return [Request.chat(build_prompt(record, self.cfg.hint_referenced_math), params=self.params(record))]

    def complete(self, record: Record, completions) -> Record:
        done = completions[0]
        reasons = list(done.finish_reasons) + [""] * (len(done.texts) - len(done.finish_reasons))
        responses = [Response(text.strip(), model=self.llm.identity, finish_reason=reason)
                     for text, reason in zip(done.texts, reasons) if text.strip()]
        if not responses:  # empty samples carry no answer; a record with none is rejected
            return record.rejected(STAGE, "empty_response", f"{len(done.texts)} samples, all empty")
        traced = record.with_lineage(STAGE, self.llm.identity, TEMPLATE_ID, TEMPLATE_VERSION,
                                     self.params(record).to_dict())
        return dataclasses.replace(traced, responses=responses)


class _UnroutedFn(RecordFn):
    """Records whose domain no route serves: rejected, and counted under `respond`."""

    stage = STAGE

    def __init__(self, routing: dict[str, str]) -> None:
        self.routing = routing

    def transform(self, record: Record) -> Record:
        return record.rejected(STAGE, "no_route", f"domain {record.domain!r} not in respond.routing "
                                                  f"({', '.join(sorted(self.routing))})")


class _ByModel:
    """Partition function: index of the record's routed model; the last partition is unrouted."""

    def __init__(self, routing: dict[str, str], keys: list[str]) -> None:
        self.routing, self.keys = routing, keys

    def __call__(self, record: Record, num_partitions: int) -> int:
        key = route_for(record.domain, self.routing)
        return self.keys.index(key) if key in self.keys else num_partitions - 1


class RespondStage(beam.PTransform):
    """`domains`: the domains the pipeline can produce; each must have a route (checked here)."""

    def __init__(self, cfg: RespondConfig, models: dict[str, ModelConfig], domains: Iterable[str] = ()) -> None:
        super().__init__()
        check_routing(cfg, domains)
        self.cfg, self.models = cfg, models
        self.keys = sorted(set(cfg.routing.values()))

    def expand(self, pcoll):
        parts = pcoll | "ByModel" >> beam.Partition(_ByModel(self.cfg.routing, self.keys), len(self.keys) + 1)
        results = [run_stage(parts[i], f"Respond[{key}]", RespondFn(self.cfg, self.models[key]))
                   for i, key in enumerate(self.keys)]
        results.append(run_stage(parts[len(self.keys)], "Unrouted", _UnroutedFn(self.cfg.routing)))
        kept = tuple(r.kept for r in results) | "Kept" >> beam.Flatten()
        rejected = tuple(r.rejected for r in results) | "Rejected" >> beam.Flatten()
        return StageResult(kept, rejected)
