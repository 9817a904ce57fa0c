"""One online DPO round on the tiny setup, its time split into generation, scoring and update.

    .venv/bin/python benchmarks/dpo_online_round.py [--config configs/posttrain/dpo_tiny.yaml] \
        [--rounds 2] [--out out/bench/dpo_online_round.json] [--key value ...]

Loads the policy, pairs and reward of the config once, then runs `--rounds` complete rounds
(sample N answers per prompt → score → select/normalise → KL estimate → one DPOTrainer phase of
`online.steps_per_round` steps) and writes the seconds of each part per round and their shares
as JSON to `--out` (the trainer's own log lines go to stdout). Round 0 includes the first trainer construction; later rounds are the steady state.
Times are wall-clock: on a shared machine, read them with the load average printed beside them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path

from datasets import Dataset

from datagen.config import load_config
from posttrain import dpo
from rewards.ema import EMAConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/posttrain/dpo_tiny.yaml")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default="out/bench/dpo_online_round.json")
    args, overrides = parser.parse_known_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(dpo.DPORunConfig, args.config, overrides)
    with tempfile.TemporaryDirectory() as out:
        cfg = dataclasses.replace(cfg, output_dir=out, report_to="none", ema=EMAConfig(enabled=False),
                                  max_steps=args.rounds * cfg.online.steps_per_round)
        result = json.dumps(run(cfg, args.rounds), indent=2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(result + "\n", encoding="utf-8")
    print(result)


def run(cfg: dpo.DPORunConfig, rounds: int) -> dict:
    run_state = dpo.prepare_run(cfg)
    plan = dpo.round_plan(cfg.max_steps, cfg.online.steps_per_round)
    trainer_cls, checkpoint, per_round = dpo.make_trainer_class(), None, []
    for index in range(rounds):
        start, end = plan[index]
        data = run_state.rounds.build(index, dpo.rows_per_round(cfg, end - start, 1))
        begin = time.perf_counter()
        rows = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in data.rows]
        trainer = trainer_cls(model=run_state.policy, ref_model=run_state.reference,
                              args=dpo.build_dpo_args(cfg, moe_model=True), train_dataset=Dataset.from_list(rows),
                              processing_class=run_state.tokenizer, moe_config=cfg.moe,
                              callbacks=[dpo.StopAtStep(end)])
        dpo.train_phase(trainer, checkpoint, None)
        dpo.remove_fused_head(run_state.policy, run_state.reference)
        checkpoint = Path(cfg.output_dir) / f"checkpoint-{end}"
        seconds = {**data.seconds, "update": time.perf_counter() - begin}
        total = sum(seconds.values())
        per_round.append({"round": index, "seconds": {k: round(v, 2) for k, v in seconds.items()},
                          "share": {k: round(v / total, 3) for k, v in seconds.items()},
                          "online_pairs": data.stats.get("mix/online_pairs"),
                          "answers": data.stats.get("online/answers")})
    return {"load_average_1m": round(os.getloadavg()[0], 2),  # other processes share the 2 cores
            "config": {"num_samples": cfg.online.num_samples, "max_new_tokens": cfg.online.max_new_tokens,
                       "steps_per_round": cfg.online.steps_per_round,
                       "rows_per_round": dpo.rows_per_round(cfg, cfg.online.steps_per_round, 1),
                       "reward": f"{cfg.reward.kind}:{cfg.reward.model}"},
            "rounds": per_round}


if __name__ == "__main__":
    main()
