"""A key that changes nothing is an error or a warning, never silent (the DPO run config).

- Refused (ConfigError): what the online vLLM engine cannot honour. It serves the policy and every
  weight sync under the name `policy`, started by the run itself and restarted once, so
  `online.vllm.model` (it was in configs/loop/cpu.yaml, read by no code), `served_name`, `base_url`,
  `api_key_env`, `cache_dir`, a backend other than vllm and a restart budget other than 1 are errors.
- Warned about: keys set away from their default that the other settings leave unused:
  `ref_model_*` while `sync_ref_model` is false, the online section (and the reward, and its refresh)
  while the online rounds are off, `online.vllm.*` / `weight_sync` with in-process sampling,
  `generation_batch_size` with the vLLM engine, `prompts_view` without `prompts`, `rm_refresh.*`
  while the refresh is off. The shipped DPO configs, and the loop's DPO step, raise none.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from datagen.config_loader import ConfigError, from_dict, load_config, read_yaml, set_dotted
from datagen.inference.registry import ModelConfig
from posttrain.online.online_config import EngineConfig, OnlineConfig
from posttrain.trainers.dpo_config import DPORunConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/posttrain/dpo_tiny.yaml")


def dpo(*overrides: str) -> DPORunConfig:
    return load_config(DPORunConfig, TINY, list(overrides))


@pytest.mark.parametrize("key, value, says", [
    ("model", "smollm2-135m", "serves the policy"),
    ("served_name", "mine", "name is fixed"),
    ("base_url", "http://127.0.0.1:8000/v1", "starts itself"),
    ("api_key_env", "KEY", "without a key"),
    ("cache_dir", "/tmp/cache", "never from a cache"),
    ("backend", "openai", "online.backend: transformers"),
    ("max_restarts", "3", "restarted once"),
])
def test_an_online_engine_key_it_cannot_honour_is_an_error(key, value, says):
    with pytest.raises(ConfigError, match=rf"online\.vllm: {key}: .*{says}"):
        dpo("--online.backend", "vllm", f"--online.vllm.{key}", value)


def test_the_engine_keys_that_work_are_accepted_and_code_gets_the_same_checks():
    cfg = dpo("--online.backend", "vllm", "--online.vllm.kv_cache_gib", "1", "--online.vllm.max_model_len", "1024")
    assert isinstance(cfg.online.vllm, EngineConfig) and cfg.online.vllm.model == ""
    assert cfg.online.vllm.kv_cache_gib == 1 and cfg.online.vllm.max_model_len == 1024
    # a ModelConfig built in code: keys at ModelConfig's defaults are not taken for set, others are checked
    assert OnlineConfig(vllm=ModelConfig(backend="vllm", kv_cache_gib=1)).vllm == EngineConfig(kv_cache_gib=1)
    with pytest.raises(ValueError, match="model: 'tiny-hunyuan-moe' changes nothing"):
        OnlineConfig(vllm=ModelConfig(backend="vllm", model="tiny-hunyuan-moe"))


def warnings_of(caplog, *overrides: str) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="posttrain"):
        dpo(*overrides)
    return [r.getMessage() for r in caplog.records if r.name == "posttrain"]


def test_the_moving_reference_keys_warn_while_the_reference_does_not_move(caplog):
    assert warnings_of(caplog, "--ref_model_sync_steps", "3", "--ref_model_mixup_alpha", "0.5") == [
        "config: ref_model_mixup_alpha, ref_model_sync_steps change nothing while sync_ref_model is false "
        "(TRL moves the reference only with sync_ref_model: true)"]
    assert warnings_of(caplog, "--sync_ref_model", "true", "--ref_model_sync_steps", "3") == []


def test_unused_online_and_refresh_keys_warn(caplog):
    off = warnings_of(caplog, "--online.enabled", "false", "--online.backend", "vllm")
    assert len(off) == 2
    assert off[0].startswith("config: online rounds are off (online.enabled: false, online.ratio: 0.5): ")
    assert "online.backend" in off[0] and "online.max_new_tokens" in off[0] and off[0].endswith("change nothing")
    assert off[1].startswith("config: reward.") and off[1].endswith("while the online rounds are off")
    assert warnings_of(caplog, "--online.backend", "transformers", "--online.vllm.kv_cache_gib", "1",
                       "--online.weight_sync", "shm") == [
        "config: online.backend is transformers (in-process sampling): online.vllm, online.weight_sync change nothing"]
    assert warnings_of(caplog, "--online.backend", "vllm", "--online.generation_batch_size", "4") == [
        "config: online.generation_batch_size changes nothing with online.backend vllm (the engine batches "
        "requests itself)"]
    assert warnings_of(caplog, "--online.prompts_view", "sft") == [
        "config: online.prompts_view changes nothing while online.prompts is empty (the offline pairs' prompts "
        "are sampled)"]
    assert warnings_of(caplog, "--rm_refresh.batch_size", "2") == [
        "config: rm_refresh.batch_size changes nothing while rm_refresh.enabled is false"]


@pytest.mark.parametrize("name", ["dpo_tiny", "dpo_smollm2_moe", "dpo_hunyuan"])
def test_the_shipped_dpo_configs_set_no_key_that_changes_nothing(name):
    cfg = load_config(DPORunConfig, str(ROOT / f"configs/posttrain/{name}.yaml"))
    assert cfg.unused_keys() == []


def test_the_loops_dpo_step_sets_no_key_that_changes_nothing():
    loop = read_yaml(ROOT / "configs/loop/cpu.yaml")["dpo"]
    data = read_yaml(ROOT / loop["config"])
    for key, value in loop["set"].items():
        set_dotted(data, key, value)
    cfg = from_dict(DPORunConfig, data)
    assert cfg.online.backend == "vllm" and cfg.unused_keys() == []
