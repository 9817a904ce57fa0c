"""The whole pipeline through `pipelines.synth.main`: every input ends kept or rejected.

A content-aware fake model plays each stage's part (prompts are recognised by their
templates), so this runs in seconds; test_synth_vllm.py covers the real server path.
"""
from __future__ import annotations

import json
import re

import datasets
import pytest

from datagen.inference import registry
from datagen.inference.base import Request
from readback import read_records
from fakes import FAKE_BACKEND, FakeLLM
from pipelines import synth

GOOD_SEEDS = [
    {"text": "Addition combines numbers: 12 plus 30 makes 42, and 40 plus 2 also makes 42.", "domain": "math"},
    {"text": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
     "domain": "science"},
    {"text": "The printing press made books cheaper and spread literacy across Europe after 1440.",
     "domain": "humanities"},
]


def write_seeds(path):
    with open(path, "wb") as f:
        for seed in GOOD_SEEDS:
            f.write((json.dumps(seed) + "\n").encode())
        f.write(b'{"text": "broken json\n')             # invalid_json
        f.write(b'{"text": ""}\n')                       # empty_text
        f.write(b'{"domain": "math"}\n')                 # missing_text
        f.write(b'{"text": "caf\xe9 au lait, a drink made with coffee and hot milk"}\n')  # not_utf8


def respond_as_each_stage(request: Request) -> str | list[str]:
    prompt = request.prompt or request.messages[-1][1]
    if "Write them as a numbered list" in prompt:
        topic = re.search(r"Text:\n(\w+ \w+)", prompt).group(1)
        return (f"1. What does the text say about {topic} in total?\n"
                f"2. How would you explain {topic} to a younger student?\n")
    match = re.search(r"^(?:Question|Instruction): (.+)$", prompt, re.MULTILINE)
    if prompt.startswith("Rewrite the") and match:
        return match.group(1).rstrip("?") + ", and explain each step of your reasoning?"
    if "graded on five aspects" in prompt:
        return " 4\nRelevance: 4\nCompleteness: 3\nUsefulness: 4\nClarity: 4\nRationale: correct and clear."
    return [f"The answer is \\boxed{{42}}. Reasoning step {i}: add the numbers." for i in range(request.params.n)]


@pytest.fixture
def fake_model():
    cfg = registry.ModelConfig(backend=FAKE_BACKEND)
    llm = FakeLLM(respond_as_each_stage)
    registry.install(cfg, llm)
    yield llm
    registry.shutdown_all()


def test_every_input_is_accounted_for_at_every_stage(tmp_path, fake_model, capsys):
    write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    code = synth.main(["--seeds", str(tmp_path / "seeds.jsonl"), "--output", str(out), "--no_cache",
                       "--models.default.backend", FAKE_BACKEND, "--evolve.operations", "[harder]"])
    assert code == 0, capsys.readouterr().err
    stats = json.loads((out / "stats.json").read_text())
    stages = stats["stages"]
    for name, entry in stages.items():
        if isinstance(entry, dict):
            assert entry["kept"] + sum(entry["rejected"].values()) == entry["in"], name
    assert stages["seeds"]["in"] == 7 and stages["seeds"]["kept"] == 3
    assert stages["seeds"]["rejected"] == {"invalid_json": 1, "empty_text": 1, "missing_text": 1, "not_utf8": 1}
    assert stages["generate"]["out"] == 6 and stages["critique"]["in"] == stages["consistency"]["out"]

    kept, rejected = read_records(str(out / "data")), read_records(str(out / "rejects"))
    assert len(kept) == stages["critique"]["out"] > 0
    assert len(rejected) == sum(sum(e["rejected"].values()) for e in stages.values() if isinstance(e, dict))
    assert all(r.reject_stage and r.reject_reason for r in rejected)
    assert all(r.status == "kept" and r.critique.mean >= 2.5 and r.response for r in kept)
    assert {step.stage for step in kept[0].lineage} >= {"generate", "evolve", "respond", "critique"}
    hf_cache = str(tmp_path / "hf")  # datasets' shared cache can hold another run's "out" under the same hash
    assert len(datasets.load_dataset(str(out), split="train", cache_dir=hf_cache)) == len(kept)
    assert len(datasets.load_dataset(str(out), "sft", split="train", cache_dir=hf_cache)) == len(kept)
    assert (out / "README.md").is_file() and (out / "report" / "index.html").is_file()
    summary = capsys.readouterr().out
    assert "== synthpost: done ==" in summary and str(out) in summary


