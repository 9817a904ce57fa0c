"""The weight EMA where the recipes run it sharded (posttrain/ema.py).

- FSDP on CPU (2 ranks over gloo, configs/accelerate/fsdp_cpu.yaml): the EMA a checkpoint holds is the
  full one (every tensor at the model's shape, as plain tensors), equal to the EMA of a 1-process run
  at the same global batch; so is TR-DPO's moving reference (an EMA of the policy) in the round state;
  the exported policy EMA equals that run's; and a run resumed from the checkpoint restores the EMA on
  every rank: it ends where the uninterrupted run ended (a rank that restarted its shard of the EMA
  from the current weights would leave its half ~5% of the update apart).
- DeepSpeed ZeRO-3 (not installed here): each rank's parameters are empty shards, so a launch with an
  EMA is refused with one line before any model loads, and a shadow of partitioned parameters is an error.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from datagen.config_loader import ConfigError
from datagen.inference.model_names import resolve_model
from posttrain.ema import EMA_STATE_FILE, WeightEMA, refuse_ema_under_zero3
from posttrain.model_registry import register_models
from test_multiprocess_training import done_lines, launch, with_config

register_models()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny-hunyuan-moe"
TOLERANCE = 1e-3  # relative difference of two runs' updates (float sums in another order: ~1e-5)


def offline_dpo_args(out: Path, per_device: int) -> list[str]:
    """4 steps on offline pairs, a checkpoint after step 2, TR-DPO's moving reference. Only the sigmoid
    loss and no router aux loss: TRL's SFT term and the balancing loss are means over each rank's own
    tokens, so 2 x 2 rows would not be 4 rows."""
    return ["--config", str(ROOT / "configs/posttrain/dpo_tiny.yaml"), "--output_dir", str(out),
            "--max_steps", "4", "--save_steps", "2", "--keep_checkpoints", "2", "--online.enabled", "false",
            "--per_device_train_batch_size", str(per_device), "--ema.decay", "0.5", "--moe.router_aux_loss_coef", "0",
            "--loss_type", "[sigmoid]", "--loss_weights", "[1.0]", "--sync_ref_model", "true",
            "--ref_model_sync_steps", "1", "--ref_model_mixup_alpha", "0.5", "--report_to", "none"]


def start_weights() -> dict[str, torch.Tensor]:
    """The start as saved (per-expert layout, as model.safetensors files are)."""
    return load_file(str(Path(resolve_model(MODEL)) / "model.safetensors"))


def start_state() -> dict[str, torch.Tensor]:
    """The start as the model holds it (fused experts: the names of an EMA shadow and a state dict)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(resolve_model(MODEL), dtype=torch.float32).state_dict()


def apart(mine: dict, theirs: dict, start: dict) -> float:
    """|mine − theirs| / |theirs − start| over the tensors of `theirs`: how far two runs' updates differ."""
    assert mine.keys() == theirs.keys()
    gap = sum(((mine[k].float() - theirs[k].float()) ** 2).sum() for k in theirs) ** 0.5
    moved = sum(((theirs[k].float() - start[k].float()) ** 2).sum() for k in theirs) ** 0.5
    return (gap / moved).item()


