"""Instruction generation: each seed document becomes up to k instructions, tagged by domain.

A per-domain template asks the model for a numbered list of self-contained instructions (in
Chinese when the seed is mostly Chinese). `parse_instructions` survives what small models
actually write: JSON arrays/objects, numbered or bulleted lists ("1.", "1)", "1、", "-", "**1.**"),
chatter before and after, code fences, echoed answers. Math and code items, and short
closed questions, are flagged `objective`; code items keep `assert` lines as tests when they
compile and call a function the instruction names. An item counts as an instruction when it has
a "?", starts with an imperative or question word, or uses a request verb, and does not open
like an answer (`looks_like_instruction` / `looks_like_answer` in datagen/filters/text.py). Then
`DomainCap` keeps at most `max_per_domain` records per domain (lowest ids win, so reruns agree).
A given item (a seed row with `instruction`) passes both unchanged: it is already an instruction.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

import apache_beam as beam

from datagen.config_loader import option
from datagen.inference.base import Request, SamplingParams
from datagen.inference.registry import ModelConfig
from datagen.filters.python_code import valid_tests
from datagen.record import Record
from datagen.stage import REJECTED_TAG, LLMStageFn, RecordFn, StageResult, run_stage
from datagen.filters.text import (ANSWER, CHATTER, MARKER, clean_instruction, is_mostly_cjk, long_enough, looks_like_answer,
                          looks_like_instruction, unmark)

STAGE = "generate"
CAP_STAGE = "domain_cap"
TEMPLATE_VERSION = "2"  # 2: text first; "questions a student could …" (SmolLM2-135M listed those in trials,
#    but wrote statements when asked for "word problems")
# domain → (what to write, a rule for each item, one example item or ""). `{domain}` is filled in.
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "math": ("math questions a student could solve", "Each question gives every number it needs.",
             "A rectangle is 6 cm long and 4 cm wide. What is its area?"),
    "code": ("Python programming tasks", "Each task asks for one Python function, gives its name and says what "
             "it returns; do not write the code.",
             "Write a Python function count_vowels(s) that returns the number of vowels in s."),
    "science": ("questions a student could ask about this topic", "Each question names its topic, so it makes "
                "sense without the text.", "Why does water boil at a lower temperature on a high mountain?"),
    "humanities": ("writing tasks or questions about this topic", "Mix essay prompts, creative writing and "
                   "questions about history, art or literature.", "Write a short poem about the first snow."),
    "general": ("questions a user could ask an assistant about this topic", "Each question names its topic.",
                "How can I sleep better when I work night shifts?"),
    "low_resource": ("questions a student could ask about {domain}", "Each question is about {domain} and "
                     "names its topic, so it makes sense without the text.", ""),
}
PROMPT = ("Text:\n{seed}\n\nWrite {k} {what}, based on the text above. {rule}{example}\n{language}"
          "Write them as a numbered list, one per line. Do not answer them.")
CHINESE = "The text is in Chinese: write them in Chinese (请用中文写).\n"
ALIASES = {"writing": "humanities", "literature": "humanities", "history": "humanities",
           "programming": "code", "coding": "code", "mathematics": "math"}


@dataclass
class GenerateConfig:
    model: str = option("default", "the model that writes instructions: a key of `models`")
    k: int = option(3, "instructions asked for per seed (keep small on CPU: each costs ~40 tokens)")
    domains: list[str] = option(["math", "code", "science", "humanities", "general"],
                                "domains with their own template; a seed's other domains count as general")
    low_resource_domains: list[str] = option([], "extra domains with a generic prompt of their own (and "
                                                 "evolve's `expand`)")
    max_per_domain: int | None = option(None, "cap per domain so one domain cannot swamp the set "
                                              "(lowest ids kept); null: no cap")
    objective_domains: list[str] = option(["math", "code"], "domains whose items are always objective")
    max_seed_chars: int = option(1500, "the seed is cut to this many characters in the prompt")
    max_tokens: int = option(200, "room for k short instructions; a cut-off last item is dropped")
    temperature: float = option(0.8, "sampling temperature: some variety across seeds")
    top_p: float = option(0.95, "nucleus sampling")
    seed: int = option(1234, "sampling seed (reproducible runs, cache hits)")

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.max_per_domain is not None and self.max_per_domain < 1:
            raise ValueError(f"max_per_domain must be at least 1, got {self.max_per_domain}")


@dataclass(frozen=True)
class ParsedInstruction:
    text: str
    tests: tuple[str, ...] = ()


_CLOSED = re.compile(r"^(?:what (?:is|was|are|were)|who|when|where|which|how (?:many|much|long|far|old)|"
                     r"in (?:what|which) year|name the)\b", re.I)
_OPEN = re.compile(r"\b(?:explain|why|describe|discuss|compare|opinion|think|how (?:does|do|can|would))\b", re.I)


def is_closed_question(text: str) -> bool:
    """Short single factual question ("How many…?", "Who…?"): one right answer, checkable."""
    if is_mostly_cjk(text):
        return len(text) <= 80 and text.rstrip().endswith("？") and bool(re.search(r"多少|几|哪|谁|何时", text))
    return (len(text) <= 200 and text.rstrip().endswith("?") and text.count("?") == 1
            and bool(_CLOSED.match(text)) and not _OPEN.search(text))


def is_objective(domain: str, text: str, objective_domains: list[str]) -> bool:
    return domain in objective_domains or is_closed_question(text)


# -- parser ------------------------------------------------------------------------------------
def _json_items(raw: str) -> list | None:
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"[\[{]", raw)][:20]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(raw, start)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            lists = [v for v in value.values() if isinstance(v, list)]
            value = [value] if _dict_text(value) else lists[0] if lists else list(value.values())
        if isinstance(value, list) and value:
            return [ParsedInstruction(_dict_text(v) if isinstance(v, dict) else str(v),
                                      _as_lines(v.get("tests") or v.get("test")) if isinstance(v, dict) else ())
                    for v in value if isinstance(v, (str, dict))]
    return None


def _dict_text(value: dict) -> str:
    for key in ("instruction", "question", "task", "problem", "prompt", "text"):
        if isinstance(value.get(key), str):
            return value[key]
    return ""


def _as_lines(value) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else tuple(str(value or "").splitlines())


def _list_items(raw: str) -> list[ParsedInstruction]:
    items: list[list] = []  # [text lines, tests]
    in_fence = ended = False
    for line in raw.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            continue
        if stripped.startswith("assert ") and items:
            items[-1][1].append(stripped)
        if in_fence or stripped.startswith("assert "):
            continue
        marked = bool(MARKER.match(line))
        body = unmark(line) if marked else stripped
        if not stripped or ANSWER.match(body) or CHATTER.match(body):
            ended = True  # a blank line, an answer or chatter ends the current item
        elif marked or not items or ended:
            items.append([[body], []])  # a list item, or a paragraph outside any list
            ended = False
        else:
            items[-1][0].append(stripped)
    return [ParsedInstruction(" ".join(lines), tuple(tests)) for lines, tests in items]


def parse_instructions(raw: str, k: int | None = None, truncated: bool = False,
                       exclude: tuple[str, ...] = ()) -> list[ParsedInstruction]:
    """Instructions found in `raw`, cleaned, deduplicated, at most k. Never raises.

    JSON first; when it yields nothing usable (e.g. `["a", "b"]` inside a task) the text is read
    as a list. `truncated` (finish_reason "length") drops a last item cut off mid-sentence.
    """
    found = _accept(_json_items(raw or "") or [], exclude)
    if not found:
        items = _list_items(raw or "")
        if truncated and items and not clean_instruction(items[-1].text).endswith(tuple(".?!。？！")):
            items = items[:-1]
        found = _accept(items, exclude)
    return found[:k] if k else found


def _accept(items: list[ParsedInstruction], exclude: tuple[str, ...]) -> list[ParsedInstruction]:
    seen = {clean_instruction(e).lower() for e in exclude}
    out = []
    for item in items:
        text = clean_instruction(item.text)
        if long_enough(text) and len(text) <= 2000 and text.lower() not in seen \
                and looks_like_instruction(text) and not looks_like_answer(text):
            seen.add(text.lower())
            out.append(ParsedInstruction(text, valid_tests(item.tests, text)))
    return out


# -- prompt, DoFn, transforms ------------------------------------------------------------------
def domain_tag(domain: str, cfg: GenerateConfig) -> str:
    """The seed's domain if the config knows it (aliases folded), else "general"."""
    name = (domain or "").strip().lower()
    name = ALIASES.get(name, name)
    return name if name in cfg.domains or name in cfg.low_resource_domains else "general"


