"""Seeds: read seed documents into Records — the root of the synth pipeline.

`cfg.path` is a file, a folder (read recursively; hidden files skipped) or a glob, on any Beam
filesystem (local, gs://, ...); empty means the corpus shipped with datagen (`SHIPPED_SEEDS`).
A folder written by `datasets`' save_to_disk (holding `state.json` / `dataset_info.json` and Arrow
shards; a DatasetDict's splits are such folders) reads as the shards its state lists. Files are
listed when the transform is built, so a path that matches nothing fails at once; reading is a
DoFn over the file list, so files spread over workers. What each format holds, and every reason
an input is rejected, is in datagen/readers/seed_readers.py: every input (line, table row, text file)
ends kept or rejected with a reason.

max_seeds: only the first N kept seeds in (file, row) order are read as inputs. A file is read
up to its N-th kept seed; rows after the corpus-wide N-th kept seed are not inputs at all: they
count neither as `in` nor as rejected, so `kept + rejected == in` holds over the prefix read.
Finding that prefix waits for every file's first N seeds (a barrier), cheap for small N.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from datagen import SHIPPED_SEEDS
from datagen.config_loader import option
from datagen.record import KEPT
from datagen.readers.seed_readers import FORMATS, STAGE, SeedFile, extension, read_seed_file
from datagen.stage import StageResult, StageCounters, route, run_stage

HF_MARKERS = ("state.json", "dataset_info.json")  # a folder written by Dataset.save_to_disk
_GLOB = re.compile(r"[*?\[]")


@dataclass
class SeedsConfig:
    path: str = option("", "file, folder or glob; empty: the corpus shipped in datagen/data/seeds.jsonl")
    max_seeds: int | None = option(None, "keep the first N seeds in (file, row) order; later rows are not read")
    min_chars: int = option(20, "shorter texts are rejected as too_short")
    max_chars: int = option(20000, "longer texts are rejected as oversized")
    default_domain: str = option("general", "domain of seeds that name none")


# -- listing ---------------------------------------------------------------------------------
def list_seed_files(path: str) -> list[SeedFile]:
    """The files under `path` in sorted order; ValueError when there are none."""
    if _GLOB.search(path):
        paths = _match(path)
    else:  # a folder (everything below it), else a single file
        paths = _match(path.rstrip("/") + "/**")
        if not paths:
            paths = [p for p in _match(path) if not os.path.isdir(p)]
            if paths and extension(paths[0]) not in FORMATS:
                raise ValueError(f"seeds.path {path!r}: unsupported file type; expected one of "
                                 f"{', '.join(FORMATS)} or a folder saved by datasets' save_to_disk")
    paths = sorted(p for p in paths if not _basename(p).startswith("."))
    if not paths:
        raise ValueError(f"seeds.path {path!r}: no seed files found")
    return _classify(paths)


def _match(pattern: str) -> list[str]:
    try:
        return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # noqa: BLE001 - filesystems raise on missing prefixes; that is "no match"
        return []


def _basename(path: str) -> str:
    return FileSystems.split(path)[1]


def _dirname(path: str) -> str:
    return FileSystems.split(path)[0]


def _classify(paths: list[str]) -> list[SeedFile]:
    hf_dirs = {_dirname(p) for p in paths if _basename(p) in HF_MARKERS}
    hf_shards = {p for d in hf_dirs for p in _hf_shards(d, paths)}
    files = [SeedFile(p, "arrow") for p in hf_shards]  # a listed shard that is gone: "unreadable"
    for p in paths:
        if _dirname(p) not in hf_dirs and _basename(p) != "dataset_dict.json":  # else HF bookkeeping
            files.append(SeedFile(p, FORMATS.get(extension(p), "unsupported")))
    return sorted(files)


def _hf_shards(folder: str, paths: list[str]) -> list[str]:
    """The Arrow shards `state.json` lists, or every .arrow file in the folder without one."""
    state = FileSystems.join(folder, "state.json")
    if state in paths:
        try:
            with FileSystems.open(state) as f:
                names = [entry["filename"] for entry in json.load(f).get("_data_files", [])]
        except Exception as err:  # noqa: BLE001 - any failure here means a broken dataset folder
            raise ValueError(f"{state}: not a readable datasets state file: {err}") from err
        return [FileSystems.join(folder, name) for name in names]
    return [p for p in paths if _dirname(p) == folder and p.endswith(".arrow")]


# -- Beam ------------------------------------------------------------------------------------
class ReadSeedFile(beam.DoFn):
    """(file index, SeedFile) → ((file index, row), Record); stops at max_seeds kept seeds."""

    def __init__(self, cfg: SeedsConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def process(self, element):
        file_index, seed_file = element
        kept = 0
        for row, record in read_seed_file(SeedFile(*seed_file), self.cfg):
            yield (file_index, row), record
            kept += record.status == KEPT
            if self.cfg.max_seeds is not None and kept >= self.cfg.max_seeds:
                return


class RouteSeeds(beam.DoFn):
    """Count and route each input that made it into the run."""

    def setup(self) -> None:
        self._counters = StageCounters(STAGE)

    def process(self, element):
        yield from route(STAGE, self._counters, [element[1]])


class SeedsStage(beam.PTransform):
    """`p | SeedsStage(cfg)` → StageResult(kept seeds, rejected inputs)."""

    def __init__(self, cfg: SeedsConfig) -> None:
        super().__init__()
        if cfg.max_seeds is not None and cfg.max_seeds < 1:
            raise ValueError(f"seeds.max_seeds must be >= 1 or unset, got {cfg.max_seeds}")
        self.cfg = cfg
        self.files = list_seed_files(cfg.path or str(SHIPPED_SEEDS))

    def expand(self, pbegin) -> StageResult:
        read = (pbegin
                | "ListFiles" >> beam.Create([(i, tuple(f)) for i, f in enumerate(self.files)])
                | "SpreadFiles" >> beam.Reshuffle()
                | "ReadFiles" >> beam.ParDo(ReadSeedFile(self.cfg)))
        if self.cfg.max_seeds is not None:
            read = read | "FirstSeeds" >> _FirstSeeds(self.cfg.max_seeds)
        return run_stage(read, "Route", RouteSeeds())


class _FirstSeeds(beam.PTransform):
    """Keep the inputs up to the position of the N-th kept seed in (file, row) order."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def expand(self, read):
        cutoff = (read
                  | "KeptPositions" >> beam.FlatMap(lambda item: [item[0]] if item[1].status == KEPT else [])
                  | "Smallest" >> beam.combiners.Top.Smallest(self.n)
                  | "Cutoff" >> beam.Map(lambda top, n=self.n: top[-1] if len(top) >= n else None))
        return read | "BeforeCutoff" >> beam.Filter(
            lambda item, cut: cut is None or item[0] <= cut, cut=beam.pvalue.AsSingleton(cutoff))
