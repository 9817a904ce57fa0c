"""Datagen against its own limit: the demo pipeline's tokens/s as a share of a replay of its requests.

    .venv/bin/python benchmarks/replay_limit.py [--max_seeds 16] [--rounds 2] [--replay_concurrency 0]
        [--out FILE.json] [--<section>.<key> VALUE ...]

One managed vLLM server per model (the pipeline's own ModelConfig, in dev mode so its prefix cache
can be emptied) is started once and warmed; its cold start is in no figure. Then, `rounds` times,
order alternated (pipeline first in even rounds), the prefix cache emptied before each timed run:
- pipeline: `pipelines.synth.run` (what `python -m pipelines.synth` runs) on the shipped seeds,
  the call cache in a fresh directory, so every call reaches the model and the cache then holds
  each of them with its request;
- replay: every request in the latest pipeline run's cache (`CallCache.iter_entries`), rebuilt with
  its sampling params, sent by a bare client (datagen's OpenAI client: no Beam, no stages) all at
  once (`--replay_concurrency 0`) or at most N in flight, to the same server.
Per run: generated tokens, wall time, tokens/s, load average before/after, CPU seconds of this
process (Beam, stages, client) and of the server, and how full the engine was kept
(benchmarks/call_log.py); per pipeline run, when each stage had records at the model. Result:
pipeline tokens/s ÷ replay tokens/s, over the whole run and over the model span (goal ≥ 0.9).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

from benchmarks.call_log import CallLog, shape
from benchmarks.common import reset_prefix_cache
from benchmarks.server_metrics import EngineSampler
from datagen import progress
from datagen.cache import CallCache
from datagen.inference import registry
from datagen.inference.base import Request, SamplingParams
from datagen.inference.openai_client import OpenAIEndpointLLM
from datagen.inference.vllm_server import server_processes
from pipelines import synth


def start_servers(models: list[registry.ModelConfig]) -> dict[str, CallLog]:
    """Each model's server started and warmed; its registry instance wrapped in a CallLog."""
    logs = {}
    for model in models:
        cached = registry.get_llm(model)  # CachedLLM(ManagedVLLM): starts on the first miss
        cached.llm.start().result()
        warm = [Request.chat(f"Say hello in {w} words.", params=SamplingParams(max_tokens=16, seed=i))
                for i, w in enumerate(["two", "three", "four", "five"] * 2)]
        cached.llm.generate(warm)
        logs[model.key()] = CallLog(cached)
        registry.install(model, logs[model.key()])
    return logs


def server_cpu(logs: dict[str, CallLog]) -> float:
    total = 0.0
    for log in logs.values():
        server = log.llm.llm.server
        for proc in server_processes(server.proc.pid, server.tag, False):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except Exception:  # noqa: BLE001 - a process gone meanwhile
                pass
    return total


def measured(logs: dict[str, CallLog], run) -> dict:
    """Run `run()` (returns its calls, start, end, extra figures and stage timeline), with the
    engine's own metrics, the load and the CPU seconds around it."""
    urls = [log.llm.llm.server.base_url for log in logs.values()]
    for url in urls:
        reset_prefix_cache(url)
    load_before, cpu, srv = os.getloadavg()[0], time.process_time(), server_cpu(logs)
    with EngineSampler(urls) as engine:
        calls, start, end, extra, timeline = run()
    figures = shape(calls, start, end)
    figures.update(engine.summary(), load_before=round(load_before, 1), load_after=round(os.getloadavg()[0], 1),
                   client_cpu_s=round(time.process_time() - cpu, 1), server_cpu_s=round(server_cpu(logs) - srv, 1),
                   every_10s=coarse(engine, timeline, start - engine.started), **extra)
    return figures


def pipeline_run(argv: list[str], beam_args: list[str], logs: dict[str, CallLog], calls_dir: str):
    shutil.rmtree(calls_dir, ignore_errors=True)
    cfg, _ = synth.parse_args(argv + ["--output", tempfile.mkdtemp(prefix="replay-limit-out-")])
    for log in logs.values():
        log.reset()
    progress.reset()
    start = time.monotonic()
    with progress.Timeline(every=1.0) as timeline:
        summary = synth.run(cfg, beam_args)
    end = time.monotonic()
    for log in logs.values():
        log.llm.flush()  # every call on disk before the replay reads them
    calls = [c for log in logs.values() for c in log.calls]
    extra = {"kept": summary["kept"], "rejected": summary["rejected"], "stages": stage_windows(timeline)}
    return calls, start, end, extra, timeline


def replay_run(calls_dir: str, logs: dict[str, CallLog], concurrency: int):
    entries = [e for e in CallCache(calls_dir).iter_entries() if not isinstance(e, str)]
    servers = {log.identity: log.llm.llm for log in logs.values()}
    clients = {identity: CallLog(OpenAIEndpointLLM(
        llm.base_url, llm.model, identity=identity, max_concurrency=concurrency or len(entries), max_attempts=1))
        for identity, llm in servers.items()}
    try:
        start = time.monotonic()
        futures = [clients[e.model].submit(e.request) for e in entries]
        failed = sum(1 for f in futures if not f.result().ok)
        end = time.monotonic()
    finally:
        for client in clients.values():
            client.close()
    calls = [c for client in clients.values() for c in client.calls]
    return calls, start, end, {"failed": failed}, None


