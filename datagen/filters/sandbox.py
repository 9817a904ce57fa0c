"""Run model-written Python with its tests, contained: the self-consistency stage's sandbox.

The code sandbox is a separate `python -I -B` process in a fresh temp dir, in its own session
(killed as a group on timeout), with rlimits on address space, CPU time, file size and core
dumps, and a network namespace (`unshare --net`) when the host allows one. The limits are set
by the child's first statements rather than in `preexec_fn`, which Python documents as unsafe
in threaded parents such as Beam workers. An audit hook installed before the model's code runs
refuses sockets, subprocesses, fork/exec, signals to other processes, ctypes, and writes or
deletions outside the temp dir. This stops accidents in model-written code; it is not a
security boundary against code written to escape (it can still read files and burn its CPU
budget). Run untrusted pipelines inside a container or VM as well.
"""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import NamedTuple


class RunResult(NamedTuple):
    ok: bool
    stdout: str
    error: str  # "" when ok; else "timeout", a signal, or the last line of stderr


_SANDBOX_PRELUDE = r"""
import os, resource, sys
def _cap(kind, value):
    hard = resource.getrlimit(kind)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value if hard == resource.RLIM_INFINITY else hard))
_mem, _cpu, _fsize, _name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
_cap(resource.RLIMIT_AS, _mem); _cap(resource.RLIMIT_CPU, _cpu)
_cap(resource.RLIMIT_FSIZE, _fsize); _cap(resource.RLIMIT_CORE, 0)
_ROOT = os.path.realpath(os.getcwd())
_DENY = ("socket.", "subprocess.", "os.exec", "os.fork", "os.posix_spawn", "os.spawn", "os.system",
         "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.call_function", "pty.",
         "webbrowser.")
_MUTATE = {"os.remove", "os.rmdir", "os.rename", "os.link", "os.symlink", "os.chmod", "os.chown",
           "os.truncate", "os.mkdir", "os.utime", "shutil.rmtree"}
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
def _inside(path):
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str) or path == os.devnull:
        return True
    real = os.path.realpath(path)
    return real == _ROOT or real.startswith(_ROOT + os.sep)
def _guard(event, args):
    if event.startswith(_DENY):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        paths = args[:1] if isinstance(args[2], int) and args[2] & _WRITE else ()
    else:
        paths = [a for a in args if isinstance(a, (str, bytes))] if event in _MUTATE else ()
    if not all(_inside(p) for p in paths):
        raise PermissionError(f"sandbox: {event} outside the sandbox directory")
import builtins, ctypes  # ctypes now, so that importing it later (numpy does) opens no library
sys.addaudithook(_guard)
_ns = {"__name__": _name, "__builtins__": builtins}
try:
    exec(compile(open("solution.py", encoding="utf-8").read(), "solution.py", "exec"), _ns)
except SystemExit as stop:
    if os.path.exists("tests.py"):
        raise SystemExit(f"solution exited before the tests ran ({stop.code})")
    raise
if os.path.exists("tests.py"):
    exec(compile(open("tests.py", encoding="utf-8").read(), "tests.py", "exec"), _ns)
"""


@functools.lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """`unshare` arguments that give a private network namespace here, or () if none works."""
    binary = shutil.which("unshare")
    for prefix in ((binary, "--net", "--map-root-user"), (binary, "--net")) if binary else ():
        try:
            probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def run_sandboxed(code: str, tests: str = "", timeout: float = 5.0, memory_mb: int = 256,
                  output_kb: int = 256, network_namespace: bool = True) -> RunResult:
    """Run `code` (then `tests` in the same namespace) in the sandbox described above."""
    with tempfile.TemporaryDirectory(prefix="synthpost-sandbox-") as workdir:
        with open(os.path.join(workdir, "solution.py"), "w", encoding="utf-8") as f:
            f.write(code)
        if tests.strip():
            with open(os.path.join(workdir, "tests.py"), "w", encoding="utf-8") as f:
                f.write(tests)
        cpu_seconds = int(timeout) + 1
        argv = [*(_netns_prefix() if network_namespace else ()), sys.executable, "-I", "-B", "-c",
                _SANDBOX_PRELUDE, str(memory_mb << 20), str(cpu_seconds), str(output_kb << 10),
                "solution" if tests.strip() else "__main__"]
        env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
               "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        with open(os.path.join(workdir, ".stdout"), "w+b") as out, \
                open(os.path.join(workdir, ".stderr"), "w+b") as err:
            try:
                proc = subprocess.Popen(argv, cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=err, start_new_session=True)
            except OSError as error:
                return RunResult(False, "", f"cannot start sandbox: {error}")
            try:
                code_ = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return RunResult(False, "", "timeout")
            stdout, stderr = (_read_head(f) for f in (out, err))
        if code_ == 0:
            return RunResult(True, stdout, "")
        return RunResult(False, stdout, _describe_failure(code_, stderr))


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _read_head(f, limit: int = 65536) -> str:
    f.seek(0)
    return f.read(limit).decode("utf-8", errors="replace")


def _describe_failure(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return (lines[-1] if lines else f"exit code {returncode}")[:160]


# -- grouping ----------------------------------------------------------------------------------
