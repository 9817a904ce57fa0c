"""Benchmark decontamination as practised: exact n-grams, n-gram coverage, paraphrases.

The benchmarks are the shipped eval sets (`eval_sets`: math, code = HumanEval, judge — what
`python -m pipelines.eval` scores, so by default nothing it tests on is trained on) plus any JSONL
files (`benchmarks`, any Beam filesystem, compression by extension, a string field `text_field`).
The stage runs twice: `decontam` before respond checks the instruction (and any responses a record
already has), `decontam_answers` after respond checks the responses (`answers: true`), each with its
own counters. A record is rejected when its instruction or a response (datagen/filters/overlap.py has
the details; texts are compared with Traditional Chinese folded to Simplified and "1,200" as "1200"):

- `contaminated`: shares an `ngram`-word n-gram (13) with an item (items of `min_ngram`..ngram−1
  words are matched whole);
- `contaminated_overlap`: covers at least `overlap_threshold` (0.5) of an item's words with shared
  `overlap_ngram`-grams (8) — Tülu 3's test, which catches an item copied with edits;
- `contaminated_short_item`: a sentence (or a run of sentences) states an item under `ngram` words
  whole after normalisation (`short_items`): "Compute 3+4." against "What is 3 + 4?" — 235 of the 600
  math items have under 8 words, which no n-gram test can find;
- `contaminated_paraphrase` (instruction only): restates an item's task in other words — difflib over
  content words, on items found through a rare shared content bigram (Cosmopedia confirms its 10-gram
  candidates with a diff ratio the same way), e.g. "Write a Python function that takes a string and
  returns the number of vowels in that string" against HumanEval/64.

A contaminated response rejects the whole record, not only that response: its sibling answers were
sampled from the same prompt, consistency votes over all of them, and the rejects keep the evidence.
The detail names the benchmark, the item, where (instruction, response N) and what matched. An item
whose text another benchmark already holds (the eval sets named twice, as `eval_sets` and as files)
is indexed once, under its first label. Every benchmark is read once when the stage is built (a
missing or malformed file is a ValueError naming it before the pipeline runs); each worker process
builds the indexes once (DoFn.setup, shared by its threads), and both passes share them.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from datagen.readers import eval_sets
from datagen.config_loader import option
from datagen.filters.overlap import ExactIndex, OverlapIndex, ParaphraseIndex, ShortIndex, fold
from datagen.record import Record
from datagen.stage import RecordFn, StageResult, run_stage

STAGE = "decontam"
ANSWERS_STAGE = "decontam_answers"
NgramIndex = ExactIndex  # the name earlier versions used


@dataclass
class DecontamConfig:
    eval_sets: list[str] = option(["math", "code", "judge"], "shipped eval sets to keep out of the data (math, "
                                                              "code = HumanEval, judge); [] for none")
    benchmarks: list[str] = option([], "more benchmark JSONL files (any Beam filesystem) to keep out of the data")
    text_field: str = option("text", "the string field of each benchmark line that is compared")
    ngram: int = option(13, "words in a shared n-gram that makes a record contaminated (13: the common test)")
    min_ngram: int = option(8, "benchmark items of min_ngram..ngram-1 words are matched whole (word for word); "
                               "shorter ones only by the short-item test")
    short_items: bool = option(True, "match items under `ngram` words whole after normalisation (numbers, "
                                     "operators, framing words such as 'what is' / 'compute'), sentence by sentence")
    answers: bool = option(True, "check the responses again after respond (stage decontam_answers); a "
                                 "contaminated response rejects its record")
    overlap_ngram: int = option(8, "n of the coverage test (Tülu 3: 8)")
    overlap_threshold: float = option(0.5, "share of an item's words covered by shared n-grams that makes a "
                                           "record contaminated (Tülu 3: 0.5); 0 turns the test off")
    paraphrase_ratio: float = option(0.75, "share of the shorter side's content words that must match in order "
                                           "for a paraphrase; 0 turns the test off")
    paraphrase_min_words: int = option(6, "content words that must match at least (shorter texts are never "
                                          "paraphrases)")
    paraphrase_rare_items: int = option(3, "a content bigram found in more benchmark items than this is too "
                                           "common to make an item a candidate")


def load_benchmark(path: str, text_field: str) -> list[str]:
    """The items' texts; ValueError naming the file (and line) when anything is wrong."""
    try:
        if not FileSystems.exists(path):
            raise ValueError(f"decontam benchmark file not found: {path}")
        with FileSystems.open(path) as f:
            data = f.read()
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - any I/O failure means "cannot use this file"
        raise ValueError(f"decontam benchmark file {path}: cannot read it "
                         f"({type(err).__name__}: {err})") from err
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"decontam benchmark file {path}: not UTF-8 (byte {err.start})") from None
    texts = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (ValueError, RecursionError) as err:
            raise ValueError(f"decontam benchmark file {path}:{line_no}: invalid JSON ({err})") from None
        value = item.get(text_field) if isinstance(item, dict) else None
        if not isinstance(value, str):
            raise ValueError(f"decontam benchmark file {path}:{line_no}: no string field {text_field!r} "
                             "(set decontam.text_field)")
        texts.append(value)
    if not texts:
        raise ValueError(f"decontam benchmark file {path}: no items")
    return texts


