"""Evolution: make instructions clearer, harder, or (low-resource domains) add new ones.

Each round gives every record one operation, chosen deterministically from its id and the
round among the operations that apply (`expand` only to `low_resource_domains`):
- clarify: rewrite clearer and more informative, same meaning;
- harder: deepen — add a constraint or a reasoning step;
- expand: self-instruct — from a few in-domain instructions (the lowest ids of that domain,
  a side input) write one new one. The original stays; the new record joins it.
The output is checked; a failed evolution is rejected (clarify/harder) or not added (expand,
the failed step stays on the kept original) with one of these reasons:
- evolution_unparseable: nothing instruction-sized left after stripping chatter and labels;
- evolution_copy: difflib similarity to the original (or an example) >= `copy_similarity`;
- evolution_became_answer: opens like an answer ("Answer:", "To solve", \\boxed) or asks nothing
  (no "?", no imperative or request verb — `datagen.text.looks_like_instruction`);
- evolution_lost_information (clarify/harder): a number of the original is missing, or fewer than
  `min_keyword_retention` of its keywords (words of 4+ letters, cut to 6, stopwords aside; CJK
  character pairs) survive.
Round 1 counts under `evolve`; later rounds count under `evolve_round<r>`, so every
namespace keeps `kept + rejected == in`.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re
from dataclasses import dataclass
from typing import Literal

import apache_beam as beam

from datagen.config import option
from datagen.inference.base import Request, SamplingParams
from datagen.inference.registry import ModelConfig
from datagen.python_code import valid_tests
from datagen.record import EvolutionStep, Record
from datagen.stage import REJECTED_TAG, LLMStageFn, StageCounters, StageResult
from datagen.text import (ANSWER, CHATTER, MARKER, clean_instruction, is_mostly_cjk, long_enough, looks_like_answer,
                          looks_like_instruction, unmark)

STAGE = "evolve"
OPERATIONS = ("clarify", "expand", "harder")
TEMPLATE_VERSION = "2"  # 2: says "question" for questions (v1 said "instruction"; SmolLM2-135M answered one)
TEMPLATES = {  # {noun}: "question" when the original asks one, so the model keeps asking
    "clarify": ("Rewrite the {noun} below so it is clearer and more informative. Keep its meaning, every "
                "number and every name, and add any detail a reader needs. Do not answer it.\n\n"
                "{Noun}: {instruction}\n\n{language}Write only the rewritten {noun}."),
    "harder": ("Rewrite the {noun} below into a harder {noun}: add one more constraint or ask for one more "
               "reasoning step. Keep its topic, every number and every name. Do not answer it.\n\n"
               "{Noun}: {instruction}\n\n{language}Write only the harder {noun}."),
    "expand": ("Here are some {domain} tasks:\n{examples}\n\nWrite one new {domain} task that is different "
               "from all of them. Do not answer it.\n\n{language}Write only the new task."),
}
CHINESE = "Write it in Chinese (请用中文写).\n"
_STOP = set("that this with from have what which when where your their there about into than then them "
            "they will would should could each some more most such only also very write given using".split())


@dataclass
class EvolveConfig:
    model: str = option("default", "the model that rewrites instructions: a key of `models`")
    rounds: int = option(1, "rounds of evolution; 0 turns evolution off")
    operations: list[str] = option(["clarify", "expand", "harder"],
                                   "operations to choose from: clarify | expand | harder")
    low_resource_domains: list[str] = option([], "domains `expand` applies to; empty: generate's")
    expand_examples: int = option(3, "in-domain examples shown for self-instruct expansion")
    on_failure: Literal["keep_original", "reject"] = option(
        "keep_original", "keep_original: drop the failed evolution, keep the record (its history records the "
                         "failure); reject: reject the record with the failure's reason")
    copy_similarity: float = option(0.9, "difflib ratio at or above which an evolution is a copy")
    min_keyword_retention: float = option(0.5, "share of the original's keywords an evolution must keep")
    max_tokens: int = option(160, "an instruction is short; a long output is usually an answer")
    temperature: float = option(0.7, "sampling temperature")
    top_p: float = option(0.95, "nucleus sampling")
    seed: int = option(2345, "sampling seed; round r uses seed + r")

    def __post_init__(self) -> None:
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operation {unknown[0]!r} in operations (known: {', '.join(OPERATIONS)})")
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")


# -- pure helpers -------------------------------------------------------------------------------
def choose_operation(record: Record, round_: int, cfg: EvolveConfig) -> str | None:
    usable = [op for op in cfg.operations if op != "expand" or record.domain in cfg.low_resource_domains]
    if not usable:
        return None
    digest = hashlib.sha256(f"{record.id}:{round_}".encode()).hexdigest()
    return usable[int(digest, 16) % len(usable)]


def build_prompt(operation: str, record: Record, examples: list[str]) -> str:
    numbered = "\n".join(f"{i}. {text}" for i, text in enumerate([record.instruction, *examples], 1))
    noun = "question" if record.instruction.rstrip().endswith(("?", "？")) else "instruction"
    return TEMPLATES[operation].format(instruction=record.instruction, domain=record.domain, examples=numbered,
                                       noun=noun, Noun=noun.capitalize(),
                                       language=CHINESE if is_mostly_cjk(record.instruction) else "")


def parse_evolved(raw: str) -> str:
    """The rewritten instruction: chatter, labels, answers and extra candidates removed."""
    lines = [ln.strip() for ln in (raw or "").splitlines() if not ln.strip().startswith("```")]
    while lines and (not lines[0] or CHATTER.match(lines[0]) or _is_label(lines[0])):
        head, _, rest = lines[0].partition(":")
        if CHATTER.match(head) and len(rest.strip()) >= 10:  # "Here is the new task: Find …"
            lines[0] = rest.strip()
            break
        lines.pop(0)
    for i, line in enumerate(lines[1:], 1):  # an answer or a comment after the instruction ends it
        if ANSWER.match(unmark(line)) or CHATTER.match(line):
            lines = lines[:i]
            break
    if lines and MARKER.match(lines[0]) and sum(bool(MARKER.match(ln)) for ln in lines) >= 2:
        end = next(i for i, ln in enumerate(lines[1:] + [""], 1) if not ln or MARKER.match(ln))
        lines = lines[:end]  # several candidates: the first one
    return clean_instruction(unmark(" ".join(lines))) if lines else ""


def _is_label(line: str) -> bool:
    return line.endswith((":", "：")) and len(line) < 60 and "?" not in line


def _keywords(text: str) -> set[str]:
    words = {w[:6] for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in _STOP}
    cjk = "".join(ch for ch in text if is_mostly_cjk(ch))
    return words | {cjk[i:i + 2] for i in range(len(cjk) - 1)}


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.lower().split() if not is_mostly_cjk(a) else a,
                                   b.lower().split() if not is_mostly_cjk(b) else b).ratio()


def check_evolution(operation: str, before: str, after: str, examples: list[str],
                    cfg: EvolveConfig) -> tuple[str, str]:
    """("", "") when the evolution is usable, else (reason, detail)."""
    if not long_enough(after):
        return "evolution_unparseable", f"nothing usable in the output ({after!r})"
    for other in [before, *examples]:
        ratio = similarity(other, after)
        if ratio >= cfg.copy_similarity:
            return "evolution_copy", f"similarity {ratio:.2f} to {other[:120]!r}"
    if looks_like_answer(after) or not looks_like_instruction(after):
        return "evolution_became_answer", "reads like an answer, not a question or request"
    if operation == "expand":
        return "", ""
    missing = sorted(set(re.findall(r"\d+(?:\.\d+)?", before)) - set(re.findall(r"\d+(?:\.\d+)?", after)))
    if missing:
        return "evolution_lost_information", f"numbers missing: {', '.join(missing[:10])}"
    keywords = _keywords(before)
    kept = len(keywords & _keywords(after)) / len(keywords) if keywords else 1.0
    if kept < cfg.min_keyword_retention:
        return "evolution_lost_information", f"kept {kept:.2f} of the keywords (< {cfg.min_keyword_retention})"
    return "", ""


# -- DoFn and transform -------------------------------------------------------------------------
class EvolveFn(LLMStageFn):
    stage = STAGE

    def __init__(self, cfg: EvolveConfig, model: ModelConfig, round_: int = 1) -> None:
        super().__init__(model)
        self.cfg, self.round = cfg, round_
        self.params = SamplingParams(n=1, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                                     top_p=cfg.top_p, seed=cfg.seed + round_)

    def setup(self) -> None:
        super().setup()
        if self.round > 1:
            self._counters = StageCounters(f"{STAGE}_round{self.round}")

    def process(self, record: Record, examples: dict | None = None):
        self._examples = examples or {}
        yield from super().process(record)

    def _examples_for(self, record: Record) -> list[str]:
        pool = self._examples.get(record.domain, [])
        return [text for rid, text in pool if rid != record.id][: self.cfg.expand_examples]

    def requests(self, record: Record) -> list[Request] | Record:
        operation = choose_operation(record, self.round, self.cfg)
        if operation is None:
            return record  # no operation applies: passes through unchanged
        if not record.instruction.strip():
            return record.rejected(STAGE, "empty_instruction", "nothing to evolve")
        prompt = build_prompt(operation, record, self._examples_for(record) if operation == "expand" else [])
        return [Request.chat(prompt, params=self.params)]

    def complete(self, record: Record, completions) -> Record | list[Record]:
        operation = choose_operation(record, self.round, self.cfg)
        examples = self._examples_for(record) if operation == "expand" else []
        after = parse_evolved(completions[0].text)
        reason, detail = check_evolution(operation, record.instruction, after, examples, self.cfg)
        step = EvolutionStep(self.round, operation, record.instruction, after, accepted=not reason, reason=reason)
        traced = record.with_lineage(STAGE, self.llm.identity, f"{STAGE}/{operation}", TEMPLATE_VERSION,
                                     self.params.to_dict())
        failed = dataclasses.replace(traced, evolution=[*record.evolution, step])
        if operation == "expand":  # the original stays either way; a good expansion joins it
            if reason:
                return failed
            new = dataclasses.replace(failed, id="", instruction=after, tests="")
            return [record, new]
        if reason and self.cfg.on_failure == "keep_original":
            return failed
        if reason:
            return failed.rejected(STAGE, reason, detail)
        tests = "\n".join(valid_tests(record.tests.splitlines(), after))
        return dataclasses.replace(failed, id="", instruction=after, tests=tests)


class EvolveStage(beam.PTransform):
    """`rounds` rounds of evolution; rejected records of every round flattened together."""

    def __init__(self, cfg: EvolveConfig, models: dict[str, ModelConfig]) -> None:
        super().__init__()
        self.cfg, self.model = cfg, models[cfg.model]

    def expand(self, pcoll):
        # A side input holds every round back until generation has finished; only expansion
        # needs it, so without low-resource domains the rounds stream straight from generation.
        side_inputs = [beam.pvalue.AsDict(self._examples(pcoll))] if self.expands() else []
        kept, rejected = pcoll, []
        for round_ in range(1, self.cfg.rounds + 1):
            fn = EvolveFn(self.cfg, self.model, round_)
            outs = kept | f"Round{round_}" >> beam.ParDo(fn, *side_inputs).with_outputs(
                REJECTED_TAG, main="kept")
            kept = outs.kept
            rejected.append(outs[REJECTED_TAG])
        if not rejected:
            rejected.append(pcoll | "NoRounds" >> beam.Filter(lambda r: False))
        return StageResult(kept, tuple(rejected) | "Rejected" >> beam.Flatten())

    def expands(self) -> bool:
        return "expand" in self.cfg.operations and bool(self.cfg.low_resource_domains)

    def _examples(self, pcoll):
        low = set(self.cfg.low_resource_domains)
        return (pcoll | "InDomain" >> beam.Filter(lambda r: r.domain in low)
                | "Keyed" >> beam.Map(lambda r: (r.domain, (r.id, r.instruction)))
                # +1: a record is never its own example
                | "LowestIds" >> beam.combiners.Top.SmallestPerKey(self.cfg.expand_examples + 1))
