"""The entry point: argument splitting, config errors, Dataflow translation (no run)."""
from __future__ import annotations

import json

import pytest

from fakes import FAKE_BACKEND
from pipelines import synth
from datagen.config_loader import ConfigError
from pipelines.synth_config import SynthConfig


def test_shorthands_overrides_and_beam_options_are_split():
    cfg, beam_args = synth.parse_args([
        "--seeds", "s.jsonl", "--output=o", "--max_seeds", "3", "--no_cache", "--generate.k", "2",
        "--runner=DirectRunner", "--direct_num_workers", "2", "--respond.routing.math", "default"])
    assert (cfg.seeds.path, cfg.output.dir, cfg.seeds.max_seeds, cfg.cache.enabled) == ("s.jsonl", "o", 3, False)
    assert cfg.generate.k == 2 and cfg.respond.routing["math"] == "default"
    assert beam_args == ["--runner=DirectRunner", "--direct_num_workers", "2"]


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key generate.kk"):
        synth.parse_args(["--generate.kk", "2"])


def test_routing_to_an_undefined_model_is_a_config_error():
    with pytest.raises(ConfigError, match="respond.routing.math: model 'mathy' is not defined"):
        synth.parse_args(["--respond.routing.math", "mathy"])


def test_main_prints_one_line_and_exits_2_on_bad_config(capsys):
    assert synth.main(["--generate.k", "three"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: generate.k: expected an integer, got 'three'"]


def test_main_reports_a_missing_seed_path(capsys, tmp_path):
    code = synth.main(["--seeds", str(tmp_path / "nothing.jsonl"), "--output", str(tmp_path / "o"), "--no_cache",
                       "--models.default.backend", FAKE_BACKEND])
    assert code == 2
    assert "nothing.jsonl" in capsys.readouterr().err


def test_shipped_default_yaml_equals_the_dataclass_defaults():
    from datagen.config_loader import load_config, to_dict

    assert to_dict(load_config(SynthConfig, "configs/synth/default.yaml")) == to_dict(SynthConfig())


def test_dataflow_dry_run_translates_with_gpu_worker_options(tmp_path, capsys):
    job_file = tmp_path / "job.json"
    code = synth.main([
        "--runner=DataflowRunner", "--dry_run=True", "--project=demo", "--region=us-central1",
        "--temp_location=gs://demo-bucket/tmp", "--sdk_container_image=example.org/synthpost-vllm:0.1",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
        "--machine_type=g2-standard-8", f"--dataflow_job_file={job_file}",
        "--output", "gs://demo-bucket/out", "--cache.dir", "gs://demo-bucket/cache"])
    assert code == 0, capsys.readouterr().err
    job = json.loads(job_file.read_text())
    assert job["container_images"] == ["example.org/synthpost-vllm:0.1"]
    assert job["dataflow_service_options"] == ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    assert job["machine_type"] == "g2-standard-8"
    for stage in synth.STAGE_ORDER[:2] + ["evolve", "respond", "consistency", "critique", "write_kept"]:
        assert stage in job["transforms"]
