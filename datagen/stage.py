"""What every datagen stage shares: routing kept/rejected records and counting them.

A stage is a DoFn whose outputs are Records; a record with status `rejected` goes to the
`rejected` output, the rest to the main output. Each stage counts, as Beam metrics in its
own namespace, `in` (records received), `kept` (inputs that produced at least one kept
record), `rejected:<reason>` (inputs that did not) and `out` (kept records emitted), so
`kept + rejected == in` holds at every stage and `stats.json` proves it.

Two bases: `RecordFn` for rule stages (`transform(record) -> records`) and `LLMStageFn`
for model stages (`requests(record)` → model → `complete(record, completions)`), which keeps
many requests in flight so the inference server stays busy.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Iterable, NamedTuple

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from datagen import progress
from datagen.inference.base import Completion, Request
from datagen.inference.registry import ModelConfig, get_llm
from datagen.record import KEPT, REJECTED, Record

log = logging.getLogger(__name__)
REJECTED_TAG = "rejected"
STATS_NAMESPACE_PREFIX = "synthpost."
CALLS_NAMESPACE = STATS_NAMESPACE_PREFIX + "calls"  # model calls finished (cached or not)


class StageResult(NamedTuple):
    kept: beam.PCollection
    rejected: beam.PCollection


class StageCounters:
    def __init__(self, stage: str) -> None:
        self.stage = stage
        ns = STATS_NAMESPACE_PREFIX + stage
        self.ns = ns
        self.inputs = Metrics.counter(ns, "in")
        self.kept = Metrics.counter(ns, "kept")
        self.out = Metrics.counter(ns, "out")
        self._reasons: dict[str, object] = {}

    def rejected(self, reason: str):
        if reason not in self._reasons:
            self._reasons[reason] = Metrics.counter(self.ns, f"rejected:{reason}")
        return self._reasons[reason]


def route(stage: str, counters: StageCounters, outputs: Iterable[Record], windowed: bool = False):
    """Yield outputs to the right tag and count the input once."""
    outputs = list(outputs)
    progress.record(stage)
    counters.inputs.inc()
    kept = [r for r in outputs if r.status == KEPT]
    if kept:
        counters.kept.inc()
        counters.out.inc(len(kept))
    else:
        first = next((r for r in outputs if r.status == REJECTED), None)
        counters.rejected(first.reject_reason if first else "no_output").inc()
    for record in outputs:
        if record.status == REJECTED and not record.reject_stage:
            record = record.rejected(stage, record.reject_reason or "unspecified")
        value = GlobalWindows.windowed_value(record) if windowed else record
        yield beam.pvalue.TaggedOutput(REJECTED_TAG, value) if record.status == REJECTED else value


class RecordFn(beam.DoFn):
    """A rule stage: subclasses implement `transform(record) -> Record | list[Record]`."""

    stage = "stage"

    def setup(self) -> None:
        self._counters = StageCounters(self.stage)

    def transform(self, record: Record) -> Record | list[Record]:
        raise NotImplementedError

    def process(self, record: Record):
        try:
            out = self.transform(record)
        except Exception as err:  # noqa: BLE001 - a bad record is a reject, not a crash
            log.exception("%s failed on %s", self.stage, record.id)
            out = record.rejected(self.stage, "stage_error", f"{type(err).__name__}: {err}")
        yield from route(self.stage, self._counters, out if isinstance(out, list) else [out])


class LLMStageFn(beam.DoFn):
    """A model stage. Requests are submitted without waiting; finished ones are emitted as
    later records arrive, and the rest at the end of the bundle."""

    stage = "llm_stage"

    def __init__(self, model: ModelConfig, max_inflight: int = 512) -> None:
        self.model = model
        self.max_inflight = max_inflight

    # -- for subclasses -------------------------------------------------------------------
    def requests(self, record: Record) -> list[Request] | Record:
        """The calls this record needs, or a (rejected) Record to emit without calling."""
        raise NotImplementedError

    def complete(self, record: Record, completions: list[Completion]) -> Record | list[Record]:
        raise NotImplementedError

    # -- machinery --------------------------------------------------------------------------
    def setup(self) -> None:
        self._counters = StageCounters(self.stage)
        self._calls = Metrics.counter(CALLS_NAMESPACE, "completed")
        self._lock = threading.Lock()
        self.llm = get_llm(self.model)

    def start_bundle(self) -> None:
        self._finished: queue.SimpleQueue = queue.SimpleQueue()  # records whose calls are all done
        self._waiting = 0  # records submitted and not yet emitted

    def process(self, record: Record):
        try:
            reqs = self.requests(record)
        except Exception as err:  # noqa: BLE001
            reqs = record.rejected(self.stage, "stage_error", f"{type(err).__name__}: {err}")
        if isinstance(reqs, Record):
            yield from route(self.stage, self._counters, [reqs])
            return
        self._track(record, [self.llm.submit(r) for r in reqs])
        yield from self._drain(block=self._waiting > self.max_inflight)

    def finish_bundle(self):
        while self._waiting:
            yield from self._drain(block=True, windowed=True)

    def _track(self, record: Record, futures: list) -> None:
        """Queue the record when its last call finishes: each completion costs O(1), however many
        records are in flight (the callbacks run on the client's thread and only count)."""
        self._waiting += 1
        progress.waiting(self.stage, +1)
        left = [len(futures)]

        def one_done(_future) -> None:
            with self._lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                self._finished.put((record, futures))

        if not futures:
            self._finished.put((record, futures))
        for future in futures:
            future.add_done_callback(one_done)

    def _drain(self, block: bool, windowed: bool = False):
        """Emit every record whose calls are all done, in completion order (a slow record must
        not hold back finished ones: downstream stages start on them at once). With `block`,
        first wait until at least one record is done."""
        while self._waiting:
            try:
                record, futures = self._finished.get(block=block)
            except queue.Empty:
                return
            block = False
            self._waiting -= 1
            progress.waiting(self.stage, -1)
            yield from route(self.stage, self._counters, self._complete(record, futures), windowed)

    def _complete(self, record: Record, futures) -> list[Record]:
        completions = [f.result() for f in futures]
        self._calls.inc(len(completions))
        progress.record(self.stage, 0, sum(c.completion_tokens for c in completions if not c.cached))
        failed = next((c for c in completions if c.error), None)
        if failed is not None:
            return [record.rejected(self.stage, "inference_failed", failed.error or "")]
        try:
            out = self.complete(record, completions)
        except Exception as err:  # noqa: BLE001
            log.exception("%s failed on %s", self.stage, record.id)
            out = record.rejected(self.stage, "stage_error", f"{type(err).__name__}: {err}")
        return out if isinstance(out, list) else [out]


def run_stage(pcoll: beam.PCollection, label: str, fn: beam.DoFn) -> StageResult:
    outs = pcoll | label >> beam.ParDo(fn).with_outputs(REJECTED_TAG, main="kept")
    return StageResult(outs.kept, outs[REJECTED_TAG])
