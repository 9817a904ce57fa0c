"""The native Hunyuan module through the commands a user runs: `python -m pipelines.models serve`
(the real vLLM server, stopped by SIGTERM with no process left), and bad checkpoints through
`posttrain/sft.py` (also under `accelerate launch`) and `python -m pipelines.models` -- one line
naming the key or tensor, exit 2, before anything heavy starts."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from posttrain.hunyuan import register as register_hunyuan
from posttrain.model_registry import register_models
from conftest import our_vllm_processes
from datagen.inference.model_names import resolve_model
from pipelines import models as models_cli
from posttrain.sft import main as sft_main

register_models()  # the aliases tiny-hunyuan-moe, smollm2-moe
register_hunyuan()  # model_type "hunyuan" with the Auto classes

REPO = Path(__file__).resolve().parents[1]
TINY = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
            head_dim=32, num_experts=4, moe_topk=1, use_mixed_mlp_moe=True, num_shared_expert=1, use_qk_norm=True,
            use_cla=True, cla_share_factor=2, tie_word_embeddings=True, architectures=["HunYuanForCausalLM"])


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny native Hunyuan checkpoint (CLA, QK-norm, 4 experts) with SmolLM2's tokenizer."""
    from posttrain.hunyuan.configuration import HunYuanConfig
    from posttrain.hunyuan.modeling import HunYuanForCausalLM

    path = tmp_path_factory.mktemp("good")
    torch.manual_seed(0)
    HunYuanForCausalLM(HunYuanConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                     pad_token_id=tokenizer.eos_token_id, **TINY)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> str:
    from datasets import Dataset

    path = tmp_path_factory.mktemp("chats")
    Dataset.from_list([{"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
                       ] * 4).save_to_disk(str(path))
    return str(path)


def broken_copy(good: Path, dest: Path, config: dict | None = None, tensors=None) -> str:
    """`good` with config keys changed and/or its tensors rewritten by `tensors(state) -> state`."""
    from safetensors.torch import load_file, save_file

    dest.mkdir()
    for f in good.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            (dest / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((good / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    state = load_file(good / "model.safetensors")
    save_file(tensors(state) if tensors else state, dest / "model.safetensors", metadata={"format": "pt"})
    return str(dest)


def without(name):
    return lambda state: {k: v for k, v in state.items() if k != name}


def reshaped(name, shape):
    return lambda state: {**state, name: torch.zeros(shape)}


def added(name, shape):
    return lambda state: {**state, name: torch.zeros(shape)}


BAD = {  # case: (config changes, tensor changes, what the one line must name)
    "rope type we lack": ({"rope_scaling": {"type": "yarn", "factor": 2.0, "original_max_position_embeddings": 256}},
                          None, "rope_scaling type 'yarn' is not supported"),
    "top-k above experts": ({"moe_topk": 8}, None, "moe_topk=8 must be between 1 and num_experts=4"),
    "CLA factor not dividing": ({"cla_share_factor": 3}, None, "cla_share_factor=3 does not divide num_hidden_layers=4"),
    "missing expert": (None, without("model.layers.1.mlp.experts.2.up_proj.weight"),
                       "lacks tensor model.layers.1.mlp.experts.2.up_proj.weight"),
    "router of the wrong shape": (None, reshaped("model.layers.0.mlp.gate.wg.weight", (3, 64)),
                                  "model.layers.0.mlp.gate.wg.weight has shape (3, 64)"),
    "K/V on a CLA cross layer": (None, added("model.layers.1.self_attn.k_proj.weight", (32, 64)),
                                 "model.layers.1.self_attn.k_proj.weight that the config does not use"),
}


def one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    return errors[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint_is_one_line_from_sft_and_models(case, good_dir, chats, tmp_path, capsys):
    config, tensors, named = BAD[case]
    bad = broken_copy(good_dir, tmp_path / "bad", config, tensors)

    assert sft_main(["--model.name", bad, "--dataset", chats, "--output_dir", str(tmp_path / "out"),
                     "--report_to", "none", "--max_steps", "1"]) == 2
    assert named in one_error_line(capsys.readouterr().err)
    for command in (["check", bad], ["serve", bad]):  # serve checks before it starts vLLM
        assert models_cli.main(command) == 2
        assert named in one_error_line(capsys.readouterr().err)
    assert not our_vllm_processes()


def test_the_good_checkpoint_passes_the_check(good_dir, capsys):
    assert models_cli.main(["check", str(good_dir)]) == 0
    assert "4 routed experts (top-1), CLA x2: config and tensors match" in capsys.readouterr().out


def test_upcycling_a_model_that_is_not_llama_is_one_line(good_dir, tmp_path, capsys):
    assert models_cli.main(["upcycle", str(good_dir), str(tmp_path / "moe")]) == 2
    assert "model_type 'hunyuan' is not Llama-shaped" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "moe").exists()


def test_bad_checkpoint_under_accelerate_launch(good_dir, chats, tmp_path):
    """accelerate launch runs the script as a child: the child prints the one line and exits 2;
    accelerate 1.15 itself then exits 1 (with --quiet, without its own traceback)."""
    config, tensors, named = BAD["missing expert"]
    bad = broken_copy(good_dir, tmp_path / "bad", config, tensors)
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--cpu", "--num_processes", "1",
         "--num_cpu_threads_per_process", "1", "posttrain/sft.py", "--model.name", bad, "--dataset", chats,
         "--output_dir", str(tmp_path / "out"), "--report_to", "none"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 1
    assert named in one_error_line(result.stderr)


def test_serving_a_hunyuan_model_without_the_plugin_says_what_to_run(good_dir, monkeypatch, capsys):
    monkeypatch.setattr(models_cli, "plugin_installed", lambda: False)
    assert models_cli.main(["serve", str(good_dir)]) == 2
    assert "run scripts/setup.sh" in one_error_line(capsys.readouterr().err)


def test_help_lists_every_command_and_serve_option(capsys):
    with pytest.raises(SystemExit):
        models_cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(word in out for word in ("prepare", "list", "check", "upcycle", "serve", "--port", "--kv-cache-gib"))
    with pytest.raises(SystemExit):
        models_cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert all(word in out for word in ("--port", "--served-name", "--max-model-len", "--dtype", "after --"))


@pytest.mark.vllm
def test_serve_runs_until_sigterm_and_leaves_no_process(no_vllm_left_behind):
    from datagen.inference.vllm_server import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.models", "serve", "smollm2-moe", "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = wait_for_url(proc, timeout=900)
        assert url == f"http://127.0.0.1:{port}/v1"
        with urllib.request.urlopen(url + "/models", timeout=30) as response:
            assert [m["id"] for m in json.load(response)["data"]] == ["smollm2-moe"]
        assert our_vllm_processes()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
        assert "server stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.monotonic() + 30
    while our_vllm_processes() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not our_vllm_processes()


def wait_for_url(proc: subprocess.Popen, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if "ready in" in line:
            return line.split(": ", 1)[1].split(" ", 1)[0]
        assert time.monotonic() < deadline, "the server did not become ready"
    raise AssertionError(f"serve exited with code {proc.wait()} before it was ready")
