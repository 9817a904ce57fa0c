"""vLLM cold start and tokens/s for the embedded model, eager vs compiled.

    .venv/bin/python benchmarks/vllm_server.py [--modes eager,compiled] [--concurrency 1,8]
    .venv/bin/python benchmarks/vllm_server.py --trace eager   # where the cold start goes

For each mode: seconds from launch to /health ready, to the first generated token, and
completion tokens/s at each concurrency (fixed-length requests: ignore_eos). Ratios are
against the first mode, measured in the same run. Not a test: numbers go to README files.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import openai

from datagen.inference.managed import server_args, server_env
from datagen.inference.model_names import resolve_model
from datagen.inference.registry import ModelConfig
from datagen.inference.vllm_server import VLLMServer

PROMPTS = [f"Write a short paragraph about topic number {i}: rivers, stars, or bread." for i in range(64)]


async def throughput(base_url: str, concurrency: int, max_tokens: int, requests: int) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with sem:
            resp = await client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=max_tokens, temperature=0.8, seed=i, extra_body={"ignore_eos": True})
            return resp.usage.completion_tokens

    start = time.monotonic()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(requests))))
    await client.close()
    return tokens / (time.monotonic() - start)


def first_token_seconds(base_url: str) -> float:
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=600)
    start = time.monotonic()
    stream = client.chat.completions.create(model="bench", messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=4, stream=True)
    for _ in stream:
        break
    return time.monotonic() - start


# mode → (ModelConfig overrides, extra env). Tried and dropped: engine core and worker inside
# the API server process (VLLM_ENABLE_V1_MULTIPROCESSING=0 + uni executor): no faster start,
# and decoding fell below 1 tok/s because the API server then shares the engine's one core.
MODES = {
    "eager": ({"enforce_eager": True}, {}),
    "eager-bf16": ({"enforce_eager": True, "dtype": "bfloat16"}, {}),
    "compiled": ({"enforce_eager": False}, {}),
}


def measure(mode: str, concurrencies: list[int], max_tokens: int) -> dict:
    overrides, env = MODES[mode.removesuffix("-restart")]
    cfg = ModelConfig(model="smollm2-135m", served_name="bench", kv_cache_gib=2, **overrides)
    server = VLLMServer(resolve_model(cfg.model), "bench", server_args(cfg),
                        env={**server_env(cfg), **env}, start_timeout=900)
    start = time.monotonic()
    server.launch()
    try:
        server.wait_ready()
        ready = time.monotonic() - start
        first = ready + first_token_seconds(server.base_url)
        rates = {c: asyncio.run(throughput(server.base_url, c, max_tokens, max(8, 2 * c)))
                 for c in concurrencies}
    finally:
        server.stop()
    return {"mode": mode, "ready_s": round(ready, 1), "first_token_s": round(first, 1),
            "tokens_per_s": {c: round(r, 1) for c, r in rates.items()}}


def trace_start(mode: str) -> None:
    """Launch the server as the pipeline does and print its log, each line time-stamped from
    launch (polled every 0.1 s), until it is ready."""
    overrides, env = MODES[mode]
    cfg = ModelConfig(model="smollm2-135m", served_name="bench", kv_cache_gib=2, **overrides)
    server = VLLMServer(resolve_model(cfg.model), "bench", server_args(cfg),
                        env={**server_env(cfg), "VLLM_LOGGING_LEVEL": "INFO", **env})
    start = time.monotonic()
    server.launch()
    read, ready = 0, False
    try:
        while not ready:
            time.sleep(0.1)
            text = server.log_path.read_text(encoding="utf-8", errors="replace")
            complete = text[read:text.rfind("\n") + 1]  # whole lines only
            read += len(complete)
            for line in complete.splitlines():
                if line.strip() and "GET /health" not in line:
                    print(f"{time.monotonic() - start:6.1f}s  {line[:150]}", flush=True)
                ready = ready or "Application startup complete" in line
            if server.proc.poll() is not None:
                raise SystemExit(f"the server exited with {server.proc.returncode}")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--modes", default="eager,compiled,compiled-restart",
                        help="comma list of: " + ", ".join(MODES) + " (suffix -restart: a second start)")
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--trace", choices=sorted(MODES), help="only trace one mode's start, phase by phase")
    args = parser.parse_args()
    if args.trace:
        trace_start(args.trace)
        return
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    results = [measure(m, concurrencies, args.max_tokens) for m in args.modes.split(",")]
    base = results[0]
    for r in results:
        r["throughput_ratio_vs_" + base["mode"]] = {
            c: round(r["tokens_per_s"][c] / base["tokens_per_s"][c], 3) for c in concurrencies}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
