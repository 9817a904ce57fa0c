"""`--push_to_hub REPO` on SFT, RM and DPO, with the real huggingface_hub client against the stand-in
hub of tests/hub_server.py (HF_ENDPOINT).

The SFT command runs as a user runs it (a subprocess; tensorboard logs and checkpoints on disk), and
`from_pretrained` reads the pushed repo back over HTTP. The final model, tokenizer, card and data
report go up in one commit; checkpoints and logs stay home; the token reaches the hub and nowhere
else. No token is refused before any work; a failed upload is one line with a retry command that
works. RM and DPO push the same way (in-process runs, to keep the suite short).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest

from hub_server import LocalHub
from test_hub import closed_port, hub_env

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_STANDIN_training_token_never_leaks_5521"
SFT_REPO = "someone/sft-tiny"


def write_chats(path: Path) -> str:
    rows = [{"messages": [{"role": "user", "content": f"What is {i} plus {i}?"},
                          {"role": "assistant", "content": f"It is {2 * i}."}]} for i in range(8)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def sft_args(tmp_path: Path, out: Path) -> list[str]:
    return ["--output_dir", str(out), "--dataset", write_chats(tmp_path / "chats.jsonl"),
            "--model.name", "tiny-hunyuan-moe", "--max_steps", "2", "--save_steps", "1", "--logging_steps", "1",
            "--per_device_train_batch_size", "2", "--max_length", "64", "--learning_rate", "1e-3",
            "--min_learning_rate", "1e-4", "--data.eval_fraction", "0", "--report_to", "tensorboard"]


def top_level_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def pushed_sft(tmp_path_factory):
    """One real `python posttrain/sft.py ... --push_to_hub` into the stand-in hub, which stays up."""
    tmp_path = tmp_path_factory.mktemp("sft-hub")
    out = tmp_path / "out"
    with LocalHub(TOKEN) as hub:
        env = {**hub_env(tmp_path, hub.endpoint, TOKEN), "OMP_NUM_THREADS": "1"}
        done = subprocess.run([sys.executable, "posttrain/sft.py", *sft_args(tmp_path, out), "--push_to_hub", SFT_REPO],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        yield hub, tmp_path, out, done


def test_sft_push_commits_the_final_model_and_never_the_checkpoints(pushed_sft):
    hub, _, out, done = pushed_sft
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"uploaded: {hub.endpoint}/{SFT_REPO}" in done.stdout
    remote = hub.files(SFT_REPO, "model")
    assert remote == top_level_files(out)  # same names, same bytes
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md",
            "data_report.json"} <= set(remote)
    assert [p.name for p in out.glob("checkpoint-*")] and (out / "runs").is_dir()  # on disk, not on the hub
    assert not any("/" in name for name in remote)
    assert hub.repos[("model", SFT_REPO)].private
    assert f"from_pretrained('{SFT_REPO}')" in remote["README.md"].decode()


def test_from_pretrained_reads_the_pushed_model_back(pushed_sft):
    hub, tmp_path, out, _ = pushed_sft
    read = ("import sys, torch\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
            f"hub = AutoModelForCausalLM.from_pretrained({SFT_REPO!r}, dtype=torch.float32)\n"
            f"local = AutoModelForCausalLM.from_pretrained({str(out)!r}, dtype=torch.float32)\n"
            "theirs = local.state_dict()\n"
            "assert hub.state_dict().keys() == theirs.keys()\n"
            "print(max((t - theirs[n]).abs().max().item() for n, t in hub.state_dict().items()))\n"
            f"print(len(AutoTokenizer.from_pretrained({SFT_REPO!r})))\n")
    done = subprocess.run([sys.executable, "-c", read], env=hub_env(tmp_path, hub.endpoint, TOKEN), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    difference, vocabulary = done.stdout.split()[-2:]
    assert float(difference) == 0.0 and int(vocabulary) > 40000
    downloads = [r.path.rsplit("/", 1)[1] for r in hub.requests if f"/{SFT_REPO}/resolve/" in r.path]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(downloads)  # read over HTTP


def test_the_token_reaches_the_hub_and_nowhere_else(pushed_sft):
    hub, _, out, done = pushed_sft
    assert TOKEN not in done.stdout + done.stderr
    for name, data in hub.files(SFT_REPO, "model").items():
        assert TOKEN.encode() not in data, name
    for path in out.rglob("*"):  # checkpoints, training_args.bin and the tensorboard events included
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path
    writes = [r for r in hub.requests if r.method == "POST"]
    assert writes and all(r.authorized for r in writes)


# --------------------------------------------------------------------------- refusals and failures


def run_sft_in_process(tmp_path, extra: list[str], capsys) -> tuple[int, list[str]]:
    from posttrain.sft import main

    code = main(sft_args(tmp_path, tmp_path / "out") + extra)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    return code, errors


def test_push_without_a_token_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, errors = run_sft_in_process(tmp_path, ["--push_to_hub", "someone/x"], capsys)
    assert code == 2 and len(errors) == 1 and "HF_TOKEN" in errors[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, message", [
    (["--push_to_hub", "not a repo id"], "push_to_hub: 'not a repo id' is not a hub repo id"),
    (["--trl_args", json.dumps({"hub_token": TOKEN})], "trl_args.hub_token: synthpost sets it itself (HF_TOKEN only"),
    (["--trl_args", json.dumps({"push_to_hub": True})], "trl_args.push_to_hub: set it at the top level"),
])
def test_hub_settings_the_trainer_owns_are_config_errors(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    code, errors = run_sft_in_process(tmp_path, extra, capsys)
    assert code == 2 and len(errors) == 1 and message in errors[0]
    assert TOKEN not in errors[0]
    assert not (tmp_path / "out").exists()


def test_a_failed_upload_is_one_line_and_its_retry_command_pushes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    code, errors = run_sft_in_process(tmp_path, ["--push_to_hub", "someone/x"], capsys)
    out = tmp_path / "out"
    assert code == 1 and len(errors) == 1, errors
    assert errors[0].startswith("error: upload to someone/x failed: ") and "Connect" in errors[0]
    retry = f"python -m pipelines.push {out} someone/x"
    assert errors[0].endswith(f"retry the upload with: {retry}") and TOKEN not in errors[0]
    assert (out / "model.safetensors").is_file()  # the trained model waits for the retry

    with LocalHub(TOKEN) as hub:
        done = subprocess.run([sys.executable, *retry.split()[1:]], cwd=ROOT, env=hub_env(tmp_path, hub.endpoint, TOKEN),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert hub.files("someone/x", "model") == top_level_files(out)
    assert TOKEN not in done.stdout + done.stderr


# --------------------------------------------------------------------------- RM and DPO


@pytest.fixture
def live_hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with LocalHub(TOKEN) as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield hub


def test_reward_model_push(tmp_path, live_hub, capsys):
    from posttrain.rm import main

    out = tmp_path / "rm"
    code = main(["--output_dir", str(out), "--model", "tiny-hunyuan-moe", "--dataset", "seeds", "--max_pairs", "8",
                 "--max_steps", "1", "--per_device_train_batch_size", "2", "--max_length", "256",
                 "--report_to", "none", "--push_to_hub", "someone/rm-tiny"])
    assert code == 0, capsys.readouterr().err[-3000:]
    remote = live_hub.files("someone/rm-tiny", "model")
    assert remote == top_level_files(out) and (out / "seed_pairs").is_dir()
    assert json.loads(remote["config.json"])["architectures"][0].endswith("ForSequenceClassification")
    assert "AutoModelForSequenceClassification.from_pretrained('someone/rm-tiny')" in remote["README.md"].decode()


def test_dpo_push(tmp_path, live_hub, capsys):
    from posttrain.dpo import main

    out = tmp_path / "dpo"
    code = main(["--config", str(ROOT / "configs/posttrain/dpo_tiny.yaml"), "--output_dir", str(out),
                 "--max_steps", "1", "--online.enabled", "false", "--max_pairs", "4", "--report_to", "none",
                 "--push_to_hub", "someone/dpo-tiny", "--hub_private_repo", "false"])
    assert code == 0, capsys.readouterr().err[-3000:]
    remote = live_hub.files("someone/dpo-tiny", "model")
    assert remote == top_level_files(out)
    assert {"model.safetensors", "dpo_summary.json", "data_report.json", "README.md"} <= set(remote)
    assert not live_hub.repos[("model", "someone/dpo-tiny")].private
    assert os.path.isdir(out / "checkpoint-1")
