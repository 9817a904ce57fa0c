"""The shipped DPO loop on the tiny setup, each round's time split into its parts.

    .venv/bin/python benchmarks/dpo_online_round.py [--config configs/posttrain/dpo_tiny.yaml] \
        [--rounds 2] [--out out/bench/dpo_online_round.json] [--key value ...]

Runs `posttrain.trainers.dpo_trainer.train` itself (not a copy of it) for `--rounds` rounds of
`online.steps_per_round` steps, and records through its `on_round` hook where each round's time
went: RM refresh, generation, scoring, selection, KL estimate, trainer build, update (optimizer
steps and the round's checkpoint), and the rest of the round as overhead. Round 0 includes the
first trainer construction; later rounds are the steady state. Writes JSON to `--out`. Times are
wall-clock single runs: on a shared machine, read them with the load average printed beside them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path

from datagen.config_loader import load_config
from posttrain.trainers.dpo_config import DPORunConfig
from posttrain.trainers.dpo_trainer import train
from posttrain.ema import EMAConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/posttrain/dpo_tiny.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="out/bench/dpo_online_round.json")
    args, overrides = parser.parse_known_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(DPORunConfig, args.config, overrides)
    per_round: list[dict] = []
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(cfg, output_dir=out, report_to="none", ema=EMAConfig(enabled=False),
                                  max_steps=args.rounds * cfg.online.steps_per_round)
        train(cfg, on_round=lambda index, seconds: per_round.append(split(index, seconds)))
    result = json.dumps({"load_average_1m": round(os.getloadavg()[0], 2),  # other processes share the cores
                         "config": {"num_samples": cfg.online.num_samples, "max_new_tokens": cfg.online.max_new_tokens,
                                    "steps_per_round": cfg.online.steps_per_round, "backend": cfg.online.backend,
                                    "reward": f"{cfg.reward.kind}:{cfg.reward.model}"},
                         "rounds": per_round}, indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(result + "\n", encoding="utf-8")
    print(result)


def split(index: int, seconds: dict) -> dict:
    parts = {k: v for k, v in seconds.items() if k != "round"}
    wall = seconds["round"]
    parts["overhead"] = max(0.0, wall - sum(parts.values()))
    return {"round": index, "wall": round(wall, 2), "seconds": {k: round(v, 2) for k, v in parts.items()},
            "share": {k: round(v / wall, 3) for k, v in parts.items()}}


if __name__ == "__main__":
    main()
