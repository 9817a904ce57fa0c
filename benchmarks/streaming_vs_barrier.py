"""The whole pipeline with stages streaming into each other vs a barrier after every stage.

    .venv/bin/python benchmarks/streaming_vs_barrier.py [--max_seeds 30] [--rounds 1] [--config two_servers.yaml]

Both variants run the same config (the embedded default or `--config`, call cache off) against the same
vLLM server(s); `barrier` materialises each stage's output before the next stage starts (as
batch tools that run stage after stage do). The order swaps every round and vLLM's prefix
cache is emptied before every run. Reports wall time of each and the ratio barrier /
streaming of the means (goal ≥ 1.2). The first, unmeasured run warms the server.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import apache_beam as beam

from benchmarks.common import reset_prefix_cache
from datagen.inference import registry
from pipelines.synth import build, parse_args


def timed_run(argv: list[str], barriers: bool) -> float:
    cfg, _ = parse_args(argv + ["--output", tempfile.mkdtemp(prefix="synthpost-bench-")])
    start = time.monotonic()
    with beam.Pipeline() as p:
        build(p, cfg, barriers=barriers)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max_seeds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=1)
    args, rest = parser.parse_known_args()
    argv = ["--no_cache", "--max_seeds", str(args.max_seeds), *rest]
    cfg, _ = parse_args(argv)
    llms = [registry.get_llm(m) for m in cfg.models.values()]  # start the shared servers once
    try:
        timed_run(argv + ["--max_seeds", "2"], barriers=False)  # warm-up
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.rounds):
            for barriers in ([False, True] if r % 2 == 0 else [True, False]):
                for llm in llms:
                    reset_prefix_cache(llm.server.base_url)
                times[barriers].append(timed_run(argv, barriers))
    finally:
        registry.shutdown_all()
    streaming, barrier = times[False], times[True]
    print(json.dumps({"seeds": args.max_seeds, "streaming_s": [round(x, 1) for x in streaming],
                      "barrier_s": [round(x, 1) for x in barrier],
                      "speedup_streaming_over_barrier": round(statistics.mean(barrier) / statistics.mean(streaming), 3)},
                     indent=2))


if __name__ == "__main__":
    main()
