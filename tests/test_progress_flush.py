"""Progress reaches a pipe or a log file when it is printed, not when 8 KB have piled up.

Python block-buffers stdout into a file or a pipe (`... | tee log`, CI logs, the loop's step logs
without PYTHONUNBUFFERED). TRL/transformers print every training log line (`{'loss': ...}`) to
stdout: a training command's progress arrived minutes late. Each test reads the child's pipe while
the child still runs and waits for the test to read the line.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAINING = """
import dataclasses, sys, time
from pathlib import Path
from transformers.trainer_callback import PrinterCallback, TrainerState
from posttrain.cli import run_command

@dataclasses.dataclass
class Config:
    release: str = ""

def train(cfg):
    PrinterCallback().on_log(None, TrainerState(), None, logs={"loss": 0.5, "step": 1})  # as the Trainer logs
    deadline = time.monotonic() + 60
    while not Path(cfg.release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {}

sys.exit(run_command("probe", "probe", Config, train, sys.argv[1:]))
"""

SYNTH = """
import sys, time
from pathlib import Path
from datagen import progress

with progress.ProgressPrinter(["generate"], every=0.1):
    print("a line the run prints", flush=False)
    deadline = time.monotonic() + 60
    while not Path(sys.argv[1]).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
"""


def first_line_while_running(child: subprocess.Popen, stream, timeout: float = 45) -> str:
    """The first line on `stream`, read while `child` is still running (it waits for us)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            line = stream.readline()
            assert child.poll() is None, "the line came only when the child exited"
            return line.strip()
        assert child.poll() is None, f"the child exited before printing: {child.stderr.read()[-2000:]}"
    raise AssertionError(f"nothing reached the pipe within {timeout:.0f} s: the line is still in the child's buffer")


def run(code: str, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_training_commands_log_lines_reach_a_pipe_as_they_are_printed(tmp_path):
    release = tmp_path / "release"
    child = run(TRAINING, "--release", str(release))
    try:
        assert first_line_while_running(child, child.stdout) == "{'loss': '0.5', 'step': 1}"  # the Trainer's format
    finally:
        release.touch()
        child.wait(timeout=60)
        child.stdout.close()
        child.stderr.close()


def test_what_a_pipeline_run_prints_reaches_a_pipe_at_once(tmp_path):
    release = tmp_path / "release"
    child = run(SYNTH, str(release))
    try:
        assert first_line_while_running(child, child.stdout) == "a line the run prints"
        assert first_line_while_running(child, child.stderr).endswith("tokens generated (0 tok/s)")
    finally:
        release.touch()
        child.wait(timeout=60)
        child.stdout.close()
        child.stderr.close()
