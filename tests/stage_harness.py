"""Run one datagen stage on Beam's DirectRunner and return what it kept, rejected and counted.

Shared by the stage tests so each file only says which stage to build and how to sort its outputs.
The DirectRunner executes in this process, so a module-level sink is enough to collect outputs.
"""
from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from datagen.record import Record
from datagen.stage import STATS_NAMESPACE_PREFIX

_SINK: dict[str, list[Record]] = collections.defaultdict(list)


@dataclasses.dataclass
class StageRun:
    """Outputs of one pipeline run."""

    kept: list[Record]  # records on the stage's kept output, in arrival order
    rejected: list[Record]  # records on the stage's rejected output, in arrival order
    counters: dict[str, dict[str, int]]  # stage namespace (no prefix) → counter name → committed value


def _collect(record: Record, name: str) -> None:
    _SINK[name].append(record)


def _read_counters(outcome, namespaces: Iterable[str]) -> dict[str, dict[str, int]]:
    """Committed counters per namespace, summed over steps (one stage may count in several DoFns)."""
    counters = {}
    for ns in namespaces:
        query = outcome.metrics().query(MetricsFilter().with_namespace(STATS_NAMESPACE_PREFIX + ns))
        totals: dict[str, int] = collections.Counter()
        for counter in query["counters"]:
            totals[counter.key.metric.name] += counter.committed
        counters[ns] = dict(totals)
    return counters


def run_transform(records: Sequence[Record] | None, transform: beam.PTransform,
                  namespaces: Iterable[str]) -> StageRun:
    """Apply `transform` to `beam.Create(records)`, or at the pipeline root when `records` is None
    (a source stage such as SeedsStage); its output must have `.kept` and `.rejected`."""
    _SINK.clear()
    p = beam.Pipeline(runner="DirectRunner")
    source = p if records is None else p | beam.Create(records)
    result = source | transform
    result.kept | "CollectKept" >> beam.Map(_collect, "kept")
    result.rejected | "CollectRejected" >> beam.Map(_collect, "rejected")
    outcome = p.run()
    outcome.wait_until_finish()
    return StageRun(list(_SINK["kept"]), list(_SINK["rejected"]), _read_counters(outcome, namespaces))
