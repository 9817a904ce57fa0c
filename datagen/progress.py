"""Progress on long runs: stages report finished records and tokens; a printer shows them.

Counts are per process (the DirectRunner's in-process worker shares them with the entry
point, which prints a line every few seconds); other runners show Beam's own metrics.

Python block-buffers stdout into a file or a pipe (`... | tee log`, CI logs): a line printed
without a flush arrives kilobytes later, minutes late on a slow run. `line_buffered()` makes stdout
flush at every line; the long-running commands call it at start (ProgressPrinter, posttrain/cli.py,
where TRL/transformers print every training log line to stdout).
"""
from __future__ import annotations

import sys
import threading
import time
from collections import Counter

_lock = threading.Lock()
_done: Counter = Counter()
_waiting: Counter = Counter()  # records whose model calls are in flight, per stage
_tokens = {"completion": 0}


def line_buffered(stream=None) -> None:
    """Flush `stream` (default: sys.stdout) at every newline from now on; nothing for a terminal (already
    line-buffered) or a stream that cannot be reconfigured (a test's capture)."""
    stream = sys.stdout if stream is None else stream
    if getattr(stream, "line_buffering", True):
        return
    try:
        stream.reconfigure(line_buffering=True)
    except (AttributeError, ValueError, OSError):
        pass


def record(stage: str, records: int = 1, completion_tokens: int = 0) -> None:
    with _lock:
        _done[stage] += records
        _tokens["completion"] += completion_tokens


def waiting(stage: str, change: int) -> None:
    """A record's model calls were submitted (+1) or came back (-1). Tokens are only counted when
    a record completes, so this is what shows a long stage is busy, not stuck."""
    with _lock:
        _waiting[stage] += change


def reset() -> None:
    """Start counting afresh (one pipeline run per process at a time)."""
    with _lock:
        _done.clear()
        _waiting.clear()
        _tokens["completion"] = 0


def snapshot() -> tuple[dict[str, int], int]:
    with _lock:
        return dict(_done), _tokens["completion"]


def in_flight() -> dict[str, int]:
    with _lock:
        return {stage: n for stage, n in _waiting.items() if n > 0}


class Timeline:
    """Samples the counters every `every` seconds while a run goes on: `(elapsed, done per stage,
    records at the model per stage, tokens)` rows, to see when each stage ran and what waited."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.rows: list[tuple[float, dict[str, int], dict[str, int], int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="timeline", daemon=True)
        self.started = time.monotonic()

    def __enter__(self) -> "Timeline":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sample()

    def _sample(self) -> None:
        done, tokens = snapshot()
        self.rows.append((time.monotonic() - self.started, done, in_flight(), tokens))

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()


class ProgressPrinter:
    """Prints `[  42s] generate 30 · evolve 12 (+9 at the model) · 4810 tokens generated (114 tok/s)`
    while a pipeline runs."""

    def __init__(self, order: list[str], every: float = 10.0, stream=sys.stderr) -> None:
        self.order = order
        self.every = every
        self.stream = stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)
        self._start = time.monotonic()

    def __enter__(self) -> "ProgressPrinter":
        line_buffered()  # whatever the run prints meanwhile reaches a pipe or a log file at once
        line_buffered(self.stream)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def line(self) -> str:
        done, tokens = snapshot()
        busy = in_flight()
        elapsed = time.monotonic() - self._start
        stages = [s for s in self.order if s in done or s in busy]
        stages += sorted(s for s in {*done, *busy} if s not in self.order)
        parts = [f"{s} {done.get(s, 0)}" + (f" (+{busy[s]} at the model)" if s in busy else "") for s in stages]
        rate = tokens / elapsed if elapsed > 0 else 0.0
        return f"[{elapsed:5.0f}s] " + (" · ".join(parts) or "starting (model servers warming up)") + \
            f" · {tokens} tokens generated ({rate:.0f} tok/s)"

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            print(self.line(), file=self.stream, flush=True)
