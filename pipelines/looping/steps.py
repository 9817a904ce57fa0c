"""Resumable steps: a finished step is skipped on rerun, a killed one is started again in its own
directory (where the trainers resume from their last complete checkpoint).

A step owns one directory under the loop's output and has a **fingerprint**: a hash of everything
that decides its output (its effective config and its inputs' fingerprints). Two small files record
its state:

- `loop-step.json` — written when the step finishes: fingerprint, wall seconds (over every attempt),
  mean machine load while it ran, and the step's own summary. A rerun with the same fingerprint skips
  the step; with another fingerprint it stops with one line (the directory holds another config's
  output: choose another `--output` or remove the directory), so a changed config never silently
  reuses, or resumes from, the old one's output.
- `loop-attempts.json` — written when an attempt starts and when it ends: the fingerprint and the
  seconds spent so far, so a resumed step reports its whole wall time.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("synthpost.loop")

DONE_FILE = "loop-step.json"
ATTEMPTS_FILE = "loop-attempts.json"
LOCK_FILE = ".loop-lock"


class LoopError(ValueError):
    """A step cannot run or failed; the message says which and what to do."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs as dicts, upstream fingerprints)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass
class Step:
    name: str
    directory: Path
    fingerprint: str
    run: Callable[["Step"], dict]  # does the work in `directory`; returns a JSON-able summary
    always: bool = False  # cheap steps that read the others (the table) run every time
    summary: dict = field(default_factory=dict)  # filled once done (run or skipped)
    seconds: float = 0.0
    load: float | None = None
    skipped: bool = False


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def check_owner(step: Step) -> dict | None:
    """The finished record when the step is done with this fingerprint; LoopError when its directory
    holds another config's output (finished or not); None when it has yet to run or finish."""
    for name in (DONE_FILE, ATTEMPTS_FILE):
        record = read_json(step.directory / name)
        if record is not None and record.get("fingerprint") != step.fingerprint:
            raise LoopError(f"step {step.name}: {step.directory} holds the output of another config "
                            f"(fingerprint {record.get('fingerprint')}, now {step.fingerprint}); use another "
                            f"--output, or remove {step.directory} to redo it")
    return read_json(step.directory / DONE_FILE)


class LoadSampler:
    """Mean 1-minute load average while a step runs (sampled every `every` seconds)."""

    def __init__(self, every: float = 15.0) -> None:
        self.samples: list[float] = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True, name="load-sampler")
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> float:
        self._stop.set()
        self.samples.append(os.getloadavg()[0])
        return round(sum(self.samples) / len(self.samples), 2)


@contextmanager
def step_lock(step: Step):
    """One process at a time per step directory: a second loop on the same output waits, then finds
    the step done and skips it (the lock goes with the process that holds it, even when killed)."""
    step.directory.mkdir(parents=True, exist_ok=True)
    with open(step.directory / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: another loop is running this step; waiting for it", step.name)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def run_step(step: Step) -> Step:
    """Skip the step if it is done with this fingerprint, else run it and record it as done."""
    if step.always:
        return run_always(step)
    with step_lock(step):
        return run_locked(step)


def run_always(step: Step) -> Step:
    started = time.monotonic()
    step.summary = step.run(step)
    step.seconds = round(time.monotonic() - started, 1)
    return step


def run_locked(step: Step) -> Step:
    done = check_owner(step)
    if done is not None:
        step.summary, step.seconds, step.load, step.skipped = done["summary"], done["seconds"], done.get("load"), True
        log.info("%s: done earlier (%s), skipped", step.name, format_seconds(step.seconds))
        return step
    attempts_path = step.directory / ATTEMPTS_FILE
    earlier = (read_json(attempts_path) or {}).get("seconds", 0.0)
    attempts = (read_json(attempts_path) or {}).get("attempts", 0) + 1
    write_json(attempts_path, {"fingerprint": step.fingerprint, "seconds": earlier, "attempts": attempts})
    if attempts > 1:
        log.info("%s: resuming (attempt %d, %s spent before)", step.name, attempts, format_seconds(earlier))
    else:
        log.info("%s: started", step.name)
    started, sampler = time.monotonic(), LoadSampler()
    try:
        summary = step.run(step)
    finally:
        spent = time.monotonic() - started
        load = sampler.stop()
        write_json(attempts_path, {"fingerprint": step.fingerprint, "seconds": earlier + spent, "attempts": attempts})
    step.summary, step.seconds, step.load = summary, round(earlier + spent, 1), load
    write_json(step.directory / DONE_FILE, {"fingerprint": step.fingerprint, "seconds": step.seconds,
                                            "load": load, "attempts": attempts, "summary": summary})
    log.info("%s: finished in %s (mean load %.1f)", step.name, format_seconds(step.seconds), load)
    return step


def run_steps(steps: list[Step], only: list[str] | None = None) -> list[Step]:
    """Check every step's directory first (a stale one fails before any work), then run them in order;
    with `only`, just the named steps (the others are left as they are)."""
    unknown = sorted(set(only or []) - {s.name for s in steps})
    if unknown:
        raise LoopError(f"--only: no step named {unknown[0]} (steps: {', '.join(s.name for s in steps)})")
    chosen = [s for s in steps if s.always or only is None or s.name in only]
    for step in chosen:
        if not step.always:
            check_owner(step)
    return [run_step(step) for step in chosen]


def format_seconds(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
