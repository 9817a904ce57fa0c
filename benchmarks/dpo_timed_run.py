"""One timed DPO run of a given source tree (helper of benchmarks/dpo_engine_vs_restart.py).

    .venv/bin/python benchmarks/dpo_timed_run.py --tree DIR --out FILE.json --config CFG [--key value ...]

Imports posttrain/datagen from `--tree` (this checkout, or an older commit unpacked with
`git archive`), counts vLLM server launches and times their waits for readiness, runs `posttrain.trainers.dpo_trainer.train` in a temporary
output directory and records the whole run's wall time and each round's split (`on_round`).
Works with any tree whose `train()` takes `on_round` (commit 9b809ea and later).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", required=True)
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, str(Path(args.tree).resolve()))
    logging.basicConfig(level=logging.WARNING)

    import posttrain  # noqa: F401  (an older tree registers its aliases on import; a newer one in train())
    from datagen.config_loader import load_config
    from datagen.inference import vllm_server
    from posttrain.trainers.dpo_config import DPORunConfig
    from posttrain.trainers.dpo_trainer import train
    from posttrain.ema import EMAConfig

    launches, waits = [], []
    launch, wait_ready = vllm_server.VLLMServer.launch, vllm_server.VLLMServer.wait_ready

    def timed_wait(server) -> None:
        began = time.perf_counter()
        try:
            wait_ready(server)
        finally:
            waits.append(time.perf_counter() - began)
    vllm_server.VLLMServer.launch = lambda server: launches.append(time.perf_counter()) or launch(server)
    vllm_server.VLLMServer.wait_ready = timed_wait
    cfg = load_config(DPORunConfig, str(Path(args.tree) / args.config), overrides)
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(cfg, output_dir=out, report_to="none", ema=EMAConfig(enabled=False))
        began = time.perf_counter()
        train(cfg, on_round=lambda index, seconds: rounds.append({"round": index, **seconds}))
        wall = time.perf_counter() - began
    result = {"tree": args.tree, "wall": wall, "server_starts": len(launches), "server_waits": waits, "rounds": rounds,
              "load_average_1m": os.getloadavg()[0]}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