def saved_ema(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint / EMA_STATE_FILE, map_location="cpu", weights_only=True)
    return state["shadow"], state["num_updates"]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: one process, 4 rows per step."""
    from posttrain.dpo import main

    out = tmp_path_factory.mktemp("one") / "out"
    assert main(offline_dpo_args(out, per_device=4)) == 0
    return out


@pytest.mark.slow
def test_fsdp_saves_the_full_ema_and_a_resumed_run_restores_it_on_every_rank(one_process, tmp_path):
    out = tmp_path / "fsdp"
    run = launch(with_config("fsdp_cpu.yaml"), "posttrain/dpo.py", offline_dpo_args(out, per_device=2))
    assert run.returncode == 0, run.stderr[-3000:]
    assert len(done_lines(run, "dpo")) == 1 and "process 0 of 2 (gloo, FSDP)" in run.stderr
    assert (out / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()  # the policy really was sharded

    start, state = start_weights(), start_state()
    params, _ = saved_ema(one_process / "checkpoint-2")
    shadow, updates = saved_ema(out / "checkpoint-2")
    assert updates == 2 and any("experts.gate_up_proj" in k for k in shadow)
    assert all(type(t) is torch.Tensor for t in shadow.values())  # plain tensors, not one rank's DTensor shards
    assert {k: tuple(v.shape) for k, v in shadow.items()} == {k: tuple(v.shape) for k, v in params.items()}
    assert apart(shadow, params, state) < TOLERANCE

    one_ref = torch.load(one_process / "checkpoint-2" / "dpo_round_state.pt", weights_only=True)["reference"]
    moving = torch.load(out / "checkpoint-2" / "dpo_round_state.pt", weights_only=True)["reference"]
    assert all(type(t) is torch.Tensor for t in moving.values()) and moving.keys() == one_ref.keys()
    assert all(moving[k].shape == one_ref[k].shape for k in one_ref)
    assert apart(moving, one_ref, state) < TOLERANCE

    exported, expected = load_file(str(out / "model.safetensors")), load_file(str(one_process / "model.safetensors"))
    assert json.loads((out / "dpo_summary.json").read_text())["weights"] == "policy EMA"
    assert apart(exported, expected, start) < TOLERANCE

    # resume from checkpoint-2 (as if killed after it): the EMA must come back on both ranks
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copytree(out / "seed_pairs", resumed / "seed_pairs")
    run = launch(with_config("fsdp_cpu.yaml"), "posttrain/dpo.py", offline_dpo_args(resumed, per_device=2))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "EMA shadow restored" in run.stderr and "resuming in round" in run.stderr
    summary = json.loads((resumed / "dpo_summary.json").read_text())
    assert (summary["global_step"], summary["ema_updates"]) == (4, 4)
    assert apart(load_file(str(resumed / "model.safetensors")), exported, start) < TOLERANCE
    shadow4, _ = saved_ema(out / "checkpoint-4")
    resumed4, updates4 = saved_ema(resumed / "checkpoint-4")
    assert updates4 == 4 and apart(resumed4, shadow4, state) < TOLERANCE


# --------------------------------------------------------------------------- DeepSpeed ZeRO-3


ZERO3 = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}


@pytest.mark.parametrize("command, config", [("dpo", "dpo_tiny.yaml"), ("rm", "rm_tiny.yaml")])
def test_a_zero3_launch_with_an_ema_is_refused_with_one_line(command, config, tmp_path):
    """What `accelerate launch --config_file configs/accelerate/deepspeed_zero3.yaml` puts in each worker's
    environment; DeepSpeed itself is not installed here, so the refusal must come before anything needs it."""
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, f"posttrain/{command}.py", "--config", f"configs/posttrain/{config}",
                          "--output_dir", str(out), "--report_to", "none"],
                         cwd=ROOT, env={**os.environ, **ZERO3, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "ema.enabled under DeepSpeed ZeRO-3" in errors[0] and "ema.enabled false" in errors[0]
    assert not out.exists()


def test_zero3_is_read_from_the_launch_environment_or_its_config_file(monkeypatch, tmp_path):
    for name, value in ZERO3.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="ema.enabled and rm_refresh.enabled under DeepSpeed ZeRO-3"):
        refuse_ema_under_zero3({"ema.enabled": True, "rm_refresh.enabled": True})
    refuse_ema_under_zero3({"ema.enabled": False})  # no EMA: nothing to refuse
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    refuse_ema_under_zero3({"ema.enabled": True})  # ZeRO-2 keeps whole parameters on every rank
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    with pytest.raises(ConfigError, match="ZeRO-3"):
        refuse_ema_under_zero3({"ema.enabled": True})


def test_an_ema_of_zero3_partitioned_parameters_is_an_error():
    net = torch.nn.Linear(3, 2)
    for param in net.parameters():  # what deepspeed.zero.Init leaves on a rank: an empty placeholder
        param.data = torch.empty(0)
        param.ds_id = 0
    with pytest.raises(ConfigError, match="ZeRO-3 parameters"):
        WeightEMA(net, 0.9)
