"""Evolution as the Hunyuan-Large report describes it: clearer, low-resource expansion, harder.

Steps, each with its own counters so the funnel shows every operation:
- `evolve_clarify` — the self-contained gate. An instruction that refers to context it lacks ("the
  rectangle", "the passage above", "this code"; datagen/filters/self_contained.py) is rewritten with its seed
  text in the prompt so it states what it needs; if that fails (or clarify is not among `operations`)
  the record is rejected with the gap's reason, `refers_to_undefined_object` or `refers_to_absent_text`.
  With `clarify: all` every other instruction is rewritten clearer and more informative too.
- `evolve_expand` — self-instruct for `low_resource_domains`: from a few in-domain instructions (the
  lowest ids of that domain, a side input) one new one; the original stays, the new record joins it.
- `evolve_harder_r1` … `_rN` — difficulty climbs: round r rewrites round r−1's result into a harder one
  (one more constraint or reasoning step).
Every output is checked; a failed step is rejected (with `on_failure: reject`) or dropped, the record
going on as it was with the failure in its history (`keep_original`; expansions are just not added):
- evolution_unparseable: nothing instruction-sized left after stripping chatter and labels;
- evolution_copy: difflib similarity to the original (or an example) >= `copy_similarity`;
- evolution_became_answer: opens like an answer ("Answer:", "To solve", \\boxed) or asks nothing;
- evolution_lost_information (clarify/harder): a number of the original is missing, or fewer than
  `min_keyword_retention` of its keywords (words of 4+ letters, cut to 6; CJK character pairs) survive;
- evolution_talks_about_task: "I would add a constraint ...", "The question was not about ...";
- evolution_repetitive: more than a fifth of its word 3-grams repeat ("a room that is 4 times the area
  of a room that is 6 times the area of a room ...");
- evolution_not_self_contained: the output refers to context it lacks;
- evolution_not_harder (harder): the output has no more words than its input.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Literal

import apache_beam as beam

from datagen.config_loader import option
from datagen.inference.base import Request, SamplingParams
from datagen.inference.registry import ModelConfig
from datagen.filters.python_code import valid_tests
from datagen.record import EvolutionStep, Record
from datagen.filters.self_contained import missing_context
from datagen.stage import REJECTED_TAG, LLMStageFn, StageCounters, StageResult
from datagen.filters.text import (ANSWER, CHATTER, MARKER, clean_instruction, is_mostly_cjk, long_enough, looks_like_answer,
                          looks_like_instruction, repeated_ngram_ratio, unmark)

STAGE = "evolve"
OPERATIONS = ("clarify", "expand", "harder")
TEMPLATE_VERSION = "3"  # 3: clarify with the seed text for instructions that lack their context
TEMPLATES = {  # {noun}: "question" when the original asks one, so the model keeps asking
    "clarify": ("Rewrite the {noun} below so it is clearer and more informative. Keep its meaning, every "
                "number and every name, and add any detail a reader needs. Do not answer it.\n\n"
                "{Noun}: {instruction}\n\n{language}Write only the rewritten {noun}."),
    "clarify_context": ("Text:\n{seed}\n\nThe {noun} below was written about the text above, but it mentions "
                        "{gap} without saying what it is. Rewrite the {noun} so that it makes sense without the "
                        "text: state every number, name and detail it needs. Do not answer it.\n\n"
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
    rounds: int = option(2, "rounds of `harder`: round r makes round r−1's result harder; 0: none")
    operations: list[str] = option(["clarify", "expand", "harder"],
                                   "operations used: clarify | expand | harder (without clarify, instructions "
                                   "that lack their context are rejected instead of rewritten)")
    clarify: Literal["missing_context", "all"] = option(
        "missing_context", "which instructions clarify rewrites: missing_context (those referring to context they "
                           "lack, rewritten with their seed text) or all (the others clearer, too)")
    low_resource_domains: list[str] = option(["general"], "domains `expand` adds new instructions to (with "
                                                          "generate's low_resource_domains); general has the "
                                                          "fewest shipped seeds")
    expand_examples: int = option(3, "in-domain examples shown for self-instruct expansion")
    on_failure: Literal["keep_original", "reject"] = option(
        "keep_original", "keep_original: drop the failed evolution, keep the record (its history records the "
                         "failure); reject: reject the record with the failure's reason")
    copy_similarity: float = option(0.9, "difflib ratio at or above which an evolution is a copy")
    min_keyword_retention: float = option(0.5, "share of the original's keywords an evolution must keep")
    max_seed_chars: int = option(1500, "the seed is cut to this many characters in the clarify prompt")
    max_tokens: int = option(160, "an instruction is short; a long output is usually an answer")
    temperature: float = option(0.7, "sampling temperature")
    top_p: float = option(0.95, "nucleus sampling")
    seed: int = option(2345, "sampling seed; each step adds its own offset")

    def __post_init__(self) -> None:
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operation {unknown[0]!r} in operations (known: {', '.join(OPERATIONS)})")
        if self.rounds < 0:
            raise ValueError(f"rounds must be >= 0, got {self.rounds}")


def steps(cfg: EvolveConfig) -> list[tuple[str, int]]:
    """(operation, round) of every step in order; the clarify gate always runs."""
    out = [("clarify", 0)]
    if "expand" in cfg.operations and cfg.low_resource_domains:
        out.append(("expand", 0))
    if "harder" in cfg.operations:
        out += [("harder", r) for r in range(1, cfg.rounds + 1)]
    return out


def step_name(operation: str, round_: int) -> str:
    """The counter namespace of a step: evolve_clarify, evolve_expand, evolve_harder_r2."""
    return f"{STAGE}_{operation}" + (f"_r{round_}" if round_ else "")


def stage_names(cfg: EvolveConfig) -> list[str]:
    return [step_name(op, r) for op, r in steps(cfg)]


# -- pure helpers -------------------------------------------------------------------------------
def build_prompt(operation: str, record: Record, examples: list[str], gap: str = "", max_seed_chars: int = 1500) -> str:
    numbered = "\n".join(f"{i}. {text}" for i, text in enumerate([record.instruction, *examples], 1))
    noun = "question" if record.instruction.rstrip().endswith(("?", "？")) else "instruction"
    template = TEMPLATES["clarify_context" if operation == "clarify" and gap else operation]
    return template.format(instruction=record.instruction, domain=record.domain, examples=numbered,
                           noun=noun, Noun=noun.capitalize(), gap=gap, seed=record.seed_text.strip()[:max_seed_chars],
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


_META = re.compile(r"^\W*(?:i would|i will|i'd|i can|let me|rewrite the|here,? the|the (?:original |new |harder |"
                   r"rewritten )?(?:question|instruction|task) (?:was|is|should|asks|does|has|can)|this (?:question|"
                   r"instruction|task) (?:is|was|asks|has)|原问题|这个问题(?:是|应该))", re.I)


def check_step(operation: str, before: str, after: str, examples: list[str], cfg: EvolveConfig) -> tuple[str, str]:
    """check_evolution, then: not talk about the task, not a loop, carrying its context, and a
    harder one must say more."""
    reason, detail = check_evolution(operation, before, after, examples, cfg)
    if reason:
        return reason, detail
    if _META.match(after):
        return "evolution_talks_about_task", "talks about the question instead of asking it"
    ratio = repeated_ngram_ratio(after, 3)
    if ratio > 0.2:
        return "evolution_repetitive", f"repeated 3-gram ratio {ratio:.2f} > 0.20"
    gap = missing_context(after)
    if gap:
        return "evolution_not_self_contained", f"{gap[0]}: {gap[1]}"
    if operation == "harder" and len(after.split()) <= len(before.split()):
        return "evolution_not_harder", f"{len(after.split())} words, the input had {len(before.split())}"
    return "", ""


# -- DoFn and transform -------------------------------------------------------------------------
class EvolveFn(LLMStageFn):
    stage = STAGE

    def __init__(self, cfg: EvolveConfig, model: ModelConfig, operation: str = "harder", round_: int = 1) -> None:
        super().__init__(model)
        self.cfg, self.operation, self.round = cfg, operation, round_
        offset = {"clarify": 0, "expand": 100}.get(operation, round_)
        self.params = SamplingParams(n=1, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                                     top_p=cfg.top_p, seed=cfg.seed + offset)

    def setup(self) -> None:
        super().setup()
        self._counters = StageCounters(step_name(self.operation, self.round))

    def process(self, record: Record, examples: dict | None = None):
        self._examples = examples or {}
        yield from super().process(record)

    def _examples_for(self, record: Record) -> list[str]:
        pool = self._examples.get(record.domain, [])
        return [text for rid, text in pool if rid != record.id][: self.cfg.expand_examples]

    def _plan(self, record: Record) -> tuple[str | None, tuple[str, str] | None]:
        """(operation to run or None, the context gap clarify must fill)."""
        if record.referenced:  # a rewrite would no longer match the seed's answer or tests
            return None, None
        if self.operation == "clarify":
            gap = missing_context(record.instruction)
            if gap or self.cfg.clarify == "all":
                return ("clarify" if "clarify" in self.cfg.operations else None), gap
            return None, None
        if self.operation == "expand" and record.domain not in self.cfg.low_resource_domains:
            return None, None
        return self.operation, None

    def requests(self, record: Record) -> list[Request] | Record:
        operation, gap = self._plan(record)
        if operation is None:  # nothing to do here; a gap nobody may fill rejects the record
            return record.rejected(STAGE, gap[0], f"{gap[1]} (clarify is off)") if gap else record
        if not record.instruction.strip():
            return record.rejected(STAGE, "empty_instruction", "nothing to evolve")
        prompt = build_prompt(operation, record, self._examples_for(record) if operation == "expand" else [],
                              _gap_phrase(gap), self.cfg.max_seed_chars)
        return [Request.chat(prompt, params=self.params)]

    def complete(self, record: Record, completions) -> Record | list[Record]:
        operation, gap = self._plan(record)
        examples = self._examples_for(record) if operation == "expand" else []
        after = parse_evolved(completions[0].text)
        reason, detail = check_step(operation, record.instruction, after, examples, self.cfg)
        step = EvolutionStep(self.round, operation, record.instruction, after, accepted=not reason, reason=reason)
        template = "clarify_context" if gap else operation
        traced = record.with_lineage(STAGE, self.llm.identity, f"{STAGE}/{template}", TEMPLATE_VERSION,
                                     self.params.to_dict())
        failed = dataclasses.replace(traced, evolution=[*record.evolution, step])
        if operation == "expand":  # the original stays either way; a good expansion joins it
            return failed if reason else [record, dataclasses.replace(failed, id="", instruction=after, tests="")]
        if reason and gap:  # the original cannot go on: it lacks its context
            return failed.rejected(STAGE, gap[0], f"{gap[1]}; clarify failed: {reason} ({detail})")
        if reason:
            return failed if self.cfg.on_failure == "keep_original" else failed.rejected(STAGE, reason, detail)
        tests = "\n".join(valid_tests(record.tests.splitlines(), after))
        return dataclasses.replace(failed, id="", instruction=after, tests=tests)


def _gap_phrase(gap: tuple[str, str] | None) -> str:
    """"'the rectangle' is never introduced" → "'the rectangle'" for the clarify prompt."""
    return gap[1].split(" is ")[0] if gap else ""


class EvolveStage(beam.PTransform):
    """The steps above in order (`steps`); rejected records of every step flattened together."""

    def __init__(self, cfg: EvolveConfig, models: dict[str, ModelConfig]) -> None:
        super().__init__()
        self.cfg, self.model = cfg, models[cfg.model]

    def expand(self, pcoll):
        kept, rejected = pcoll, []
        for operation, round_ in steps(self.cfg):
            # Only expansion waits for a side input (every record of the step before): the other
            # steps stream straight on.
            side_inputs = [beam.pvalue.AsDict(self._examples(kept))] if operation == "expand" else []
            fn = EvolveFn(self.cfg, self.model, operation, round_)
            name = step_name(operation, round_)
            outs = kept | name >> beam.ParDo(fn, *side_inputs).with_outputs(REJECTED_TAG, main="kept")
            kept = outs.kept
            rejected.append(outs[REJECTED_TAG])
        return StageResult(kept, tuple(rejected) | "Rejected" >> beam.Flatten())

    def _examples(self, pcoll):
        low = set(self.cfg.low_resource_domains)
        return (pcoll | "InDomain" >> beam.Filter(lambda r: r.domain in low)
                | "Keyed" >> beam.Map(lambda r: (r.domain, (r.id, r.instruction)))
                # +1: a record is never its own example
                | "LowestIds" >> beam.combiners.Top.SmallestPerKey(self.cfg.expand_examples + 1))
