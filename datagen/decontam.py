"""Benchmark decontamination by n-gram overlap against user-supplied benchmark files.

A record is `contaminated` when its instruction or one of its responses shares a word n-gram
(`ngram` normalized words: NFKC, case-folded, punctuation dropped, each Han character a word)
with an item of a benchmark; the detail names the benchmark file and the n-gram. Benchmark
items shorter than `ngram` words but at least `min_ngram` long are matched whole, so short
questions are caught too; shorter ones are ignored.

Benchmarks are JSONL files (any Beam filesystem, compression by extension) with a string field
`text_field`. Every file is read once when the stage is built, so a missing, unreadable or
malformed file is a ValueError naming it before the pipeline runs; each worker process then
builds the n-gram index once (DoFn.setup, shared by its threads). The index holds every n-gram
string of every item: about items × words entries.
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from datagen.config import option
from datagen.record import Record
from datagen.stage import RecordFn, StageResult, run_stage
from datagen.text import words

STAGE = "decontam"


@dataclass
class DecontamConfig:
    benchmarks: list[str] = option([], "benchmark JSONL files (any Beam filesystem) to keep out of the data")
    text_field: str = option("text", "the string field of each benchmark line that is compared")
    ngram: int = option(13, "words in a shared n-gram that makes a record contaminated (13: the common test)")
    min_ngram: int = option(8, "benchmark items of min_ngram..ngram-1 words are matched whole; shorter ones "
                               "are ignored")


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


class NgramIndex:
    """n-gram string → benchmark path, plus the lengths of whole short items."""

    def __init__(self, n: int, min_n: int) -> None:
        self.n, self.min_n = n, min_n
        self.grams: dict[str, str] = {}
        self.lengths: set[int] = set()

    def add(self, text: str, benchmark: str) -> None:
        tokens = words(text)
        if len(tokens) < self.min_n:
            return
        size = min(len(tokens), self.n)
        self.lengths.add(size)
        for i in range(len(tokens) - size + 1):
            self.grams.setdefault(" ".join(tokens[i:i + size]), benchmark)

    def find(self, text: str) -> tuple[str, str] | None:
        """(benchmark, n-gram) of the first shared n-gram in `text`, or None."""
        tokens = words(text)
        for size in sorted(self.lengths, reverse=True):
            for i in range(len(tokens) - size + 1):
                gram = " ".join(tokens[i:i + size])
                if gram in self.grams:
                    return self.grams[gram], gram
        return None


_INDEXES: dict[tuple, NgramIndex] = {}
_INDEX_LOCK = threading.Lock()


def shared_index(cfg: DecontamConfig) -> NgramIndex:
    """One index per worker process and config, built on first use."""
    key = (tuple(cfg.benchmarks), cfg.text_field, cfg.ngram, cfg.min_ngram)
    with _INDEX_LOCK:
        if key not in _INDEXES:
            index = NgramIndex(cfg.ngram, cfg.min_ngram)
            for path in cfg.benchmarks:
                for text in load_benchmark(path, cfg.text_field):
                    index.add(text, path)
            _INDEXES[key] = index
        return _INDEXES[key]


class DecontamFn(RecordFn):
    stage = STAGE

    def __init__(self, cfg: DecontamConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def setup(self) -> None:
        super().setup()
        self.index = shared_index(self.cfg)

    def transform(self, record: Record) -> Record:
        parts = [("instruction", record.instruction)]
        parts += [(f"response {i}", r.text) for i, r in enumerate(record.responses)]
        for where, text in parts:
            match = self.index.find(text)
            if match:
                benchmark, gram = match
                return record.rejected(STAGE, "contaminated",
                                       f"{benchmark}: {where} shares the {len(gram.split())}-gram {gram!r}")
        return record.with_lineage(STAGE, params={"benchmarks": self.cfg.benchmarks, "ngram": self.cfg.ngram})


class DecontamStage(beam.PTransform):
    """Records → StageResult(kept, rejected as contaminated). Checks the benchmark files now."""

    def __init__(self, cfg: DecontamConfig) -> None:
        super().__init__()
        if cfg.ngram < 1 or not 1 <= cfg.min_ngram <= cfg.ngram:
            raise ValueError(f"decontam: need 1 <= min_ngram <= ngram, got {cfg.min_ngram}, {cfg.ngram}")
        for path in cfg.benchmarks:
            load_benchmark(path, cfg.text_field)
        self.cfg = cfg

    def expand(self, pcoll) -> StageResult:
        return run_stage(pcoll, "Decontam", DecontamFn(self.cfg))