def stage_windows(timeline: progress.Timeline) -> dict:
    """Per stage: records done, and from when to when it had records at the model."""
    windows: dict[str, dict] = {}
    for elapsed, done, busy, _ in timeline.rows:
        for stage in {*done, *busy}:
            w = windows.setdefault(stage, {"first_s": round(elapsed), "done": 0})
            w["done"] = done.get(stage, 0)
            if busy.get(stage):
                w.setdefault("at_model_from_s", round(elapsed))
                w["at_model_until_s"] = round(elapsed)
    return windows


def coarse(engine: EngineSampler, timeline: progress.Timeline | None, offset: float) -> list[str]:
    """One line per 10 s of the run: sequences the engine ran (min-max), waiting at most, tokens it
    generated, and (pipeline) the stages with records at the model. `offset`: run start − sampler start."""
    lines, stage_rows = [], timeline.rows if timeline else []
    rows = [(t - offset, *rest) for t, *rest in engine.rows]
    end = rows[-1][0] if rows else 0
    for t0 in range(0, int(end) + 1, 10):
        window = [r for r in rows if t0 <= r[0] < t0 + 10]
        if not window:
            continue
        before = [r for r in rows if r[0] < t0]
        tokens = window[-1][3] - (before[-1][3] if before else 0)
        busy = next((b for elapsed, _, b, _ in stage_rows if elapsed >= t0 + 5), {})
        stages = " ".join(f"{s}:{n}" for s, n in busy.items())
        lines.append(f"{t0:4d}s running {min(r[1] for r in window):3.0f}-{max(r[1] for r in window):3.0f} "
                     f"waiting ≤{max(r[2] for r in window):3.0f}  tokens {tokens:5.0f}  {stages}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_seeds", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replay_concurrency", type=int, default=0, help="0: every request at once")
    parser.add_argument("--out", help="also write the full result (timelines included) here")
    args, rest = parser.parse_known_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("apache_beam", "httpx", "httpx2", "openai", "datasets", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    calls_dir = tempfile.mkdtemp(prefix="replay-limit-calls-")
    argv = ["--max_seeds", str(args.max_seeds), "--cache.dir", calls_dir, *rest]
    cfg, beam_args = synth.parse_args(argv)
    models = synth.preflight(cfg, local=True)
    cached_models = synth.models_with_cache(cfg)
    runs: dict[str, list[dict]] = {"pipeline": [], "replay": []}
    try:
        logs = start_servers([cached_models[n] for n in cfg.models if cfg.models[n] in models])
        for r in range(args.rounds):
            for side in (["pipeline", "replay"] if r % 2 == 0 else ["replay", "pipeline"]):
                if side == "pipeline":
                    result = measured(logs, lambda: pipeline_run(argv, beam_args, logs, calls_dir))
                    shutil.rmtree(calls_dir + ".recorded", ignore_errors=True)
                    shutil.copytree(calls_dir, calls_dir + ".recorded")
                else:
                    result = measured(logs, lambda: replay_run(calls_dir + ".recorded", logs,
                                                               args.replay_concurrency))
                runs[side].append(result)
                print(f"round {r} {side}: {result['tokens']} tokens in {result['wall_s']} s = "
                      f"{result['tok_s_wall']} tok/s (model span {result['tok_s_model_span']}), "
                      f"load {result['load_before']}→{result['load_after']}", file=sys.stderr, flush=True)
    finally:
        registry.shutdown_all()
        shutil.rmtree(calls_dir, ignore_errors=True)
        shutil.rmtree(calls_dir + ".recorded", ignore_errors=True)
    report(runs, args)


def report(runs: dict[str, list[dict]], args) -> None:
    def mean(side: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs[side])

    summary_keys = ["calls", "sequences", "tokens", "wall_s", "tok_s_wall", "model_span_s", "tok_s_model_span",
                    "ramp_s", "after_last_answer_s", "engine_generated_tokens", "engine_mean_running",
                    "engine_peak_running", "engine_idle_s", "engine_under_8_s", "client_cpu_s", "server_cpu_s",
                    "load_before", "load_after", "kept", "rejected", "failed"]
    result = {
        "seeds": args.max_seeds, "replay_concurrency": args.replay_concurrency or "all",
        "ratio_tok_s_wall": round(mean("pipeline", "tok_s_wall") / mean("replay", "tok_s_wall"), 3),
        "ratio_tok_s_model_span": round(mean("pipeline", "tok_s_model_span") / mean("replay", "tok_s_model_span"), 3),
        **{side: [{k: r[k] for k in summary_keys if k in r} for r in runs[side]] for side in runs},
        "pipeline_stages": [r["stages"] for r in runs["pipeline"]],
    }
    print(json.dumps(result, indent=2))
    for side in runs:
        print(f"\n{side}, round 0, every 10 s:\n" + "\n".join(runs[side][0]["every_10s"]), file=sys.stderr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({**result, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
