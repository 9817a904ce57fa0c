"""The GPU and Dataflow configs would run: GPU placement and memory arithmetic per model, the Dataflow
job they translate to (`--dry_run=True`, nothing submitted), and the worker image's weights option."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from datagen.config_loader import load_config
from pipelines import dataflow, synth
from pipelines.synth_config import SynthConfig

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_GIB = 7.6e9 * 2 / 2**30  # a Qwen2.5 7B model in bf16, as the configs' comments assume
OVERHEAD_GIB = 2.5  # CUDA context, activations, CUDA graphs per server (gpu.yaml's figure)
DEVICE_GIB = {"gpu.yaml": 79.6, "dataflow_gpu.yaml": 22.5}  # an 80 GB A100/H100; an L4


def arg(model, flag: str) -> str | None:
    args = model.extra_server_args
    return args[args.index(flag) + 1] if flag in args else None


def gib(size: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([GM])", size).groups()
    return float(number) / (1 if unit == "G" else 1024)


def placement(name: str) -> dict[str, list]:
    cfg = load_config(SynthConfig, str(ROOT / "configs" / "synth" / name))
    devices: dict[str, list] = {}
    for model in cfg.models.values():
        for device in model.server_env["CUDA_VISIBLE_DEVICES"].split(","):
            devices.setdefault(device, []).append(model)
    return devices


@pytest.mark.parametrize("name", ["gpu.yaml", "dataflow_gpu.yaml"])
def test_every_model_is_placed_and_its_devices_hold_what_they_are_given(name):
    for device, models in placement(name).items():
        budget = 0.0
        for model in models:
            tensor_parallel = int(arg(model, "--tensor-parallel-size") or 1)
            assert len(model.server_env["CUDA_VISIBLE_DEVICES"].split(",")) == tensor_parallel, model.model
            share = float(arg(model, "--gpu-memory-utilization"))
            needs = WEIGHTS_GIB / tensor_parallel + OVERHEAD_GIB
            if len(models) > 1:  # a shared GPU: KV sized explicitly, so no profiling of a neighbour
                needs += gib(arg(model, "--kv-cache-memory-bytes"))
                assert needs <= share * DEVICE_GIB[name], (device, model.model)
            else:
                assert needs < share * DEVICE_GIB[name], (device, model.model)  # the rest is KV cache
            budget += share
        assert budget <= 0.95, (name, device, budget)


def test_dataflow_config_gives_each_model_its_own_gpus():
    devices = placement("dataflow_gpu.yaml")
    assert all(len(models) == 1 for models in devices.values())
    assert sorted(devices) == ["0", "1", "2", "3"]  # a g2-standard-48: 4 x L4


def dry_run(tmp_path, *extra: str) -> dict:
    job_file = tmp_path / "job.json"
    code = synth.main([
        "--config", str(ROOT / "configs/synth/dataflow_gpu.yaml"),
        "--seeds.path", str(ROOT / "datagen/data/seeds.jsonl"),  # the bucket is not readable here
        "--runner=DataflowRunner", "--dry_run=True", "--project=demo", "--region=us-central1",
        "--temp_location=gs://demo-bucket/tmp", "--sdk_container_image=example.org/synthpost-vllm:0.1",
        "--machine_type=g2-standard-48", "--disk_size_gb=200", "--experiments=use_runner_v2",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:4;install-nvidia-driver",
        f"--dataflow_job_file={job_file}", *extra])
    assert code == 0
    return json.loads(job_file.read_text())


def test_dataflow_job_runs_one_sdk_process_per_vm_with_the_gpus_and_disk_it_needs(tmp_path):
    job = dry_run(tmp_path)
    assert job["experiments"] == sorted([dataflow.ONE_SDK_PROCESS, "use_runner_v2"])  # added, nothing lost
    assert (job["machine_type"], job["disk_size_gb"]) == ("g2-standard-48", 200)
    assert job["dataflow_service_options"] == ["worker_accelerator=type:nvidia-l4;count:4;install-nvidia-driver"]
    assert job["container_images"] == ["example.org/synthpost-vllm:0.1"]
    assert {"respond", "critique", "write_kept"} <= set(job["transforms"])


def test_an_explicit_sdk_process_choice_is_kept(tmp_path):
    job = dry_run(tmp_path, "--experiments=use_multiple_sdk_containers")
    assert dataflow.ONE_SDK_PROCESS not in job["experiments"]
    assert "use_multiple_sdk_containers" in job["experiments"]


def test_one_sdk_process_is_added_only_for_managed_servers_on_dataflow():
    on_dataflow = ["--runner=DataflowRunner"]
    assert dataflow.with_worker_options(on_dataflow, uses_managed_vllm=False) == on_dataflow
    assert dataflow.with_worker_options(["--runner=DirectRunner"], uses_managed_vllm=True) == ["--runner=DirectRunner"]
    assert dataflow.with_worker_options(on_dataflow, uses_managed_vllm=True)[-1] == \
        f"--experiments={dataflow.ONE_SDK_PROCESS}"


def test_worker_image_can_bake_weights_without_keeping_the_token():
    dockerfile = (ROOT / "docker/dataflow-vllm.Dockerfile").read_text()
    assert re.search(r"^ARG MODELS=", dockerfile, re.MULTILINE)
    download = dockerfile.index("hf download")
    assert "--mount=type=secret,id=hf_token" in dockerfile[:download]
    assert download < dockerfile.index("COPY datagen")  # code edits do not re-download the weights
    assert not re.search(r"^(ENV|ARG) .*HF_TOKEN", dockerfile, re.MULTILINE)


def test_the_judge_check_is_the_jobs_first_step_and_every_stage_waits_for_it(tmp_path):
    """dataflow_gpu.yaml's judge runs on the workers: the translated job grades the calibration pairs
    there, and the seeds reach the first model stage only through a gate that reads the check as a
    side input (a failing check fails the job before any stage spends GPU time)."""
    job = dry_run(tmp_path)
    assert {"judge_check/pairs", "judge_check/grade", "judge_check/gate"} <= set(job["transforms"])
    assert job["side_inputs"]["judge_check/gate"] == ["judge_check/grade"]
    # at the top level: seeds → judge_check (the gate) → generate; rejected seeds need no judge
    assert job["consumers"]["seeds"] == ["all_rejected", "judge_check"]
    assert job["consumers"]["judge_check"] == ["generate"]
    assert "judge_check" not in " ".join(dry_run(tmp_path, "--critique.judge_check", "false")["transforms"])


def test_a_check_that_failed_on_the_workers_is_one_line_from_the_runners_error():
    """Dataflow reports a worker's exception as text inside its own error: the launcher finds the check's."""
    err = RuntimeError("Dataflow pipeline failed. State: FAILED, Error:\nTraceback (most recent call last):\n"
                       '  File "apache_beam/runners/common.py", line 1498, in process\n'
                       "datagen.stages.judge_check.JudgeCheckFailed: critique judge AUC 0.50 on 50 calibration pairs is "
                       "below critique.min_auc 0.75: stopped before any stage ran [while running 'judge_check/grade']")
    assert synth.judge_check_failure(err) == ("critique judge AUC 0.50 on 50 calibration pairs is below "
                                              "critique.min_auc 0.75: stopped before any stage ran")
    assert synth.judge_check_failure(RuntimeError("worker lost")) == ""