def build_prompt(record: Record, cfg: GenerateConfig) -> tuple[str, str, str]:
    """(domain tag, template id, prompt); domains without their own template use the generic one."""
    tag = domain_tag(record.domain, cfg)
    key = tag if tag in TEMPLATES and tag not in cfg.low_resource_domains else "low_resource"
    what, rule, example = (part.format(domain=tag) for part in TEMPLATES[key])
    prompt = PROMPT.format(k=cfg.k, what=what, rule=rule, example=f" For example: {example}" if example else "",
                           seed=record.seed_text.strip()[: cfg.max_seed_chars],
                           language=CHINESE if is_mostly_cjk(record.seed_text) else "")
    return tag, f"{STAGE}/{key}", prompt


class GenerateFn(LLMStageFn):
    stage = STAGE

    def __init__(self, cfg: GenerateConfig, model: ModelConfig) -> None:
        super().__init__(model)
        self.cfg = cfg
        self.params = SamplingParams(n=1, max_tokens=cfg.max_tokens, temperature=cfg.temperature,
                                     top_p=cfg.top_p, seed=cfg.seed)

    def requests(self, record: Record) -> list[Request] | Record:
        if record.instruction.strip():  # a given item (a seed row with `instruction`): used as written
            return record
        if not record.seed_text.strip():
            return record.rejected(STAGE, "empty_seed", "the seed has no text")
        return [Request.chat(build_prompt(record, self.cfg)[2], params=self.params)]

    def complete(self, record: Record, completions) -> list[Record] | Record:
        done = completions[0]
        tag, template_id, _ = build_prompt(record, self.cfg)
        example = TEMPLATES[template_id.split("/")[1]][2]  # an echo of the example is not new
        truncated = bool(done.finish_reasons) and done.finish_reasons[0] == "length"
        items = parse_instructions(done.text, self.cfg.k, truncated, exclude=(example,))
        if not items:
            return record.rejected(STAGE, "no_instructions_parsed", done.text[:500] or "(empty output)")
        return [dataclasses.replace(
            record, id="", domain=tag, instruction=item.text,
            objective=is_objective(tag, item.text, self.cfg.objective_domains),
            tests="\n".join(item.tests) if tag == "code" else "",
        ).with_lineage(STAGE, self.llm.identity, template_id, TEMPLATE_VERSION, self.params.to_dict())
            for item in items]


