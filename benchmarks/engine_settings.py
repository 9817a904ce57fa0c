"""vLLM engine settings on CPU, each side by side against today's default, at the pipeline's concurrency.

    .venv/bin/python benchmarks/engine_settings.py --settings float32,omp-2 [--rounds 2]
        [--concurrency 32] [--max_tokens 256] [--profile SECONDS] [--out FILE.json]

The default server (datagen/inference/managed.py: server_args / server_env of a default
ModelConfig, i.e. what the pipeline starts) is started once, in dev mode so the prefix cache can
be emptied, and warmed; then for each named setting a second server (the default plus that one
change) beside it, and `rounds` times, order alternated (A B, B A, ...), each gets the same load: `concurrency` chat requests at once (all in
flight: the pipeline's max_concurrency), ~60-token prompts, `max_tokens` generated each
(ignore_eos, seeded, temperature 0.8), prefix cache emptied before each run. Only one server is
busy at a time; the idle one sleeps on its sockets. Both get `--kv_cache_gib` (1: far more
than the load needs; the other sessions' servers leave no room for two of 2 GiB). Per run: tokens/s, the load average around it,
and the CPU seconds of each server process (API server, VLLM::EngineCore, VLLM::Worker) as a
share of the run's wall time: where the engine's time goes. Result: each setting's tokens/s ÷ the
default's, pair by pair within a round, median over rounds; beside it the same ratio of tokens
per CPU-second of the worker and of the whole server (on a busy machine tokens/s mostly says
what share of the cores each run got; CPU-seconds per token do not depend on it).

`--profile N`: py-spy (set PY_SPY=/path/to/py-spy) samples each process of the default server for
N seconds of decoding (from when every request has its first tokens) during an extra run, with
native frames; the main thread's top Python functions per process go into the JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

import openai

from benchmarks.common import reset_prefix_cache  # sets VLLM_SERVER_DEV_MODE before any server starts
from benchmarks.server_metrics import read_metrics
from datagen.inference.managed import server_args, server_env
from datagen.inference.model_names import resolve_model
from datagen.inference.registry import ModelConfig
from datagen.inference.vllm_server import VLLMServer, server_processes

# ~60 tokens each with SmolLM2's chat template (its default system prompt included)
TOPICS = ["rivers", "binary search", "the French revolution", "photosynthesis", "TCP handshakes",
          "compound interest", "black holes", "sourdough bread", "hash tables", "the Silk Road",
          "volcanoes", "prime numbers", "the printing press", "vaccines", "recursion", "tides"]
PROMPT = ("Explain {topic} to a curious twelve-year-old. Use two short paragraphs, one concrete "
          "example from everyday life, and end with a question that makes them think further.")

# name -> (ModelConfig overrides, extra server args, extra server env). Each is the default plus one change.
SETTINGS: dict[str, tuple[dict, list[str], dict[str, str]]] = {
    "default": ({}, [], {}),
    "float32": ({"dtype": "float32"}, [], {}),
    "bfloat16": ({"dtype": "bfloat16"}, [], {}),
    "omp-2": ({}, [], {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}),  # the worker's OMP threads on both cores
    "omp-nobind": ({}, [], {"VLLM_CPU_OMP_THREADS_BIND": "nobind"}),  # no pinning, OpenMP's own thread count
    "omp-core1": ({}, [], {"VLLM_CPU_OMP_THREADS_BIND": "1"}),  # the worker on the other core
    # Not here: --max-num-seqs (default 128 on CPU: 32 in flight never reach it) and
    # --max-num-batched-tokens (with chunked prefill off vLLM refuses a value below max_model_len,
    # 8192, and 32 prompts of ~65 tokens already fit in one step), so neither can change this load.
    "block-64": ({}, ["--block-size", "64"], {}),  # 16: CPU attention needs a multiple of 32
    "block-32": ({}, ["--block-size", "32"], {}),
    "chunked": ({"chunked_prefill": True}, [], {}),
    "compiled": ({"enforce_eager": False}, [], {}),
}


def config_for(setting: str) -> tuple[ModelConfig, list[str], dict[str, str]]:
    overrides, args, env = SETTINGS[setting]
    return ModelConfig(**overrides), args, env


def start_server(cfg: ModelConfig, env: dict[str, str], extra_args: list[str] | None = None) -> VLLMServer:
    """The pipeline's server for `cfg` (same args and env as ManagedVLLM), started and warmed."""
    server = VLLMServer(resolve_model(cfg.model), "bench", server_args(cfg) + list(extra_args or []),
                        env={**server_env(cfg), **env}, start_timeout=1800)
    server.launch()
    return server


