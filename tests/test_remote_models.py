"""Model directories on an object store: copied to local disk once, then loaded like any directory.

memgcs:// (tests/memory_fs.py) stands in for gs://: the copy goes through the same Beam
FileSystems calls that reach GCS on a Dataflow worker."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from apache_beam.io.filesystems import FileSystems

import memory_fs
from datagen.inference import remote_models
from datagen.inference.base import InferenceError
from datagen.inference.model_names import resolve_model


def upload(local_dir, uri: str) -> None:
    for path in local_dir.rglob("*"):
        if path.is_file():
            with FileSystems.create(f"{uri}/{path.relative_to(local_dir).as_posix()}") as f:
                f.write(path.read_bytes())


@pytest.fixture(scope="module")
def tiny() -> Path:
    return Path(resolve_model("tiny-hunyuan-moe"))  # from the usual cache, before `cache` moves it


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHPOST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_a_gs_model_is_copied_once_and_loads(tmp_path, tiny, cache):
    from transformers import AutoConfig, AutoTokenizer

    uri = f"{memory_fs.SCHEME}://bucket/models/tiny-{tmp_path.name}"
    upload(tiny, uri)
    local = resolve_model(uri)
    assert local.startswith(str(cache))
    assert AutoConfig.from_pretrained(local).model_type == "hunyuan_v1_moe"
    assert AutoTokenizer.from_pretrained(local)("hello").input_ids
    for path in tiny.rglob("*"):
        if path.is_file():
            assert (Path(local) / path.relative_to(tiny)).read_bytes() == path.read_bytes()
    FileSystems.delete([p for p in memory_fs.files(uri + "/")])  # gone from the bucket: no second copy
    assert resolve_model(uri) == local


def test_threads_asking_at_once_share_one_copy(tmp_path, cache, monkeypatch):
    uri = f"{memory_fs.SCHEME}://bucket/models/small-{tmp_path.name}"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "weights.bin").write_bytes(b"\0" * 1000)
    upload(tmp_path / "m", uri)
    copies = []
    real_copy = remote_models._copy_tree
    monkeypatch.setattr(remote_models, "_copy_tree", lambda u, d: (copies.append(u), real_copy(u, d)))
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model(uri))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(copies) == 1 and len(set(results)) == 1
    assert not [p for p in (cache / "models" / "remote").rglob("*.tmp-*")]


def test_a_directory_without_config_is_a_clear_error_and_leaves_nothing(tmp_path, cache):
    uri = f"{memory_fs.SCHEME}://bucket/models/empty-{tmp_path.name}"
    with FileSystems.create(f"{uri}/weights.bin") as f:
        f.write(b"x")
    with pytest.raises(InferenceError, match="no config.json"):
        resolve_model(uri)
    assert not remote_models.local_copy_dir(uri, cache).exists()