class _CapFn(RecordFn):
    stage = CAP_STAGE

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def process(self, record: Record, cutoffs: dict[str, str]):
        self._cutoffs = cutoffs
        yield from super().process(record)

    def transform(self, record: Record) -> Record:
        if record.referenced or record.id <= self._cutoffs.get(record.domain, ""):
            return record
        return record.rejected(CAP_STAGE, "domain_cap",
                               f"domain {record.domain!r} is capped at {self.limit} records (lowest ids kept)")


class DomainCap(beam.PTransform):
    """Keep the `limit` lowest-id records of each domain; memory per domain is `limit` ids.

    Records sharing an id (same seed, domain and instruction) are kept or capped together.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def expand(self, pcoll):
        cutoffs = (pcoll | "Generated" >> beam.Filter(lambda r: not r.referenced)  # given items are not capped
                   | "DomainIds" >> beam.Map(lambda r: (r.domain, r.id))
                   | "LowestIds" >> beam.combiners.Top.SmallestPerKey(self.limit)
                   | "Cutoff" >> beam.MapTuple(lambda domain, ids: (domain, max(ids))))
        outs = pcoll | "Cap" >> beam.ParDo(_CapFn(self.limit), beam.pvalue.AsDict(cutoffs)).with_outputs(
            REJECTED_TAG, main="kept")
        return StageResult(outs.kept, outs[REJECTED_TAG])


class GenerateStage(beam.PTransform):
    """Seeds → instructions (`generate` counters), then the per-domain cap (`domain_cap`)."""

    def __init__(self, cfg: GenerateConfig, models: dict[str, ModelConfig]) -> None:
        super().__init__()
        self.cfg, self.model = cfg, models[cfg.model]

    def expand(self, pcoll):
        generated = run_stage(pcoll, "Generate", GenerateFn(self.cfg, self.model))
        if self.cfg.max_per_domain is None:
            return generated
        capped = generated.kept | "DomainCap" >> DomainCap(self.cfg.max_per_domain)
        rejected = (generated.rejected, capped.rejected) | "Rejected" >> beam.Flatten()
        return StageResult(capped.kept, rejected)