def warm(server: VLLMServer) -> None:
    server.wait_ready()
    asyncio.run(_load(server.base_url, 4, 8))


async def _load(base_url: str, concurrency: int, max_tokens: int) -> tuple[int, int]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=1800)

    async def one(i: int) -> tuple[int, int]:
        resp = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": PROMPT.format(topic=TOPICS[i % len(TOPICS)])
                                      + ("" if i < len(TOPICS) else f" (Variant {i // len(TOPICS)}.)")}],
            max_tokens=max_tokens, temperature=0.8, seed=i, extra_body={"ignore_eos": True})
        return resp.usage.completion_tokens, resp.usage.prompt_tokens

    try:
        done = await asyncio.gather(*(one(i) for i in range(concurrency)))
    finally:
        await client.close()
    return sum(c for c, _ in done), sum(p for _, p in done)


def role_of(proc) -> str:
    name = proc.name()
    if "Worker" in name:
        return "worker"
    if "EngineCore" in name:
        return "engine_core"
    return "api_server" if "vllm.entrypoints.openai.api_server" in " ".join(proc.cmdline()) else "other"


def process_cpu(server: VLLMServer) -> dict[str, float]:
    """CPU seconds so far of each server process, by role (other: a supervisor, the resource tracker)."""
    out: dict[str, float] = collections.defaultdict(float)
    for proc in server_processes(server.proc.pid, server.tag, False):
        try:
            role = role_of(proc)
            t = proc.cpu_times()
        except Exception:  # noqa: BLE001 - gone meanwhile
            continue
        out[role] += t.user + t.system
    return out


def timed_load(server: VLLMServer | str, concurrency: int, max_tokens: int) -> dict:
    base_url = server if isinstance(server, str) else server.base_url
    reset_prefix_cache(base_url)
    load_before = os.getloadavg()[0]
    cpu_before = {} if isinstance(server, str) else process_cpu(server)
    start = time.monotonic()
    tokens, prompt_tokens = asyncio.run(_load(base_url, concurrency, max_tokens))
    wall = time.monotonic() - start
    result = {"tokens": tokens, "mean_prompt_tokens": round(prompt_tokens / concurrency, 1), "wall_s": round(wall, 1),
              "tok_s": round(tokens / wall, 1), "load_before": round(load_before, 1),
              "load_after": round(os.getloadavg()[0], 1)}
    if cpu_before:
        after = process_cpu(server)
        result["cpu_share"] = {role: round((after[role] - cpu_before.get(role, 0.0)) / wall, 2) for role in after}
    return result


def per_cpu(run: dict, role: str | None = None) -> float:
    """Tokens per CPU-second of one server process (or of all of them): what a busy machine's time
    slicing does not change, unlike tokens/s."""
    share = run["cpu_share"][role] if role else sum(run["cpu_share"].values())
    return run["tok_s"] / share


def profile(server: VLLMServer, seconds: float, concurrency: int, max_tokens: int) -> dict:
    """py-spy top functions of each server process while it serves the load."""
    py_spy = os.environ.get("PY_SPY", "py-spy")
    procs = {}
    for proc in server_processes(server.proc.pid, server.tag, False):
        role = role_of(proc)
        if role != "other":
            procs[role] = proc.pid
    reset_prefix_cache(server.base_url)
    outputs = {role: f"/tmp/engine-profile-{role}-{os.getpid()}.txt" for role in procs}
    client_load = subprocess.Popen([sys.executable, "-c",
                                    "import asyncio, sys; from benchmarks.engine_settings import _load; "
                                    f"asyncio.run(_load({server.base_url!r}, {concurrency}, {max_tokens}))"])
    # decode only: sampling starts once every sequence has had its prefill (a token or more each)
    start = read_metrics(server.base_url)["generated"]
    while read_metrics(server.base_url)["generated"] - start < 2 * concurrency:
        time.sleep(0.5)
    spies = [subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "20",
                               "--native", "--format", "raw", "--output", outputs[role]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for role, pid in procs.items()]
    for spy in spies:
        spy.wait()
    client_load.wait()
    return {role: top_frames(path) for role, path in outputs.items()}


def top_frames(path: str, n: int = 30) -> dict:
    """From py-spy's collapsed stacks, the process's main thread only (other threads sit mostly in
    blocking reads, which native sampling does not drop): share of samples per innermost Python
    frame, and per Python function anywhere on the stack (inclusive)."""
    leaf: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or "Thread._bootstrap" in stack:
            continue
        total += int(count)
        python = [f for f in stack.split(";") if ".py:" in f]
        leaf[(python[-1] if python else stack.split(";")[-1])[:120]] += int(count)
        for frame in {f.split(" (")[0] for f in python}:
            inclusive[frame] += int(count)
    if not total:
        return {}
    return {"samples": total,
            "leaf": [(f, round(c / total, 3)) for f, c in leaf.most_common(n)],
            "inclusive": [(f, round(c / total, 3)) for f, c in inclusive.most_common(n)]}


