"""Shared test setup: no hub access, quiet logs, and helpers to find our vLLM processes."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import pytest  # noqa: E402


def vllm_processes_of(pid: int | None = None) -> list[psutil.Process]:
    """vLLM server processes (api server or engine) — of one server group, or all of ours."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "name"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            name = proc.info["name"] or ""
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue  # already dead; only waiting for init to reap it
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "vllm.entrypoints.openai.api_server" in cmd or name.startswith("VLLM::"):
            if pid is None or os.getpgid(proc.pid) == pid:
                found.append(proc)
    return found


@pytest.fixture
def no_vllm_left_behind():
    """Fail the test if it leaves a vLLM process running."""
    before = {p.pid for p in vllm_processes_of()}
    yield
    leftover = [p for p in vllm_processes_of() if p.pid not in before]
    for proc in leftover:
        proc.kill()
    assert not leftover, f"vLLM processes left running: {[p.pid for p in leftover]}"
