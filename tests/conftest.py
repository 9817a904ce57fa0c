"""Shared test setup: no hub access, quiet logs, and helpers to find our vLLM processes."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ctypes  # noqa: E402
import time  # noqa: E402

import psutil  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# This process adopts the orphans of everything it starts (PR_SET_CHILD_SUBREAPER): a vLLM engine
# whose API server died stays our descendant instead of init's, so `no_vllm_left_behind` can
# tell our leftovers from another session's servers on a shared machine (and never kills those).
try:
    ctypes.CDLL("libc.so.6").prctl(36, 1)
except OSError:
    pass


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from a second thread; on a shared 2-core machine it mostly spins
    (measured: test_dpo.py 17 s with one thread vs 28 s with two at load average 3.4).
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer():
    """The tiny MoE's tokenizer (SmolLM2's vocabulary and chat template)."""
    from transformers import AutoTokenizer

    from datagen.inference.model_names import resolve_model
    from posttrain.model_registry import TINY_MOE_ALIAS, register_models

    register_models()
    return AutoTokenizer.from_pretrained(resolve_model(TINY_MOE_ALIAS))


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


def our_vllm_processes() -> list[psutil.Process]:
    """vLLM processes started by this test session (adopted orphans included, see above)."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    return [p for p in vllm_processes_of() if p.pid in ours]


@pytest.fixture
def no_vllm_left_behind():
    """Fail the test if it leaves a vLLM process running."""
    before = {p.pid for p in our_vllm_processes()}
    yield
    # a SIGKILLed engine of a few GB can take longer to exit than stop() waits when the machine
    # swaps (seen in CI under load): give the exits already under way a minute before judging
    deadline = time.monotonic() + 60
    leftover = [p for p in our_vllm_processes() if p.pid not in before]
    while leftover and time.monotonic() < deadline:
        time.sleep(1)
        leftover = [p for p in our_vllm_processes() if p.pid not in before]
    for proc in leftover:
        proc.kill()
    assert not leftover, f"vLLM processes left running: {[p.pid for p in leftover]}"
