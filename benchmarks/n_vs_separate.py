"""N answers through one request with `n` vs N separate requests, prefix caching on.

    .venv/bin/python benchmarks/n_vs_separate.py [--n 4] [--prompts 8] [--max_tokens 48]

Runs both ways side by side on one server, at short (~50-token) and long (≥1,000-token)
prompts, and prints completion tokens/s and the ratio n-request / separate-requests.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import openai

from datagen.inference.managed import server_args
from datagen.inference.models import resolve_model
from datagen.inference.registry import ModelConfig
from datagen.inference.vllm_server import VLLMServer

FILLER = ("The history of bread spans thousands of years, from flatbreads baked on hot stones to "
          "leavened loaves in village ovens, and every culture has its own traditions. ")


def prompts(kind: str, count: int) -> list[str]:
    if kind == "short":
        return [f"Give one surprising fact about topic {i}: bread, rivers or stars. Keep it brief." for i in range(count)]
    context = FILLER * 40  # ~1,300 tokens shared only within each prompt's own n samples
    return [f"Document {i}: {context}\nQuestion {i}: summarise the document in one sentence." for i in range(count)]


async def run(base_url: str, texts: list[str], n: int, max_tokens: int, together: bool) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=900)

    async def call(text: str, samples: int, seed: int) -> int:
        resp = await client.chat.completions.create(
            model="bench", messages=[{"role": "user", "content": text}], n=samples, max_tokens=max_tokens,
            temperature=0.8, seed=seed, extra_body={"ignore_eos": True})
        return resp.usage.completion_tokens

    start = time.monotonic()
    if together:
        jobs = [call(t, n, i) for i, t in enumerate(texts)]
    else:
        jobs = [call(t, 1, i * 100 + j) for i, t in enumerate(texts) for j in range(n)]
    tokens = sum(await asyncio.gather(*jobs))
    await client.close()
    return tokens / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max_tokens", type=int, default=48)
    args = parser.parse_args()
    cfg = ModelConfig(model="smollm2-135m", served_name="bench", max_model_len=4096)
    server = VLLMServer(resolve_model(cfg.model), "bench", server_args(cfg) + ["--enable-prefix-caching"],
                        env={"VLLM_CPU_KVCACHE_SPACE": "2"})
    server.start()
    results = {}
    try:
        for kind in ("short", "long"):
            texts = prompts(kind, args.prompts)
            asyncio.run(run(server.base_url, texts[:2], 1, 4, True))  # warm-up
            separate = asyncio.run(run(server.base_url, texts, args.n, args.max_tokens, together=False))
            # new prompts for the n run, so neither side profits from the other's cached prefixes
            texts_n = [t.replace("Document", "Doc") .replace("topic", "subject") for t in texts]
            together = asyncio.run(run(server.base_url, texts_n, args.n, args.max_tokens, together=True))
            results[kind] = {"separate_tok_s": round(separate, 1), "n_request_tok_s": round(together, 1),
                             "ratio_n_over_separate": round(together / separate, 3)}
    finally:
        server.stop()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
