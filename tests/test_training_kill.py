"""Training processes SIGKILLed for real, mid-run and during a checkpoint save, then rerun with the
same command: the rerun resumes from the last complete checkpoint (never a half-written one) and
ends with the weights of a run that was never interrupted.

The killed process is the real command with a test-only pause point (tests/training_hooks.py): it
stops at a known moment and the test kills it with SIGKILL, so nothing in the process can clean
up. The rerun is the plain command (`python posttrain/sft.py ...`).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from posttrain.checkpoints import MARKER

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-6


def command(name: str, args: list[str]) -> list[str]:
    return [sys.executable, f"posttrain/{name}.py", *args]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run(name: str, args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command(name, args), cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_until_killed(name: str, args: list[str], pause: str, tmp_path: Path) -> None:
    """Start the command with a pause point, SIGKILL it once it is there."""
    flag = tmp_path / "paused"
    hooked = {**env(), "SYNTHPOST_PAUSE": pause, "SYNTHPOST_PAUSE_FILE": str(flag)}
    proc = subprocess.Popen([sys.executable, "tests/training_hooks.py", name, *args], cwd=ROOT, env=hooked,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not flag.exists():
        if proc.poll() is not None:
            raise AssertionError(f"{name} ended before the pause {pause}: {proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"{name} never reached the pause {pause}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stderr.close()


def checkpoints(out: Path) -> dict[str, bool]:
    """checkpoint-N -> complete?"""
    return {p.name: (p / MARKER).is_file() for p in sorted(out.glob("checkpoint-*"))}


def assert_same_weights(out: Path, reference: Path) -> None:
    mine, theirs = load_file(str(out / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert mine.keys() == theirs.keys()
    worst = max((mine[k] - theirs[k]).abs().max().item() for k in mine)
    assert worst <= ATOL, f"weights differ from the uninterrupted run by {worst}"


# --------------------------------------------------------------------------- SFT


def write_chats(path: Path) -> str:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": " ".join([f"It is {2 * i}."] * (1 + i % 3))}]}
            for i in range(12)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def sft_args(data: str, out: Path) -> list[str]:
    """6 steps, a checkpoint every 2, the recipe's dropout on (its RNG must resume too)."""
    return ["--output_dir", str(out), "--dataset", data, "--model.name", "tiny-hunyuan-moe", "--max_steps", "6",
            "--save_steps", "2", "--keep_checkpoints", "2", "--per_device_train_batch_size", "2", "--max_length", "64",
            "--learning_rate", "1e-3", "--min_learning_rate", "1e-4", "--logging_steps", "1", "--eval_steps", "0",
            "--data.eval_fraction", "0", "--moe.attention_dropout", "0.1", "--moe.hidden_dropout", "0.2",
            "--report_to", "none"]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> str:
    return write_chats(tmp_path_factory.mktemp("chats") / "chats.jsonl")


@pytest.fixture(scope="module")
def uninterrupted_sft(sft_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft-full") / "out"
    run("sft", sft_args(sft_data, out))
    return out


@pytest.mark.parametrize("pause, on_disk, resumed_from", [
    ("step:5", {"checkpoint-2": True, "checkpoint-4": True}, "checkpoint-4"),  # mid-run
    ("save-model:4", {"checkpoint-2": True, "checkpoint-4": False}, "checkpoint-2"),  # half-written checkpoint
    ("save-marker:4", {"checkpoint-2": True, "checkpoint-4": False}, "checkpoint-2"),  # all files, no marker
])
def test_sft_killed_then_rerun_ends_like_an_uninterrupted_run(sft_data, uninterrupted_sft, tmp_path, pause,
                                                              on_disk, resumed_from):
    out = tmp_path / "out"
    args = sft_args(sft_data, out)
    run_until_killed("sft", args, pause, tmp_path)
    assert checkpoints(out) == on_disk
    assert not (out / "model.safetensors").exists()

    rerun = run("sft", args)  # the same command again
    assert f"resuming from {out / resumed_from}" in rerun.stderr
    assert checkpoints(out) == {"checkpoint-4": True, "checkpoint-6": True}  # the killed one redone, then rotated
    assert_same_weights(out, uninterrupted_sft)


# --------------------------------------------------------------------------- DPO


def dpo_args(out: Path) -> list[str]:
    """4 steps in 2 online rounds (in-process sampling), a checkpoint at every round's end, EMA exported."""
    return ["--config", str(ROOT / "configs/posttrain/dpo_tiny.yaml"), "--output_dir", str(out), "--max_steps", "4",
            "--online.steps_per_round", "2", "--online.num_samples", "2", "--online.prompts_per_round", "2",
            "--online.max_new_tokens", "8", "--online.kl_samples", "1", "--online.margin", "0", "--max_pairs", "12",
            "--report_to", "none"]


@pytest.fixture(scope="module")
def uninterrupted_dpo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dpo-full") / "out"
    run("dpo", dpo_args(out))
    return out


@pytest.mark.parametrize("pause, on_disk, resumed_from", [
    ("step:3", {"checkpoint-2": True}, "checkpoint-2"),  # mid-round 1
    ("save-marker:4", {"checkpoint-2": True, "checkpoint-4": False}, "checkpoint-2"),  # the last save
])
def test_dpo_killed_then_rerun_ends_like_an_uninterrupted_run(uninterrupted_dpo, tmp_path, pause, on_disk,
                                                              resumed_from):
    out = tmp_path / "out"
    args = dpo_args(out)
    run_until_killed("dpo", args, pause, tmp_path)
    assert checkpoints(out) == on_disk

    rerun = run("dpo", args)
    assert f"from {out / resumed_from}" in rerun.stderr and "resuming in round" in rerun.stderr
    assert checkpoints(out) == {"checkpoint-2": True, "checkpoint-4": True}
    assert_same_weights(out, uninterrupted_dpo)  # the exported policy EMA
    mine, theirs = (json.loads((o / "dpo_summary.json").read_text()) for o in (out, uninterrupted_dpo))
    assert mine["global_step"] == theirs["global_step"] == 4
    assert mine["ema_updates"] == theirs["ema_updates"]
