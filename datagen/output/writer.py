"""Output: a hub-ready dataset directory (Parquet shards, rejects, stats, card, report, views).

Inside the Beam pipeline, `WriteRecords` writes one PCollection of Records as Parquet shards
`<dir>/<subdir>/train-00000-of-00002.parquet`, keyed by record id: Beam retries bundles
(at-least-once), so a record may arrive twice, and grouping by id keeps exactly one row. Shard
contents and names depend only on the set of records, so a rerun rewrites the same files.

After the pipeline, `datagen.output.finalize` reads `data/` and `rejects/` back and writes the training
views, `stats.json`, the dataset card and the picture report; `datagen.output.hub` uploads the lot.
All file I/O goes through Beam's FileSystems, so `gs://` directories work where the GCP extras are installed.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import uuid
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from datagen.config_loader import option
from datagen.record import Record, to_arrow
from datagen.stage import STATS_NAMESPACE_PREFIX

log = logging.getLogger(__name__)
SPLIT = "train"
DATA, REJECTS, SFT, DPO, REPORT = "data", "rejects", "sft", "dpo", "report"
OUTPUT_NAMESPACE = STATS_NAMESPACE_PREFIX + "output"  # counters of the writer, not of a stage
# What push_to_hub uploads: never the request cache or temporary files that share the directory.
UPLOAD_PATTERNS = [f"{DATA}/*.parquet", f"{REJECTS}/*.parquet", f"{SFT}/*.parquet",
                   f"{DPO}/*.parquet", f"{REPORT}/*", "README.md", "stats.json"]


@dataclass
class OutputConfig:
    """Where the dataset directory goes and how it is published."""

    dir: str = option("out/synth", "the dataset directory: local path or gs://…")
    shard_records: int = option(5000, "records per Parquet shard (the shard count follows from it)")
    push_to_hub: str = option("", "hub dataset repo id to upload to; the token comes from HF_TOKEN and is "
                                  "never printed")
    private: bool = option(True, "a new hub repo is private unless this is false")
    license: str = option("apache-2.0", "card license of the generated data; check your seeds' and models' terms")
    sft_per_prompt: int = option(4, "SFT rows per referenced item: its distinct right answers, at most this many "
                                    "(rejection sampling); other items give their one chosen answer")
    pairs_per_prompt: int = option(2, "DPO pairs per referenced item: a distinct right answer against a distinct "
                                      "wrong one, at most this many")

    def __post_init__(self) -> None:
        if self.sft_per_prompt < 1 or self.pairs_per_prompt < 1:
            raise ValueError("sft_per_prompt and pairs_per_prompt must be at least 1")


# ---------------------------------------------------------------- writing shards (Beam) --------
def shard_name(index: int, num_shards: int) -> str:
    return f"{SPLIT}-{index:05d}-of-{num_shards:05d}.parquet"


def shard_of(record_id: str, num_shards: int) -> int:
    """Stable across processes and runs (unlike hash())."""
    return int(hashlib.sha256(record_id.encode("utf-8")).hexdigest()[:12], 16) % num_shards


class _KeepOne(beam.DoFn):
    """Of the copies of one id, keep the smallest JSON: the same survivor on every run."""

    def __init__(self, subdir: str) -> None:
        self.subdir = subdir

    def setup(self) -> None:
        self._duplicates = Metrics.counter(OUTPUT_NAMESPACE, f"duplicate_ids:{self.subdir}")

    def process(self, keyed):
        record_id, copies = keyed
        copies = list(copies)
        if len(copies) > 1:
            self._duplicates.inc(len(copies) - 1)
        yield record_id, min(copies)


def _assign_shard(keyed: tuple[str, str], num_shards: int):
    record_id, record_json = keyed
    return (shard_of(record_id, num_shards), num_shards), record_json


def _write_shard(directory: str, keyed) -> str:
    """Write one shard atomically (temp file, then rename) so a retry or crash never leaves half
    a file under the final name; rows sorted by id make the bytes reproducible."""
    (index, num_shards), jsons = keyed
    records = sorted((Record.from_json(j) for j in jsons if j is not None), key=lambda r: r.id)
    final = FileSystems.join(directory, shard_name(index, num_shards))
    temp = FileSystems.join(directory, f".tmp-{uuid.uuid4().hex}-{shard_name(index, num_shards)}")
    write_bytes(temp, parquet_bytes(to_arrow(records)))
    if FileSystems.exists(final):
        FileSystems.delete([final])
    FileSystems.rename([temp], [final])
    return final


def _delete_stale(_, directory: str, written: list[str]) -> None:
    """Remove shards of an earlier run with another shard count, and orphaned temp files."""
    keep = set(written)
    ours = (f"{SPLIT}-", ".tmp-")
    stale = [m.path for m in match_files(directory, "*")
             if m.path not in keep and os.path.basename(m.path).startswith(ours)]
    if stale:
        FileSystems.delete(stale)


class WriteRecords(beam.PTransform):
    """Records → `<out_dir>/<subdir>/train-XXXXX-of-NNNNN.parquet`, one row per record id.

    A record goes to shard sha256(id) mod N with N = ceil(unique records / shard_records); rows
    are sorted by id, so the files depend only on the set of records. N is at least 1: an empty
    PCollection still leaves one valid empty shard for finalize to read. Shards of an earlier
    run with another N are deleted once all new shards are written. Returns the shard paths.
    """

    def __init__(self, out_dir: str, subdir: str, shard_records: int = 5000) -> None:
        super().__init__()
        if shard_records < 1:
            raise ValueError(f"output.shard_records must be >= 1, got {shard_records}")
        self.directory = FileSystems.join(out_dir, subdir)
        self.subdir = subdir
        self.shard_records = shard_records

    def expand(self, records):
        per_shard = self.shard_records
        unique = (records
                  | "KeyById" >> beam.Map(lambda r: (r.id, r.to_json()))
                  | "GroupById" >> beam.GroupByKey()
                  | "KeepOne" >> beam.ParDo(_KeepOne(self.subdir)))
        num_shards = (unique | "Count" >> beam.combiners.Count.Globally()
                      | "NumShards" >> beam.Map(lambda n: max(1, math.ceil(n / per_shard))))
        # One empty marker per shard index, so a shard that receives no record is still written.
        markers = num_shards | "ShardMarkers" >> beam.FlatMap(lambda n: [((i, n), None) for i in range(n)])
        assigned = unique | "AssignShard" >> beam.Map(_assign_shard, beam.pvalue.AsSingleton(num_shards))
        written = ((assigned, markers) | "AllShards" >> beam.Flatten()
                   | "GroupByShard" >> beam.GroupByKey()
                   | "WriteShard" >> beam.Map(lambda kv, d=self.directory: _write_shard(d, kv)))
        # Runs once, after every shard is written (it waits for the side input).
        _ = (records.pipeline | "CleanupTrigger" >> beam.Create([None])
             | "DeleteStale" >> beam.Map(_delete_stale, self.directory, beam.pvalue.AsList(written)))
        return written


# ---------------------------------------------------------------- file helpers ------------------
def parquet_bytes(table: pa.Table) -> bytes:
    """An empty table becomes a file with no row group: `datasets` fails on a 0-row group."""
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, table.schema) as writer:
        if table.num_rows:
            writer.write_table(table)
    return sink.getvalue()


def write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def match_files(directory: str, pattern: str):
    result = FileSystems.match([FileSystems.join(directory, pattern)])[0]
    return sorted(result.metadata_list, key=lambda m: m.path)


def read_shards(directory: str, columns: list[str] | None):
    """Yield (index, num_shards, table) for each Parquet shard in `directory`."""
    shards = [m.path for m in match_files(directory, f"{SPLIT}-*-of-*.parquet")]
    for i, path in enumerate(shards):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            yield i, len(shards), pq.read_table(pa.BufferReader(f.read()), columns=columns)