def test_the_judge_check_is_in_stats_and_card_and_min_auc_stops_the_run_first(tmp_path, fake_model, capsys):
    write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    base = ["--seeds", str(tmp_path / "seeds.jsonl"), "--no_cache", "--models.default.backend", FAKE_BACKEND]
    assert synth.main([*base, "--output", str(out), "--evolve.operations", "[harder]"]) == 0
    check = json.loads((out / "stats.json").read_text())["judge_check"]
    # the fake judge grades every answer alike: a coin, said out loud in the run and the card
    assert (check["pairs"], check["auc"], check["weak"]) >= (40, 0.5, True) and check["auc"] == 0.5
    card = (out / "README.md").read_text()
    assert "## Judge check" in card and "filters nothing meaningful" in card
    assert "judge check:      AUC 0.50 on 50 calibration pairs  — WEAK" in capsys.readouterr().out

    fake_model.calls.clear()
    registry.install(registry.ModelConfig(backend=FAKE_BACKEND), fake_model)  # the first run's end let it go
    stopped = tmp_path / "stopped"
    assert synth.main([*base, "--output", str(stopped), "--critique.min_auc", "0.6"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: critique judge AUC 0.50 on 50 calibration pairs is below critique.min_auc 0.6: "
        "stopped before any stage ran"]
    assert len(fake_model.calls) == 100 and all("graded on five aspects" in c.prompt for c in fake_model.calls)
    assert not (stopped / "stats.json").exists()


def knows_the_calibration_answers(request: Request) -> str | list[str]:
    """The stage fake, but a judge that grades the calibration pairs' known-good answers 4 and known-bad 1."""
    from datagen.filters.calibration import load_pairs
    prompt = request.prompt or ""
    if "graded on five aspects" in prompt:
        answer = prompt.rsplit("### Answer\n", 1)[1].rsplit("\n### Grades", 1)[0]
        tier = {p.bad.replace("###", "#"): 1 for p in load_pairs()}.get(answer, 4)
        return f" {tier}\nRelevance: 4\nCompleteness: 3\nUsefulness: 4\nClarity: 4\nRationale: checked."
    return respond_as_each_stage(request)


def test_the_judge_check_runs_inside_the_job_and_gates_every_stage(tmp_path, fake_model, capsys):
    """Where the judge runs on the workers (Dataflow: `judge_check_where: auto`), the check is the job's
    first step: the stages read its result as a side input, so a failing judge stops the job before any
    stage calls a model, with the same one line and exit 2 as the launcher's check."""
    write_seeds(tmp_path / "seeds.jsonl")
    base = ["--seeds", str(tmp_path / "seeds.jsonl"), "--no_cache", "--models.default.backend", FAKE_BACKEND,
            "--critique.judge_check_where", "job"]
    stopped = tmp_path / "stopped"
    assert synth.main([*base, "--output", str(stopped), "--critique.min_auc", "0.6"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: critique judge AUC 0.50 on 50 calibration pairs is below critique.min_auc 0.6: "
        "stopped before any stage ran"]
    assert len(fake_model.calls) == 100 and all("graded on five aspects" in c.prompt for c in fake_model.calls)
    assert not (stopped / "stats.json").exists() and not (stopped / "data").exists()

    fake_model.calls.clear()
    fake_model.responses = knows_the_calibration_answers
    registry.install(registry.ModelConfig(backend=FAKE_BACKEND), fake_model)
    out = tmp_path / "out"
    assert synth.main([*base, "--output", str(out), "--critique.min_auc", "0.75"]) == 0
    check = json.loads((out / "stats.json").read_text())["judge_check"]
    assert (check["where"], check["auc"], check["baselines"]["longer"], check["pairs"]) == ("job", 1.0, 0.5, 50)
    assert "judge check:      AUC 1.00 on 50 calibration pairs" in capsys.readouterr().out
    judged = [i for i, c in enumerate(fake_model.calls) if "graded on five aspects" in (c.prompt or "")]
    assert judged[:100] == list(range(100))  # the check's 100 calls came before any stage's
