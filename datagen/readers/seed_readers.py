"""Reading seed files: each input (a JSONL line, a table row, a text file) → a seed or a reject.

The seeds stage's readers (datagen/stages/seeds.py lists the files and runs these in Beam). Formats,
chosen by file name (`.gz`, `.bz2`, ... compression is detected by Beam):
- JSONL (`.jsonl`, `.json`): one JSON object per line;
- Parquet (`.parquet`) and Arrow IPC shards (`.arrow`, as `datasets`' save_to_disk writes them);
- plain text (`.txt`, `.md`): one document per file.
Fields: `text` (required), `domain` (optional, else `default_domain`), `source` (optional, else
`path:line` for JSONL lines, `path#row` for table rows, the path for text files). A row with
`instruction` instead is a given item (`given_item`): used as written, with an optional `reference`
(exact final answer) or `tests` that its answers are checked against.

Reject reasons: not_utf8, invalid_json, missing_text, invalid_field (domain/source not a string),
empty_text, too_short, oversized, unsupported_format (a file type we cannot read), unreadable (a
corrupt file; rows read before the error stay). Rejects carry their location as source and the
first 200 chars of text. A line longer than 8 bytes per allowed char (+64 KiB for other fields)
is rejected as oversized without being held in memory. seed_id is a hash of the stripped seed
text (stable across runs); rejects hash their location.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import BinaryIO, Iterator, NamedTuple, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from datagen.record import Record

STAGE = "seeds"  # rejects made while reading are the seeds stage's
REJECT_TEXT_CHARS = 200
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".txt": "text", ".md": "text",
           ".parquet": "parquet", ".arrow": "arrow"}
_CHUNK_BYTES = 1 << 20


class SeedLimits(Protocol):
    """What the readers need from the seeds config."""

    min_chars: int
    max_chars: int
    default_domain: str


class SeedFile(NamedTuple):
    path: str
    kind: str  # jsonl | text | parquet | arrow | unsupported


def extension(path: str) -> str:
    """The format extension, compression suffix aside ("a.jsonl.gz" → ".jsonl")."""
    name = FileSystems.split(path)[1].lower()
    if CompressionTypes.detect_compression_type(name) != CompressionTypes.UNCOMPRESSED:
        name = name.rsplit(".", 1)[0]
    return os.path.splitext(name)[1]


# -- turning fields into a seed or a reject ----------------------------------------------------
def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def reject(where: str, reason: str, detail: str, text: str = "") -> Record:
    return Record(seed_id=content_hash("reject:" + where), source=where,
                  seed_text=text[:REJECT_TEXT_CHARS]).rejected(STAGE, reason, detail)


def make_seed(text: str, domain: str, source: str, where: str, cfg: SeedLimits) -> Record:
    stripped = text.strip()
    if not stripped:
        return reject(where, "empty_text", "text is blank")
    if len(stripped) < cfg.min_chars:
        return reject(where, "too_short", f"{len(stripped)} chars < min_chars {cfg.min_chars}", stripped)
    if len(stripped) > cfg.max_chars:
        return reject(where, "oversized", f"{len(stripped):,} chars > max_chars {cfg.max_chars:,}", stripped)
    return Record(seed_id=content_hash(stripped), domain=domain, source=source, seed_text=stripped)


def seed_from_fields(fields: dict, where: str, cfg: SeedLimits) -> Record:
    """A seed from a parsed JSON object or table row (one with `instruction`: a given item)."""
    if "instruction" in fields:
        return given_item(fields, where, cfg)
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


def given_item(fields: dict, where: str, cfg: SeedLimits) -> Record:
    """A ready-made item: `instruction` is used as written (its seed text too), with an optional check:
    `reference` (the exact final answer, a string or number) or `tests` (assert lines calling the function).
    A referenced item skips generate, evolve and the domain cap; its answers are judged against the
    check (datagen/stages/consistency.py). No min_chars: "Compute 3 + 4." is a whole question."""
    values = {name: fields.get(name) for name in ("instruction", "reference", "tests", "domain", "source")}
    if isinstance(values["reference"], (int, float)) and not isinstance(values["reference"], bool):
        values["reference"] = str(values["reference"])
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            return reject(where, "invalid_field", f"'{name}' is {type(value).__name__}, expected a string",
                          str(values["instruction"] or ""))
        if isinstance(value, str) and not _encodable(value):
            return reject(where, "not_utf8", f"'{name}' holds a lone surrogate (\\ud800-\\udfff escape)")
    text = (values["instruction"] or "").strip()
    if not text:
        return reject(where, "empty_text", "instruction is blank")
    if len(text) > cfg.max_chars:
        return reject(where, "oversized", f"{len(text):,} chars > max_chars {cfg.max_chars:,}", text)
    reference, tests = (values["reference"] or "").strip(), (values["tests"] or "").strip()
    domain = (values["domain"] or "").strip().lower() or cfg.default_domain
    return Record(seed_id=content_hash(text), domain=domain, source=values["source"] or where, seed_text=text,
                  instruction=text, objective=bool(reference or tests), reference=reference, tests=tests)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# -- readers: (row, Record) from an open binary file -------------------------------------------
def line_byte_limit(cfg: SeedLimits) -> int:
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


def seed_from_line(line: Line, where: str, cfg: SeedLimits) -> Record:
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


def read_jsonl(f: BinaryIO, path: str, cfg: SeedLimits) -> Iterator[tuple[int, Record]]:
    for line_no, line in enumerate(iter_lines(f, line_byte_limit(cfg)), start=1):
        yield line_no, seed_from_line(line, f"{path}:{line_no}", cfg)


def read_text_file(f: BinaryIO, path: str, cfg: SeedLimits) -> Iterator[tuple[int, Record]]:
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


def read_parquet(f: BinaryIO, path: str, cfg: SeedLimits) -> Iterator[tuple[int, Record]]:
    table = pq.ParquetFile(f)
    columns = [c for c in ("text", "domain", "source") if c in table.schema_arrow.names]
    yield from _table_rows(table.iter_batches(batch_size=512, columns=columns), path, cfg)


def read_arrow(f: BinaryIO, path: str, cfg: SeedLimits) -> Iterator[tuple[int, Record]]:
    """Arrow IPC: the stream format `save_to_disk` writes, else the file (Feather v2) format."""
    try:
        batches = iter(pa.ipc.open_stream(f))
    except pa.ArrowInvalid:
        f.seek(0)
        reader = pa.ipc.open_file(f)
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
    yield from _table_rows(batches, path, cfg)


def _table_rows(batches, path: str, cfg: SeedLimits) -> Iterator[tuple[int, Record]]:
    row = 0
    for batch in batches:
        names = [n for n in ("text", "domain", "source") if n in batch.schema.names]
        columns = {n: batch.column(n).to_pylist() for n in names}
        for i in range(batch.num_rows):
            yield row, seed_from_fields({n: values[i] for n, values in columns.items()}, f"{path}#{row}", cfg)
            row += 1


READERS = {"jsonl": read_jsonl, "text": read_text_file, "parquet": read_parquet, "arrow": read_arrow}


def read_seed_file(seed_file: SeedFile, cfg: SeedLimits) -> Iterator[tuple[int, Record]]:
    """(row, Record) for every input in one file; a file that breaks mid-way ends in a reject."""
    path, kind = seed_file
    if kind not in READERS:
        yield 0, reject(path, "unsupported_format", f"cannot read {extension(path) or 'extension-less'} "
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
