"""Hub uploads with the real huggingface_hub client against a stand-in hub on 127.0.0.1.

`python -m pipelines.synth --push_to_hub` runs in a subprocess with HF_ENDPOINT pointing at
tests/hub_server.py (a content-aware fake model answers, injected through the registry), and
`datasets.load_dataset` reads the repo back from the same server. The token must reach the hub
and nowhere else: not the logs, the card or any uploaded file.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest

import memory_fs
from datagen.output.hub import PushError, push_to_hub
from datagen.output.writer import UPLOAD_PATTERNS
from hub_server import LocalHub
from test_synth_pipeline import write_seeds

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_STANDIN_token_that_must_never_leak_9731"
REPO = "someone/synth"
# the pipeline's entry point, with the content-aware fake model of test_synth_pipeline as `fake`
RUN_SYNTH = (
    "import sys; sys.path.insert(0, 'tests')\n"
    "from fakes import FakeLLM\n"
    "from test_synth_pipeline import respond_as_each_stage\n"
    "from datagen.inference import registry\n"
    "registry.register_backend('fake', lambda cfg: FakeLLM(respond_as_each_stage, name=cfg.name))\n"
    "from pipelines.synth import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def hub_env(tmp_path: Path, endpoint: str, token: str | None = TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return env


def synth(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_SYNTH, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def run_args(tmp_path: Path) -> list[str]:
    write_seeds(tmp_path / "seeds.jsonl")
    return ["--seeds", str(tmp_path / "seeds.jsonl"), "--output", str(tmp_path / "out"), "--no_cache",
            "--models.default.backend", "fake", "--evolve.operations", "[harder]"]


def uploadable(out: Path) -> dict[str, bytes]:
    found = {}
    for pattern in UPLOAD_PATTERNS:
        for path in out.glob(pattern):
            found[path.relative_to(out).as_posix()] = path.read_bytes()
    return found


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture(scope="module")
def pushed(tmp_path_factory):
    """One real run with --push_to_hub into the stand-in hub; the hub stays up for the tests."""
    tmp_path = tmp_path_factory.mktemp("hub")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".cache").mkdir()
    (tmp_path / "out" / ".cache" / "calls.jsonl").write_text("{}")  # must not go up
    with LocalHub(TOKEN) as hub:
        done = synth([*run_args(tmp_path), "--push_to_hub", REPO], hub_env(tmp_path, hub.endpoint))
        yield hub, tmp_path, done


def test_run_with_push_to_hub_commits_the_whole_dataset(pushed):
    hub, tmp_path, done = pushed
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"uploaded:         {hub.endpoint}/datasets/{REPO}" in done.stdout
    local = uploadable(tmp_path / "out")
    remote = hub.files(REPO)
    assert remote == local  # same names, same bytes; the call cache stayed home
    for part in ("data/", "rejects/", "sft/", "dpo/", "report/index.html", "README.md", "stats.json"):
        assert any(name.startswith(part) for name in remote), part
    assert hub.repos[("dataset", REPO)].private
    writes = [r for r in hub.requests if r.method == "POST"]
    assert writes and all(r.authorized for r in writes)


def test_the_token_reaches_the_hub_and_nowhere_else(pushed):
    hub, tmp_path, done = pushed
    assert TOKEN not in done.stdout + done.stderr
    for name, data in hub.files(REPO).items():
        assert TOKEN.encode() not in data, name
    for path in (tmp_path / "out").rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes(), path


def test_datasets_reads_the_pushed_repo_back(pushed):
    hub, tmp_path, _ = pushed
    read = ("import datasets, json\n"
            f"ds = datasets.load_dataset({REPO!r}, split='train')\n"
            f"sft = datasets.load_dataset({REPO!r}, 'sft', split='train')\n"
            "print(json.dumps({'rows': ds.num_rows, 'ids': sorted(ds['id']), 'sft': sft.num_rows}))\n")
    done = subprocess.run([sys.executable, "-c", read], env=hub_env(tmp_path, hub.endpoint), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    stats = json.loads(hub.files(REPO)["stats.json"])
    assert got["rows"] == stats["totals"]["kept"] > 0
    assert got["sft"] > 0
    assert TOKEN not in done.stdout + done.stderr


def test_push_command_retries_the_upload_and_drops_stale_shards(pushed):
    hub, tmp_path, _ = pushed
    hub.repos[("dataset", REPO)].files["data/train-00003-of-00004.parquet"] = b"an earlier push's shard"
    env = hub_env(tmp_path, hub.endpoint)
    done = subprocess.run([sys.executable, "-m", "pipelines.synth", "push", str(tmp_path / "out"), REPO],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert hub.files(REPO) == uploadable(tmp_path / "out")
    assert TOKEN not in done.stdout + done.stderr


def test_unreachable_hub_is_a_one_line_connection_error_after_the_run(tmp_path):
    env = hub_env(tmp_path, f"http://127.0.0.1:{closed_port()}")
    done = synth([*run_args(tmp_path), "--push_to_hub", "someone/x"], env)
    assert done.returncode == 1, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith("error: upload to someone/x failed: ") and "Connect" in errors[0]
    assert "offline" not in done.stderr.lower()
    assert f"retry the upload with: python -m pipelines.synth push {tmp_path / 'out'} someone/x" in errors[0]
    assert TOKEN not in done.stdout + done.stderr
    assert (tmp_path / "out" / "README.md").is_file()  # the run's dataset is there to push later


def test_push_without_a_token_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    from pipelines import synth as entry

    monkeypatch.delenv("HF_TOKEN", raising=False)
    out = tmp_path / "out"
    assert entry.main(["--output", str(out), "--no_cache", "--push_to_hub", "someone/x"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err and not out.exists()


def test_a_wrong_token_is_named_by_the_hub_and_scrubbed(pushed, monkeypatch):
    hub, tmp_path, _ = pushed
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_42")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(PushError) as err:
        push_to_hub(str(tmp_path / "out"), "someone/other")
    assert "401" in str(err.value) and "hf_wrong_token_42" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__context__ is None


def test_output_on_an_object_store_is_pushed_after_the_run(tmp_path, monkeypatch):
    """`--output gs://…` on Dataflow: the run writes through Beam's filesystems, the push copies
    from there. memgcs:// stands in for gs:// (same FileSystems calls, no credentials)."""
    from datagen.inference import registry
    from fakes import FakeLLM
    from pipelines import synth as entry
    from test_synth_pipeline import respond_as_each_stage

    out = f"{memory_fs.SCHEME}://bucket/run-001"
    args = run_args(tmp_path)
    args[args.index("--output") + 1] = out
    registry.install(registry.ModelConfig(backend="fake"), FakeLLM(respond_as_each_stage))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    try:
        with LocalHub(TOKEN) as hub:
            monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
            monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
            assert entry.main([*args, "--push_to_hub", REPO]) == 0
            remote = hub.files(REPO)
    finally:
        registry.shutdown_all()
    stored = memory_fs.files(out + "/")
    assert "README.md" in remote and any(name.startswith("data/") for name in remote)
    assert remote == {path[len(out) + 1:]: data for path, data in stored.items()
                      if path[len(out) + 1:] in remote}
    assert not any(path.startswith(f"{out}/.tmp") for path in stored)
