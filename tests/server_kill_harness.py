"""A parent process that starts a managed server through one of the product's entries, for the
real-signal tests of tests/test_server_orphans.py.

    python tests/server_kill_harness.py ENTRY INFO_FILE [swallow] [--self-kill DELAY SIGNAL self|group]

ENTRY is how the server is started, as the product starts it:
- `server`: `VLLMServer(...).launch()` (the benchmarks, `python -m pipelines.models serve`);
- `managed`: the registry's managed backend, `ManagedVLLM(...).start()` (synth and eval stages,
  the judge check, the critique reward);
- `engine`: the online DPO engine, `PolicyEngine(...)` (posttrain/online/engine.py).

The server itself is a stand-in (no vLLM import, so a kill point costs well under a second): a
Python "API server" that starts an engine-like child in its group and one that leaves the group,
and on SIGTERM stops both and exits, as vLLM's API server does once it runs. With `swallow` it
ignores SIGTERM, as vLLM's does while its engine starts (measured: a SIGTERM sent once
`VLLM::EngineCore` or `VLLM::Worker` existed was ignored, and the server came up 90-120 s later).

Right after the launch returns, the harness writes INFO_FILE (JSON: the server's first process id,
its log, its tag); with `--self-kill` it then sends SIGNAL to itself or its process group after
DELAY seconds (0: at once, the first milliseconds of the server's life). Otherwise it waits to be
killed by the test.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.inference.vllm_server import VLLMServer  # noqa: E402

STAND_IN = """
import signal, subprocess, sys, time
sleep = [sys.executable, "-c", "import time; time.sleep(900)"]
children = [subprocess.Popen(sleep), subprocess.Popen(sleep, start_new_session=True)]
def shutdown(*_):
    for child in children:
        child.terminate()
        child.wait()
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[1] == "swallow" else shutdown)
print("children", *[c.pid for c in children], flush=True)
while True:
    time.sleep(1)
"""
GRACE = 2.0  # the supervisor's SIGTERM-to-SIGKILL grace here (20 s in the product)


def stand_in(swallow: bool):
    def command(self) -> list[str]:
        return [sys.executable, "-c", STAND_IN, "swallow" if swallow else "shutdown"]
    return command


def launch(entry: str) -> VLLMServer:
    model_dir = tempfile.mkdtemp(prefix="kill-harness-model-")
    if entry == "server":
        server = VLLMServer(model_dir, "stand-in")
        server.launch()
        return server
    from datagen.inference.registry import ModelConfig

    cfg = ModelConfig(backend="vllm", model=model_dir, start_timeout=900)
    if entry == "managed":
        from datagen.inference.managed import ManagedVLLM

        llm = ManagedVLLM(cfg, model_dir, start_now=False)
        llm.start()  # launches from its own thread, as a stage's first call does
        while llm.server.proc is None:
            time.sleep(0.0005)
        return llm.server
    if entry == "engine":
        from posttrain.online.engine import PolicyEngine

        return PolicyEngine(cfg, model_dir, step=0).server
    raise SystemExit(f"unknown entry {entry}")


def main(argv: list[str]) -> None:
    entry, info = argv[0], Path(argv[1])
    import datagen.inference.vllm_server as vllm_server

    vllm_server.STOP_GRACE = GRACE
    VLLMServer.command = stand_in("swallow" in argv)
    server = launch(entry)
    tmp = info.with_suffix(".tmp")
    tmp.write_text(json.dumps({"first": server.proc.pid, "log": str(server.log_path), "tag": server.tag}))
    tmp.rename(info)
    if "--self-kill" in argv:
        at = argv.index("--self-kill")
        delay, sig, target = float(argv[at + 1]), signal.Signals[argv[at + 2]], argv[at + 3]
        if delay:
            time.sleep(delay)
        if target == "group":
            os.killpg(0, sig)
        else:
            os.kill(os.getpid(), sig)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main(sys.argv[1:])
