"""Online DPO with vLLM: one live engine and one trainer (this tree) vs a server and a trainer per
round (commit 8627e82), same config, seeds and steps, order alternated.

    .venv/bin/python benchmarks/dpo_engine_vs_restart.py [--pairs 2] [--rounds 4] [--baseline 8627e82] \
        [--key value ...]      # overrides of configs/posttrain/dpo_tiny.yaml for both runs

Each run is a fresh process (benchmarks/dpo_timed_run.py) with its own output directory. Reported
per design: whole-run wall time, vLLM server starts, and each round's split — generation (pure
sampling: a server's wait for readiness is moved to overhead), scoring, selection, KL, update
(optimizer steps; the old design's also reloads its checkpoint) and overhead (server start, weight
sync, trainer build, tokenizing, checkpoints, logging). The ratio is baseline wall / new wall, per
pair. Writes `--out` (JSON) and prints it with the 1-minute load average beside every run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("generation", "scoring", "selection", "kl", "update")
DEFAULTS = ["--model.name", "smollm2-135m", "--online.backend", "vllm", "--online.vllm.max_model_len", "2048",
            "--online.prompts_per_round", "8", "--online.max_new_tokens", "48", "--online.kl_samples", "4"]


def baseline_tree(commit: str) -> Path:
    tree = ROOT / "out" / "bench" / f"tree-{commit}"
    if not (tree / "posttrain").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["git", "archive", commit], cwd=ROOT, stdout=archive, check=True)
            archive.seek(0)
            tarfile.open(fileobj=archive).extractall(tree)
    return tree


def run(tree: Path, overrides: list[str], out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "dpo_timed_run.py"), "--tree", str(tree), "--out", str(out),
           "--config", "configs/posttrain/dpo_tiny.yaml", *overrides]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.read_text())


def split(result: dict) -> dict:
    """Mean seconds per round by part; a server's wait for readiness inside a round leaves 'generation'."""
    waits = list(result["server_waits"])
    rounds = []
    for index, seconds in enumerate(result["rounds"]):
        parts = {k: seconds.get(k, 0.0) for k in PARTS}
        if "engine_wait" not in seconds and index < len(waits):  # the old design waits inside generation
            parts["generation"] -= waits[index]
        parts["overhead"] = seconds["round"] - sum(parts.values())
        rounds.append({**parts, "round": seconds["round"]})
    mean = {k: statistics.mean(r[k] for r in rounds) for k in (*PARTS, "overhead", "round")}
    mean["generation_plus_update_share"] = (mean["generation"] + mean["update"]) / mean["round"]
    return {k: round(v, 3) for k, v in mean.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--baseline", default="8627e82")
    parser.add_argument("--out", default="out/bench/dpo_engine_vs_restart.json")
    args, overrides = parser.parse_known_args()
    overrides = DEFAULTS + ["--max_steps", str(2 * args.rounds), "--online.steps_per_round", "2"] + overrides
    trees = {"baseline": baseline_tree(args.baseline), "engine": ROOT}
    runs: dict[str, list[dict]] = {"baseline": [], "engine": []}
    with tempfile.TemporaryDirectory() as scratch:
        for pair in range(args.pairs):
            order = ["baseline", "engine"] if pair % 2 == 0 else ["engine", "baseline"]
            for design in order:
                result = run(trees[design], overrides, Path(scratch) / f"{design}-{pair}.json")
                runs[design].append(result)
                print(f"pair {pair} {design}: {result['wall']:.1f} s, {result['server_starts']} server starts, "
                      f"load {result['load_average_1m']:.2f}", flush=True)
    report = {"overrides": overrides, "baseline_commit": args.baseline,
              "ratio_per_pair": [round(b["wall"] / e["wall"], 3) for b, e in zip(runs["baseline"], runs["engine"])],
              **{design: {"wall": [round(r["wall"], 1) for r in results],
                          "server_starts": [r["server_starts"] for r in results],
                          "load_average_1m": [round(r["load_average_1m"], 2) for r in results],
                          "round_split_mean": [split(r) for r in results],
                          "rounds": [r["rounds"] for r in results]}
                 for design, results in runs.items()}}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    brief = {k: ({kk: vv for kk, vv in v.items() if kk != "rounds"} if isinstance(v, dict) else v)
             for k, v in report.items()}
    print(json.dumps(brief, indent=2, default=str))


if __name__ == "__main__":
    main()
