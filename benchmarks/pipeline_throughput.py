"""Generation-stage throughput: the Beam pipeline vs a bare async client, same server.

    .venv/bin/python benchmarks/pipeline_throughput.py [--seeds 60] [--concurrency 32] [--rounds 3]

One vLLM server (embedded model) is started once. The same generation requests (the
GenerateStage's prompts for the shipped seeds, same seeded sampling params) are sent
(a) by a bare asyncio OpenAI client saturating the server with `concurrency` requests in
flight, and (b) by `seeds | GenerateStage` on the DirectRunner, `rounds` times each, the
order swapping every round and vLLM's prefix cache emptied before every run (so neither side
finds the other's prompts cached). Reported: completion tokens/s of each and the ratio
pipeline / bare of the means (goal ≥ 0.95). The call cache is off: every request really runs.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import apache_beam as beam
import openai

from benchmarks.common import reset_prefix_cache
from datagen import SHIPPED_SEEDS, progress
from datagen.stages.generate import GenerateConfig, GenerateFn, GenerateStage
from datagen.inference import registry
from datagen.record import Record

def seed_records(count: int) -> list[Record]:
    """The shipped corpus, repeated with a suffix until there are `count` distinct seeds."""
    rows = [json.loads(line) for line in SHIPPED_SEEDS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Record(seed_id=f"bench-{i}", domain=rows[i % len(rows)]["domain"],
                   source=rows[i % len(rows)]["source"],
                   seed_text=f"{rows[i % len(rows)]['text']} (variant {i})") for i in range(count)]


async def bare_client(base_url: str, name: str, requests, concurrency: int) -> tuple[int, float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=900)
    sem = asyncio.Semaphore(concurrency)

    async def one(req) -> int:
        p = req.params
        async with sem:
            resp = await client.chat.completions.create(
                model=name, messages=req.message_dicts(), n=p.n, max_tokens=p.max_tokens,
                temperature=p.temperature, top_p=p.top_p, seed=p.seed)
            return resp.usage.completion_tokens

    start = time.monotonic()
    tokens = sum(await asyncio.gather(*(one(r) for r in requests)))
    elapsed = time.monotonic() - start
    await client.close()
    return tokens, elapsed


def pipeline_run(records: list[Record], cfg: GenerateConfig, models) -> tuple[int, float]:
    _, before = progress.snapshot()
    start = time.monotonic()
    with beam.Pipeline() as p:
        out = p | beam.Create(records, reshuffle=False) | GenerateStage(cfg, models)
        out.kept | "count" >> beam.combiners.Count.Globally()
    elapsed = time.monotonic() - start
    _, after = progress.snapshot()
    return after - before, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model = registry.ModelConfig(model="smollm2-135m", served_name="bench", max_concurrency=args.concurrency)
    models = {"default": model}
    cfg = GenerateConfig()
    llm = registry.get_llm(model)  # the pipeline's stages get this same server
    records = seed_records(args.seeds)
    fn = GenerateFn(cfg, model)
    requests = [r for rec in records for r in fn.requests(rec)]
    asyncio.run(bare_client(llm.server.base_url, "bench", requests[:4], 4))  # warm-up
    runs = {
        "bare": lambda: asyncio.run(bare_client(llm.server.base_url, "bench", requests, args.concurrency)),
        "pipeline": lambda: pipeline_run(records, cfg, models),
    }
    rates: dict[str, list[float]] = {"bare": [], "pipeline": []}
    try:
        for r in range(args.rounds):
            for side in (["bare", "pipeline"] if r % 2 == 0 else ["pipeline", "bare"]):
                reset_prefix_cache(llm.server.base_url)
                tokens, secs = runs[side]()
                rates[side].append(tokens / secs)
    finally:
        registry.shutdown_all()
    bare, piped = rates["bare"], rates["pipeline"]
    result = {"requests": len(requests), "concurrency": args.concurrency,
              "bare_tok_s": [round(x, 1) for x in bare], "pipeline_tok_s": [round(x, 1) for x in piped],
              "ratio_pipeline_over_bare": round(statistics.mean(piped) / statistics.mean(bare), 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