def launch(name: str, kv_cache_gib: float, result: dict) -> VLLMServer:
    """Start and warm the server of one setting; its args, env and start time into `result`."""
    cfg, extra, env = config_for(name)
    cfg = dataclasses.replace(cfg, kv_cache_gib=kv_cache_gib)
    server = start_server(cfg, env, extra)
    result["settings"][name] = {"args": server.args, "env": {**server_env(cfg), **env}}
    started = time.monotonic()
    try:
        warm(server)
    except BaseException:
        server.stop()
        raise
    result["settings"][name]["ready_s"] = round(time.monotonic() - started, 1)
    print(f"{name}: ready in {time.monotonic() - started:.0f} s ({' '.join(server.args)} "
          f"{result['settings'][name]['env']})", file=sys.stderr, flush=True)
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="", help="comma list of: " + ", ".join(s for s in SETTINGS if s != "default"))
    parser.add_argument("--baseline", default="default", help="the setting the others are compared with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max_tokens", type=int, default=256)
    parser.add_argument("--kv_cache_gib", type=float, default=1.0,
                        help="KV cache of every server (1 GiB holds ~46k tokens, far more than 32 x 320)")
    parser.add_argument("--profile", type=float, default=0, help="seconds of py-spy on the baseline server")
    parser.add_argument("--out")
    args = parser.parse_args()
    names = [s for s in args.settings.split(",") if s]
    runs: dict[str, list[dict]] = {args.baseline: []}
    pairs: dict[str, list[tuple[dict, dict]]] = {}
    result: dict = {"settings": {}, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                    "kv_cache_gib": args.kv_cache_gib}
    base = None
    try:
        # the baseline stays up; each setting gets its own server beside it, measured A B A B (two
        # servers at most: a third does not fit beside the other sessions' servers in 24 GiB)
        base = launch(args.baseline, args.kv_cache_gib, result)
        if args.profile:
            result["profile"] = profile(base, args.profile, args.concurrency, args.max_tokens)
        for name in names:
            other = launch(name, args.kv_cache_gib, result)
            try:
                pairs[name] = []
                for r in range(args.rounds):
                    order = [(args.baseline, base), (name, other)]
                    pair = {}
                    for side, server in (order if r % 2 == 0 else order[::-1]):
                        pair[side] = timed_load(server, args.concurrency, args.max_tokens)
                        print(f"{name} round {r} {side}: {pair[side]['tok_s']} tok/s, load "
                              f"{pair[side]['load_before']}->{pair[side]['load_after']}, cpu {pair[side].get('cpu_share')}",
                              file=sys.stderr, flush=True)
                    runs[args.baseline].append(pair[args.baseline])
                    pairs[name].append((pair[args.baseline], pair[name]))
            finally:
                other.stop()
    finally:
        if base is not None:
            base.stop()
    for name, ps in pairs.items():
        ratios = [b["tok_s"] / a["tok_s"] for a, b in ps]
        worker = [per_cpu(b, "worker") / per_cpu(a, "worker") for a, b in ps]
        server = [per_cpu(b) / per_cpu(a) for a, b in ps]
        result["settings"][name].update(
            median_ratio_per_worker_cpu_s=round(statistics.median(worker), 3),
            median_ratio_per_server_cpu_s=round(statistics.median(server), 3))
        result["settings"][name].update(
            baseline_runs=[a for a, _ in ps], runs=[b for _, b in ps],
            median_tok_s=statistics.median(b["tok_s"] for _, b in ps),
            baseline_median_tok_s=statistics.median(a["tok_s"] for a, _ in ps),
            ratio_vs_baseline=[round(x, 3) for x in ratios], median_ratio=round(statistics.median(ratios), 3))
    print(json.dumps(result, indent=1))
    for name in pairs:
        s = result["settings"][name]
        print(f"{name:14s} {s['median_tok_s']:7.1f} vs {s['baseline_median_tok_s']:7.1f} tok/s  ratio "
              f"{s['median_ratio']:.3f} {s['ratio_vs_baseline']}  per worker CPU-s {s['median_ratio_per_worker_cpu_s']}"
              f"  per server CPU-s {s['median_ratio_per_server_cpu_s']}  load {[r['load_before'] for r in s['runs']]}",
              file=sys.stderr)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
