"""Reading a written dataset directory back as Records, for assertions on what a run kept."""
from __future__ import annotations

from datagen.output.writer import read_shards
from datagen.record import Record, from_arrow


def read_records(directory: str) -> list[Record]:
    """Every record in a directory written by WriteRecords (e.g. DIR/data), in shard order."""
    return [r for _, _, table in read_shards(directory, None) for r in from_arrow(table)]
