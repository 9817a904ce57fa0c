"""Seeds: read seed documents into Records — the root of the synth pipeline.

Formats, chosen by file name (`.gz`, `.bz2`, ... compression is detected by Beam):
- JSONL (`.jsonl`, `.json`): one JSON object per line;
- Parquet (`.parquet`) and HF datasets saved with `save_to_disk` (a folder holding `state.json` /
  `dataset_info.json` and Arrow shards; a DatasetDict's splits are such folders);
- plain text (`.txt`, `.md`): one document per file.
Fields: `text` (required), `domain` (optional, else `default_domain`), `source` (optional, else
`path:line` for JSONL lines, `path#row` for table rows, the path for text files).

`cfg.path` is a file, a folder (read recursively; hidden files skipped) or a glob, on any Beam
filesystem (local, gs://, ...). Files are listed when the transform is built, so a path that
matches nothing fails at once; reading is a DoFn over the file list, so files spread over workers.

Every input (line, table row, text file) ends kept or rejected with a reason: not_utf8,
invalid_json, missing_text, invalid_field (domain/source not a string), empty_text, too_short,
oversized, unsupported_format (a file type we cannot read), unreadable (a corrupt file; rows read
before the error stay). Rejects carry their location as source and the first 200 chars of text.
A line longer than 8 bytes per allowed char (+64 KiB for other fields) is rejected as oversized
without being held in memory.

seed_id is a hash of the stripped seed text (stable across runs); rejects hash their location.

max_seeds: only the first N kept seeds in (file, row) order are read as inputs. A file is read
up to its N-th kept seed; rows after the corpus-wide N-th kept seed are not inputs at all: they
count neither as `in` nor as rejected, so `kept + rejected == in` holds over the prefix read.
Finding that prefix waits for every file's first N seeds (a barrier), cheap for small N.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from datagen.record import KEPT, Record
from datagen.stage import StageResult, StageCounters, route, run_stage

STAGE = "seeds"
DEFAULT_SEEDS_PATH = str(Path(__file__).parent / "data" / "seeds.jsonl")
REJECT_TEXT_CHARS = 200
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".md": "text",
           ".parquet": "parquet", ".arrow": "arrow"}
HF_MARKERS = ("state.json", "dataset_info.json")  # a folder written by Dataset.save_to_disk
HF_METADATA = {*HF_MARKERS, "dataset_dict.json"}
_GLOB = re.compile(r"[*?\[]")
_CHUNK_BYTES = 1 << 20


@dataclass
class SeedsConfig:
    path: str = ""  # file, folder or glob; empty: the corpus shipped in datagen/data/seeds.jsonl
    max_seeds: int | None = None  # keep the first N seeds in (file, row) order; later rows are not read
    min_chars: int = 20  # shorter texts are rejected as too_short
    max_chars: int = 20000  # longer texts are rejected as oversized
    default_domain: str = "general"


class SeedFile(NamedTuple):
    path: str
    kind: str  # jsonl | text | parquet | arrow | unsupported


# -- listing ---------------------------------------------------------------------------------
def list_seed_files(path: str) -> list[SeedFile]:
    """The files under `path` in sorted order; ValueError when there are none."""
    if _GLOB.search(path):
        paths = _match(path)
    else:  # a folder (everything below it), else a single file
        paths = _match(path.rstrip("/") + "/**")
        if not paths:
            paths = [p for p in _match(path) if not os.path.isdir(p)]
            if paths and _extension(paths[0]) not in FORMATS:
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
            files.append(SeedFile(p, FORMATS.get(_extension(p), "unsupported")))
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


def _extension(path: str) -> str:
    name = _basename(path).lower()
    if CompressionTypes.detect_compression_type(name) != CompressionTypes.UNCOMPRESSED:
        name = name.rsplit(".", 1)[0]
    return os.path.splitext(name)[1]


# -- turning fields into a seed or a reject ----------------------------------------------------
def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def reject(where: str, reason: str, detail: str, text: str = "") -> Record:
    return Record(seed_id=content_hash("reject:" + where), source=where,
                  seed_text=text[:REJECT_TEXT_CHARS]).rejected(STAGE, reason, detail)


def make_seed(text: str, domain: str, source: str, where: str, cfg: SeedsConfig) -> Record:
    stripped = text.strip()
    if not stripped:
        return reject(where, "empty_text", "text is blank")
    if len(stripped) < cfg.min_chars:
        return reject(where, "too_short", f"{len(stripped)} chars < min_chars {cfg.min_chars}", stripped)
    if len(stripped) > cfg.max_chars:
        return reject(where, "oversized", f"{len(stripped):,} chars > max_chars {cfg.max_chars:,}", stripped)
    return Record(seed_id=content_hash(stripped), domain=domain, source=source, seed_text=stripped)


def seed_from_fields(fields: dict, where: str, cfg: SeedsConfig) -> Record:
    """A seed from a parsed JSON object or table row."""
    text = fields.get("text")
    if isinstance(text, bytes):  # a binary Parquet/Arrow column
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            return reject(where, "not_utf8", f"'text' has an invalid UTF-8 byte at offset {err.start}",
                          text.decode("utf-8", "replace"))
    if text is None:
        return reject(where, "missing_text", "'text' is null" if "text" in fields else "no 'text' field")
    if not isinstance(text, str):
        return reject(where, "missing_text", f"'text' is {type(text).__name__}, expected a string")
    for name in ("text", "domain", "source"):
        value = fields.get(name)
        if value is not None and not isinstance(value, str):
            return reject(where, "invalid_field", f"'{name}' is {type(value).__name__}, expected a string",
                          text)
        if isinstance(value, str) and not _encodable(value):
            return reject(where, "not_utf8", f"'{name}' holds a lone surrogate (\\ud800-\\udfff escape)",
                          text.encode("utf-8", "replace").decode("utf-8"))
    domain = (fields.get("domain") or "").strip().lower() or cfg.default_domain
    return make_seed(text, domain, fields.get("source") or where, where, cfg)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# -- readers: (row, Record) from an open binary file -------------------------------------------
def line_byte_limit(cfg: SeedsConfig) -> int:
    return 8 * cfg.max_chars + 64 * 1024


class Line(NamedTuple):
    data: bytes | None  # None: longer than the limit, not kept in memory
    size: int
    head: bytes


def iter_lines(f: BinaryIO, max_bytes: int) -> Iterator[Line]:
    """Lines split on b"\\n", reading in chunks; lines over `max_bytes` are skipped, not stored."""
    pending, skipped, head = bytearray(), None, b""
    while chunk := f.read(_CHUNK_BYTES):
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if skipped is not None:
                skipped += len(piece)
            else:
                pending += piece
                if len(pending) > max_bytes:
                    skipped, head = len(pending), bytes(pending[:REJECT_TEXT_CHARS])
                    pending.clear()
            if end < 0:
                break
            yield Line(bytes(pending), len(pending), b"") if skipped is None else Line(None, skipped, head)
            pending.clear()
            skipped, start = None, end + 1
    if skipped is not None:
        yield Line(None, skipped, head)
    elif pending:
        yield Line(bytes(pending), len(pending), b"")


def seed_from_line(line: Line, where: str, cfg: SeedsConfig) -> Record:
    if line.data is None:
        return reject(where, "oversized", f"line is {line.size:,} bytes, over the "
                      f"{line_byte_limit(cfg):,}-byte limit", line.head.decode("utf-8", "replace"))
    try:
        text = line.data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as err:
        return reject(where, "not_utf8", f"invalid UTF-8 byte at offset {err.start}",
                      line.data.decode("utf-8", "replace"))
    if not text.strip():
        return reject(where, "empty_text", "blank line")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as err:
        return reject(where, "invalid_json", f"{type(err).__name__}: {err}"[:200], text)
    if not isinstance(obj, dict):
        return reject(where, "invalid_json", f"expected a JSON object, got {type(obj).__name__}", text)
    return seed_from_fields(obj, where, cfg)


def read_jsonl(f: BinaryIO, path: str, cfg: SeedsConfig) -> Iterator[tuple[int, Record]]:
    for line_no, line in enumerate(iter_lines(f, line_byte_limit(cfg)), start=1):
        yield line_no, seed_from_line(line, f"{path}:{line_no}", cfg)


def read_text_file(f: BinaryIO, path: str, cfg: SeedsConfig) -> Iterator[tuple[int, Record]]:
    limit = line_byte_limit(cfg)
    data = f.read(limit + 1)
    if len(data) > limit:
        yield 0, reject(path, "oversized", f"file is over the {limit:,}-byte limit",
                        data[:REJECT_TEXT_CHARS].decode("utf-8", "replace"))
        return
    try:
        text = data.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as err:
        yield 0, reject(path, "not_utf8", f"invalid UTF-8 byte at offset {err.start}",
                        data.decode("utf-8", "replace"))
        return
    yield 0, make_seed(text, cfg.default_domain, path, path, cfg)


def read_parquet(f: BinaryIO, path: str, cfg: SeedsConfig) -> Iterator[tuple[int, Record]]:
    table = pq.ParquetFile(f)
    columns = [c for c in ("text", "domain", "source") if c in table.schema_arrow.names]
    yield from _table_rows(table.iter_batches(batch_size=512, columns=columns), path, cfg)


def read_arrow(f: BinaryIO, path: str, cfg: SeedsConfig) -> Iterator[tuple[int, Record]]:
    """Arrow IPC: the stream format `save_to_disk` writes, else the file (Feather v2) format."""
    try:
        batches = iter(pa.ipc.open_stream(f))
    except pa.ArrowInvalid:
        f.seek(0)
        reader = pa.ipc.open_file(f)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    yield from _table_rows(batches, path, cfg)


def _table_rows(batches, path: str, cfg: SeedsConfig) -> Iterator[tuple[int, Record]]:
    row = 0
    for batch in batches:
        names = [n for n in ("text", "domain", "source") if n in batch.schema.names]
        columns = {n: batch.column(n).to_pylist() for n in names}
        for i in range(batch.num_rows):
            yield row, seed_from_fields({n: values[i] for n, values in columns.items()}, f"{path}#{row}", cfg)
            row += 1


READERS = {"jsonl": read_jsonl, "text": read_text_file, "parquet": read_parquet, "arrow": read_arrow}


def read_seed_file(seed_file: SeedFile, cfg: SeedsConfig) -> Iterator[tuple[int, Record]]:
    """(row, Record) for every input in one file; a file that breaks mid-way ends in a reject."""
    path, kind = seed_file
    if kind not in READERS:
        yield 0, reject(path, "unsupported_format", f"cannot read {_extension(path) or 'extension-less'} "
                        f"files; expected one of {', '.join(FORMATS)}")
        return
    compression = CompressionTypes.AUTO if kind in ("jsonl", "text") else CompressionTypes.UNCOMPRESSED
    row = -1
    try:
        with FileSystems.open(path, compression_type=compression) as f:
            for row, record in READERS[kind](f, path, cfg):
                yield row, record
    except Exception as err:  # noqa: BLE001 - a corrupt file is a reject, not a crash
        where = f"after row {row}" if row >= 0 else "at the start"
        yield row + 1, reject(path, "unreadable", f"{type(err).__name__}: {err}"[:400] + f" ({where})")


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
        self.files = list_seed_files(cfg.path or DEFAULT_SEEDS_PATH)

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