def benchmark_items(cfg: DecontamConfig) -> list[tuple[str, str]]:
    """(label, text) of every item: "code HumanEval/64", "path/file.jsonl line 3" — each text once (the
    first label wins), so an item named twice neither doubles in the rare-bigram counts nor hides."""
    items = [(f"{name} {item['id']}", item["text"]) for name in cfg.eval_sets for item in eval_sets.load(name)]
    for path in cfg.benchmarks:
        items += [(f"{path} line {i}", text) for i, text in enumerate(load_benchmark(path, cfg.text_field), 1)]
    seen: set[str] = set()
    unique = []
    for label, text in items:
        key = " ".join(fold(text).casefold().split())
        if key not in seen:
            seen.add(key)
            unique.append((label, text))
    return unique


class Indexes:
    def __init__(self, cfg: DecontamConfig) -> None:
        self.exact = ExactIndex(cfg.ngram, cfg.min_ngram)
        self.overlap = OverlapIndex(cfg.overlap_ngram, cfg.overlap_threshold) if cfg.overlap_threshold else None
        self.short = ShortIndex(cfg.ngram) if cfg.short_items else None
        self.paraphrase = (ParaphraseIndex(cfg.paraphrase_ratio, cfg.paraphrase_min_words, cfg.paraphrase_rare_items)
                           if cfg.paraphrase_ratio else None)
        for label, text in benchmark_items(cfg):
            for index in (self.exact, self.overlap, self.short, self.paraphrase):
                if index is not None:
                    index.add(text, label)

    def find(self, text: str, instruction: bool) -> tuple[str, str] | None:
        """(reason, detail) for the first test `text` fails, or None."""
        exact = self.exact.find(text)
        if exact:
            return "contaminated", f"{exact[0]}: shares the {len(exact[1].split())}-gram {exact[1]!r}"
        covered = self.overlap.find(text) if self.overlap else None
        if covered:
            return ("contaminated_overlap", f"{covered[0]}: {covered[1]:.0%} of the item's words covered by "
                                            f"shared {self.overlap.n}-grams")
        whole = self.short.find(text) if self.short else None
        if whole:
            return "contaminated_short_item", f"{whole[0]}: states the item whole ({whole[1]!r} after normalisation)"
        restated = self.paraphrase.find(text) if self.paraphrase and instruction else None
        if restated:
            return ("contaminated_paraphrase", f"{restated[0]}: restates the item's task ({restated[1]:.0%} of the "
                                               f"content words in order: {restated[2]!r})")
        return None


_INDEXES: dict[tuple, Indexes] = {}
_INDEX_LOCK = threading.Lock()


def shared_indexes(cfg: DecontamConfig) -> Indexes:
    """One set of indexes per worker process and config, built on first use."""
    key = json.dumps(cfg.__dict__, sort_keys=True)
    with _INDEX_LOCK:
        if key not in _INDEXES:
            _INDEXES[key] = Indexes(cfg)
        return _INDEXES[key]


class DecontamFn(RecordFn):
    stage = STAGE

    def __init__(self, cfg: DecontamConfig, answers: bool = False) -> None:
        super().__init__()
        self.cfg, self.answers = cfg, answers
        self.stage = ANSWERS_STAGE if answers else STAGE

    def setup(self) -> None:
        super().setup()
        self.indexes = shared_indexes(self.cfg)

    def transform(self, record: Record) -> Record:
        parts = [] if self.answers else [("instruction", record.instruction)]
        parts += [(f"response {i}", r.text) for i, r in enumerate(record.responses)]
        for where, text in parts:
            found = self.indexes.find(text, instruction=where == "instruction")
            if found:
                label, _, rest = found[1].partition(": ")
                return record.rejected(self.stage, found[0], f"{label}: {where} {rest}")
        return record.with_lineage(self.stage, params={"eval_sets": self.cfg.eval_sets,
                                                       "benchmarks": self.cfg.benchmarks, "ngram": self.cfg.ngram})


class DecontamStage(beam.PTransform):
    """Records → StageResult(kept, rejected as contaminated). Checks the benchmarks now.
    `answers=True`: the pass after respond (stage decontam_answers), on the responses only."""

    def __init__(self, cfg: DecontamConfig, answers: bool = False) -> None:
        super().__init__()
        if cfg.ngram < 1 or not 1 <= cfg.min_ngram <= cfg.ngram:
            raise ValueError(f"decontam: need 1 <= min_ngram <= ngram, got {cfg.min_ngram}, {cfg.ngram}")
        if cfg.overlap_ngram < 1 or not 0 <= cfg.overlap_threshold <= 1 or not 0 <= cfg.paraphrase_ratio <= 1:
            raise ValueError("decontam: need overlap_ngram >= 1 and overlap_threshold, paraphrase_ratio in [0, 1]")
        benchmark_items(cfg)  # every file and eval set readable, before the pipeline runs
        self.cfg, self.answers = cfg, answers

    def expand(self, pcoll) -> StageResult:
        return run_stage(pcoll, "DecontamAnswers" if self.answers else "Decontam", DecontamFn(self.cfg, self.answers))
