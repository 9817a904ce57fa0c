"""A local model's inference identity carries a fingerprint of its weights, so the call cache never
serves the answers of earlier weights at the same path (a checkpoint directory retrained in place)."""
from __future__ import annotations

import os

from datagen.cache import CachedLLM
from datagen.inference.base import Request
from datagen.inference.managed import managed_identity
from datagen.inference.model_names import weights_fingerprint
from datagen.inference.registry import ModelConfig
from fakes import FakeLLM


def write_model(directory, weights: bytes, config: str = '{"model_type": "llama"}') -> None:
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(config)
    (directory / "model.safetensors").write_bytes(weights)


def test_the_fingerprint_follows_the_weights_and_the_config(tmp_path):
    model = tmp_path / "policy"
    write_model(model, b"first")
    first = weights_fingerprint(str(model))
    assert first and weights_fingerprint(str(model)) == first
    (model / "README.md").write_text("a card changes nothing")
    assert weights_fingerprint(str(model)) == first
    write_model(model, b"second weights")
    assert weights_fingerprint(str(model)) not in ("", first)
    again = weights_fingerprint(str(model))
    write_model(model, b"second weights", config='{"model_type": "llama", "rope_theta": 2}')
    assert weights_fingerprint(str(model)) != again


def test_same_size_rewrite_is_seen_through_the_modification_time(tmp_path):
    model = tmp_path / "policy"
    write_model(model, b"aaaa")
    before = weights_fingerprint(str(model))
    write_model(model, b"bbbb")
    stat = (model / "model.safetensors").stat()
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert weights_fingerprint(str(model)) != before


def test_hub_ids_and_missing_paths_have_no_fingerprint(tmp_path):
    assert weights_fingerprint("org/model") == ""
    assert weights_fingerprint(str(tmp_path / "absent")) == ""


def test_a_retrained_directory_misses_the_cache(tmp_path):
    model = tmp_path / "policy"
    write_model(model, b"round one")
    cfg = ModelConfig(backend="vllm", model=str(model), dtype="float32")
    assert managed_identity(cfg).startswith(f"vllm:{model}@") and managed_identity(cfg).endswith(":float32")

    def answer_with(text: str) -> list[str]:
        fake = FakeLLM(lambda request: text)
        fake.identity = managed_identity(cfg)
        llm = CachedLLM(fake, str(tmp_path / "cache"))
        try:
            return llm.generate([Request.chat("What is 3 + 4?")])[0].texts
        finally:
            llm.close()  # the cache write lands

    assert answer_with("old answer") == ["old answer"]
    assert answer_with("fresh") == ["old answer"]  # same weights: served from the cache
    write_model(model, b"round two, retrained")
    assert answer_with("new answer") == ["new answer"]
