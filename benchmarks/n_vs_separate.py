"""N answers through one request with `n` vs N separate requests, prefix caching on.

    .venv/bin/python benchmarks/n_vs_separate.py [--n 4] [--prompts 8] [--max_tokens 48] [--rounds 2]

Three ways, side by side on one server, at short (~50-token) and long (≥1,000-token) prompts:
`separate` (N requests of n=1), `n` (one request with n=N), `prefill_then_n` (a 1-token request
fills the prefix cache with the prompt, then one request with n=N: the N samples share one
prefill). The prefix cache is emptied before every timed run and the order rotates each round.
Prints completion tokens/s (mean over rounds) and the ratios against `separate`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import openai

from benchmarks.common import reset_prefix_cache
from datagen.inference.managed import server_args
from datagen.inference.model_names import resolve_model
from datagen.inference.registry import ModelConfig
from datagen.inference.vllm_server import VLLMServer

FILLER = ("The history of bread spans thousands of years, from flatbreads baked on hot stones to "
          "leavened loaves in village ovens, and every culture has its own traditions. ")


def prompts(kind: str, count: int) -> list[str]:
    if kind == "short":
        return [f"Give one surprising fact about topic {i}: bread, rivers or stars. Keep it brief." for i in range(count)]
    context = FILLER * 40  # ~1,300 tokens shared only within each prompt's own n samples
    return [f"Document {i}: {context}\nQuestion {i}: summarise the document in one sentence." for i in range(count)]


async def run(base_url: str, texts: list[str], n: int, max_tokens: int, way: str) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=900)

    async def call(text: str, samples: int, seed: int, tokens: int = max_tokens) -> int:
        resp = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": text}], n=samples, max_tokens=tokens,
            temperature=0.8, seed=seed, extra_body={"ignore_eos": True})
        return resp.usage.completion_tokens

    async def prefilled(text: str, seed: int) -> int:
        await call(text, 1, seed, tokens=1)  # its token is not counted: only the N samples are
        return await call(text, n, seed)

    start = time.monotonic()
    if way == "separate":
        jobs = [call(t, 1, i * 100 + j) for i, t in enumerate(texts) for j in range(n)]
    elif way == "n":
        jobs = [call(t, n, i) for i, t in enumerate(texts)]
    else:
        jobs = [prefilled(t, i) for i, t in enumerate(texts)]
    tokens = sum(await asyncio.gather(*jobs))
    await client.close()
    return tokens / (time.monotonic() - start)


WAYS = ("separate", "n", "prefill_then_n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max_tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cfg = ModelConfig(model="smollm2-135m", served_name="bench", max_model_len=4096)
    server = VLLMServer(resolve_model(cfg.model), "bench", server_args(cfg) + ["--enable-prefix-caching"],
                        env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    server.start()
    results = {}
    try:
        for kind in ("short", "long"):
            texts = prompts(kind, args.prompts)
            asyncio.run(run(server.base_url, texts[:2], 1, 4, "n"))  # warm-up
            rates: dict[str, list[float]] = {way: [] for way in WAYS}
            for r in range(args.rounds):
                for way in WAYS[r % 3:] + WAYS[:r % 3]:
                    reset_prefix_cache(server.base_url)
                    rates[way].append(asyncio.run(run(server.base_url, texts, args.n, args.max_tokens, way)))
            mean = {way: statistics.mean(v) for way, v in rates.items()}
            results[kind] = {**{f"{way}_tok_s": [round(x, 1) for x in rates[way]] for way in WAYS},
                             "ratio_n_over_separate": round(mean["n"] / mean["separate"], 3),
                             "ratio_prefill_then_n_over_separate": round(mean["prefill_then_n"] / mean["separate"], 3)}
    finally:
        server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
