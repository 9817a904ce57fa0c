"""A loop ended by SIGTERM (or SIGHUP) stops the step it is running, as Ctrl-C does: the step's command runs
in a session of its own, so nothing else would reach it (a terminated loop once left dpo.py and its vLLM
engine running)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PARENT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from pipelines.loop import interrupted_by_signals
    from pipelines.looping.commands import run_logged

    step = [sys.executable, "-c", "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); "
            "time.sleep(600)", sys.argv[1]]
    with interrupted_by_signals():
        try:
            run_logged(step, Path(sys.argv[2]), "step", every=1.0)
        except KeyboardInterrupt:
            sys.exit(130)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) is not running
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_loop_stops_its_running_step(tmp_path, sig):
    pid_file, log = tmp_path / "step.pid", tmp_path / "log.txt"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(pid_file), str(log)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        step_pid = int(pid_file.read_text())
        assert alive(step_pid)
        parent.send_signal(sig)
        assert parent.wait(timeout=90) == 130
        deadline = time.monotonic() + 30
        while alive(step_pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(step_pid), f"the step's command (pid {step_pid}) outlived the loop"
    finally:
        parent.kill()
        if pid_file.is_file() and pid_file.read_text():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
