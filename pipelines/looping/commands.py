"""Running one step's command as a child process: its output to a log file, a progress line every
`every` seconds (elapsed time, machine load, the child's last log line), one clear error when it fails,
and on Ctrl-C an interrupt the child can clean up after (its model servers stop) before it is ended."""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from pipelines.looping.steps import LoopError, format_seconds

log = logging.getLogger("synthpost.loop")

_PROGRESS_BAR = re.compile(r"\r")
_NOISE = ("Loading weights", "Writing model shards", "Generating train split", "Tokenizing", "Map", "Filter",
          "Dropping fully truncated", "Packing", "Adding EOS", "Applying chat template", "Extracting prompt",
          "Truncating", "[dpo] HTTP Request", "[sft] HTTP Request")


def last_line(path: Path, limit: int = 160) -> str:
    """The child's latest meaningful line (progress bars reduced to their last state)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [_PROGRESS_BAR.split(line)[-1].strip() for line in tail.splitlines()]
    lines = [line for line in lines if line and not line.startswith(_NOISE)]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= limit else line[:limit - 1] + "…"


def error_line(path: Path) -> str:
    """The child's own error line (`error: ...`) if it printed one, else its last line."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    for wanted in (lambda line: line.startswith("error:"), lambda line: re.match(r"^\w+(Error|Exception): ", line)):
        found = next((line.strip() for line in reversed(lines) if wanted(line)), None)
        if found:
            return found
    return last_line(path, 300)


def run_logged(argv: list[str], log_path: Path, label: str, env: dict[str, str] | None = None,
               every: float = 30.0, cwd: str | None = None) -> None:
    """Run `argv`, appending its output to `log_path`; LoopError when it fails."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log_path, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 # unbuffered: the progress line read from the log is the step's latest
                                 env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, cwd=cwd,
                                 start_new_session=True)
        try:
            while True:
                try:
                    code = child.wait(timeout=every)
                    break
                except subprocess.TimeoutExpired:
                    log.info("%s: %s, load %.1f | %s", label, format_seconds(time.monotonic() - started),
                             os.getloadavg()[0], last_line(log_path))
        except KeyboardInterrupt:
            stop_child(child)
            raise
    if code != 0:
        raise LoopError(f"step {label} failed (exit {code}): {error_line(log_path)} — log: {log_path}",
                        exit_code=2 if code == 2 else 1)


def stop_child(child: subprocess.Popen, grace: float = 60.0) -> None:
    """SIGINT to the child's process group (our commands stop their servers on it), then SIGKILL."""
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
