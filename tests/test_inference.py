"""The inference layer without a vLLM server: backend registry, transformers, OpenAI client, cache."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from datagen.cache import CachedLLM, CallCache
from datagen.inference import registry
from datagen.inference.base import Completion, InferenceError, Request, SamplingParams
from datagen.inference.model_names import prepare, register_alias, resolve_model
from datagen.inference.openai_client import OpenAIEndpointLLM
from fakes import FakeLLM
from posttrain.model_registry import TINY_MOE_ALIAS, register_models

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe and model_type hunyuan


class FlakyOpenAI(BaseHTTPRequestHandler):
    """Answers chat completions; the first `fail_first` calls get HTTP `fail_status`."""

    fail_first = 0
    fail_status = 500
    calls = 0

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        cls.calls += 1
        if cls.calls <= cls.fail_first:
            self.send_response(cls.fail_status)
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "engine dead"}}')
            return
        text = "echo: " + body["messages"][-1]["content"]
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": i, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": f"{text} #{i}"}}
                             for i in range(body.get("n", 1))],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    def serve(fail_first=0, fail_status=500):
        handler = type("Handler", (FlakyOpenAI,), {"fail_first": fail_first, "fail_status": fail_status,
                                                    "calls": 0})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/v1", handler

    servers = []
    yield serve
    for server in servers:
        server.shutdown()


def test_openai_client_returns_n_texts_in_order(endpoint):
    url, _ = endpoint()
    llm = OpenAIEndpointLLM(url, "m", max_concurrency=4)
    out = llm.generate([Request.chat(f"q{i}", params=SamplingParams(n=3)) for i in range(5)])
    llm.close()
    assert [c.texts for c in out] == [[f"echo: q{i} #{j}" for j in range(3)] for i in range(5)]
    assert all(c.ok and c.completion_tokens == 4 for c in out)


def test_server_errors_are_retried_and_recover_is_called(endpoint):
    url, handler = endpoint(fail_first=2)
    recovered = []
    llm = OpenAIEndpointLLM(url, "m", max_attempts=4, backoff_seconds=0.01, recover=recovered.append)
    out = llm.generate([Request.chat("hi")])
    llm.close()
    assert out[0].texts == ["echo: hi #0"]
    assert handler.calls == 3 and len(recovered) == 2


def test_request_that_keeps_failing_becomes_an_error_not_an_exception(endpoint):
    url, _ = endpoint(fail_first=100)
    llm = OpenAIEndpointLLM(url, "m", max_attempts=2, backoff_seconds=0.01)
    out = llm.generate([Request.chat("hi")])
    llm.close()
    assert not out[0].ok and out[0].error.startswith("failed after 2 attempts")


def test_client_errors_are_not_retried(endpoint):
    url, handler = endpoint(fail_first=100, fail_status=400)
    llm = OpenAIEndpointLLM(url, "m", max_attempts=4, backoff_seconds=0.01)
    out = llm.generate([Request.chat("hi")])
    llm.close()
    assert out[0].error.startswith("rejected by server: HTTP 400") and handler.calls == 1


def test_unreachable_endpoint_is_one_clear_error():
    cfg = registry.ModelConfig(backend="openai", base_url="http://127.0.0.1:9/v1", model="m")
    with pytest.raises(InferenceError, match=r"endpoint http://127.0.0.1:9/v1 is not reachable"):
        registry.get_llm(cfg)


def test_api_key_comes_from_the_environment_and_missing_key_is_clear(monkeypatch):
    monkeypatch.delenv("SYNTHPOST_TEST_KEY", raising=False)
    with pytest.raises(InferenceError, match="SYNTHPOST_TEST_KEY"):
        OpenAIEndpointLLM("http://127.0.0.1:9/v1", "m", api_key_env="SYNTHPOST_TEST_KEY")


def test_unknown_alias_and_bad_directory_are_clear(tmp_path):
    with pytest.raises(InferenceError, match="unknown model 'smollm9'.*known aliases: smollm2-135m.*"
                                             "python -m pipelines.models prepare ALIAS"):
        resolve_model("smollm9")
    with pytest.raises(InferenceError, match="has no config.json"):
        resolve_model(str(tmp_path))


def test_an_alias_is_built_once_and_then_resolves_without_its_registration(tmp_path, monkeypatch):
    """A Beam worker or a vLLM process that never imported the registering layer finds the cached build."""
    monkeypatch.setenv("SYNTHPOST_CACHE", str(tmp_path))
    built = []

    def build(dest):
        built.append(dest)
        (dest / "config.json").write_text("{}")

    register_alias("test-only-model", build)
    path = prepare("test-only-model")
    assert resolve_model("test-only-model") == str(path) and len(built) == 1  # built once
    assert path == tmp_path / "models" / "test-only-model" and (path / "config.json").is_file()
    other_process = subprocess.run(
        [sys.executable, "-c", "from datagen.inference.model_names import resolve_model as r; print(r('test-only-model'))"],
        capture_output=True, text=True, env={**os.environ, "SYNTHPOST_CACHE": str(tmp_path)}, check=True)
    assert other_process.stdout.strip() == str(path)
    with pytest.raises(InferenceError, match="unknown model 'other-model'.*test-only-model"):
        resolve_model("other-model")


def test_models_command_lists_the_aliases_other_layers_register(tmp_path, monkeypatch, capsys):
    from pipelines import models as command

    monkeypatch.setenv("SYNTHPOST_CACHE", str(tmp_path))
    assert command.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"{TINY_MOE_ALIAS}\t{tmp_path}/models/{TINY_MOE_ALIAS}\tbuilt on first use" in lines
    assert command.main(["prepare", "no-such-alias"]) == 2
    assert "not a registered model alias" in capsys.readouterr().err


def test_a_backend_is_valid_in_configs_once_registered():
    from datagen.config_loader import ConfigError, load_config
    from pipelines.synth_config import SynthConfig

    with pytest.raises(ConfigError, match=r"models.default: backend 'echo' is not registered \(known: .*vllm"):
        load_config(SynthConfig, overrides=["--models.default.backend", "echo"])
    registry.register_backend("echo", lambda cfg: FakeLLM(lambda req: req.messages[-1][1], cfg.name))
    cfg = load_config(SynthConfig, overrides=["--models.default.backend", "echo", "--models.default.model", "e1"])
    llm = registry.get_llm(cfg.models["default"])
    assert llm.identity == "fake:e1" and llm.generate([Request.chat("ping")])[0].texts == ["ping"]
    assert registry.get_llm(cfg.models["default"]) is llm  # one instance per model per process
    registry.shutdown_all()


def test_uninstall_all_forgets_the_installed_doubles_and_keeps_what_the_registry_made():
    from fakes import install_fake

    double = FakeLLM(["from the double"])
    installed = install_fake(double, "uninstall-a")
    made_cfg = registry.ModelConfig(backend="fake", model="uninstall-b")
    made = registry.get_llm(made_cfg)
    assert registry.get_llm(installed) is double
    registry.uninstall_all()
    fresh = registry.get_llm(installed)  # the backend's factory answers now, not the test's double
    assert fresh is not double and fresh.generate([Request.chat("hi")])[0].texts != ["from the double"]
    assert registry.get_llm(made_cfg) is made
    registry.uninstall_all()  # a second call forgets nothing more
    assert registry.get_llm(installed) is fresh and registry.get_llm(made_cfg) is made
    registry.shutdown_all()


def test_fake_llm_records_calls_and_cycles_answers():
    llm = FakeLLM(["a", "b"])
    out = llm.generate([Request.chat("1"), Request.chat("2", params=SamplingParams(n=2)), Request.chat("3")])
    assert [c.texts for c in out] == [["a"], ["b", "b"], ["a"]]
    assert [r.messages[-1][1] for r in llm.calls] == ["1", "2", "3"]


def test_cache_serves_repeats_and_keys_on_params(tmp_path):
    fake = FakeLLM(lambda req: f"answer {len(fake.calls)}")
    cached = CachedLLM(fake, str(tmp_path))
    first = cached.generate([Request.chat("q", params=SamplingParams(seed=1))])[0]
    again = cached.generate([Request.chat("q", params=SamplingParams(seed=1))])[0]
    other = cached.generate([Request.chat("q", params=SamplingParams(seed=2))])[0]
    assert first.texts == again.texts == ["answer 1"] and again.cached and not first.cached
    assert other.texts == ["answer 2"]
    assert (cached.hits, cached.misses, len(fake.calls)) == (1, 2, 2)


def test_cache_entries_rebuild_each_request_exactly_and_old_entries_still_hit(tmp_path):
    fake = FakeLLM(lambda req: "ok")
    cached = CachedLLM(fake, str(tmp_path))
    requests = [Request.chat("q", system="be brief", params=SamplingParams(n=3, seed=7, stop=("###",))),
                Request(prompt="Accuracy:", params=SamplingParams(max_tokens=4, temperature=0.0, logprobs=5))]
    cached.generate(requests)
    cached.flush()
    old_key = Request.chat("old").cache_key(cached.identity)  # an entry written before requests were stored
    CallCache(str(tmp_path)).put(old_key, Completion(texts=["old answer"], completion_tokens=2))
    entries = list(CallCache(str(tmp_path)).iter_entries())
    rebuilt = {e.request: e for e in entries if not isinstance(e, str)}
    assert set(rebuilt) == set(requests) and [e for e in entries if isinstance(e, str)] == [old_key]
    assert all(e.key == e.request.cache_key(e.model) and e.model == cached.identity for e in rebuilt.values())
    assert rebuilt[requests[0]].completion.texts == ["ok"] * 3
    again = cached.generate([Request.chat("old"), *requests])
    assert [c.cached for c in again] == [True] * 3 and again[0].texts == ["old answer"]
    assert len(fake.calls) == 2


def test_cache_does_not_store_failures(tmp_path):
    fake = FakeLLM(lambda req: Completion(error="boom"))
    cached = CachedLLM(fake, str(tmp_path))
    cached.generate([Request.chat("q")])
    cached.generate([Request.chat("q")])
    assert (cached.hits, len(fake.calls)) == (0, 2)


def test_transformers_backend_matches_plain_generate_on_the_tiny_moe():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(TINY_MOE_ALIAS)
    cfg = registry.ModelConfig(backend="transformers", model=TINY_MOE_ALIAS)
    llm = registry.get_llm(cfg)
    params = SamplingParams(max_tokens=6, temperature=0.0)
    out = llm.generate([Request.chat("Hello there", params=params), Request.chat("Hi", params=params)])
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    ref = model.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(ref[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    registry.shutdown_all()
    assert out[1].texts == [expected]
    assert out[0].ok and out[0].completion_tokens > 0


def test_managed_server_env_comes_from_the_model_config(tmp_path):
    from datagen.inference.managed import server_env
    from datagen.config_loader import load_config
    from pipelines.synth_config import SynthConfig

    path = tmp_path / "two.yaml"
    path.write_text("models:\n  default: {model: smollm2-135m}\n  judge:\n    model: smollm2-135m\n    kv_cache_gib: 3\n"
                    "    server_env: {VLLM_CPU_OMP_THREADS_BIND: '1'}\n", encoding="utf-8")
    judge = load_config(SynthConfig, str(path), []).models["judge"]
    step_timeout = {"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "3600"}  # a stalled step on a shared CPU is not a dead engine
    assert server_env(judge) == {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_CPU_OMP_THREADS_BIND": "1", **step_timeout}
    assert server_env(registry.ModelConfig()) == {"VLLM_CPU_KVCACHE_SPACE": "2", **step_timeout}
    assert server_env(registry.ModelConfig(server_env={"VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS": "60"}))[
        "VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"] == "60"  # the config's own value wins
