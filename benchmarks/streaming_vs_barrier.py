"""The whole pipeline with stages streaming into each other vs a barrier after every stage.

    .venv/bin/python benchmarks/streaming_vs_barrier.py [--max_seeds 30] [--rounds 1]

Both variants run the same config (the embedded default, call cache off) against one shared
vLLM server, alternating; `barrier` materialises each stage's output before the next stage
starts (as batch tools that run stage after stage do). Reports wall time of each and the
ratio barrier / streaming (goal ≥ 1.2). The first, unmeasured run warms the server.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import apache_beam as beam

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
    registry.get_llm(cfg.models["default"])  # start the shared server once
    try:
        timed_run(argv + ["--max_seeds", "2"], barriers=False)  # warm-up
        streaming, barrier = [], []
        for _ in range(args.rounds):
            streaming.append(timed_run(argv, barriers=False))
            barrier.append(timed_run(argv, barriers=True))
    finally:
        registry.shutdown_all()
    print(json.dumps({"seeds": args.max_seeds, "streaming_s": [round(x, 1) for x in streaming],
                      "barrier_s": [round(x, 1) for x in barrier],
                      "speedup_streaming_over_barrier": round(statistics.mean(barrier) / statistics.mean(streaming), 3)},
                     indent=2))


if __name__ == "__main__":
    main()
