"""Referenced seeds through `pipelines.synth.main`: a seed row with `instruction` and `reference` (or
`tests`) is used as written, its answers are judged against the reference — right, wrong, unreadable —
and only right answers become SFT rows, only right-vs-wrong pairs of one prompt DPO pairs.

The model is a fake that answers each question with planned samples (so every verdict is known);
tests/test_synth_vllm.py runs referenced seeds on the real server.
"""
from __future__ import annotations

import json

import datasets
import pytest

from datagen.inference import registry
from datagen.inference.base import Request
from datagen.readers.seed_readers import given_item
from datagen.stages.seeds import SeedsConfig
from fakes import FAKE_BACKEND, FakeLLM
from pipelines import synth
from readback import read_records

# question → the samples the model gives (n=4): right, wrong and unreadable answers in known places
PLANNED = {
    "Compute 4000 + 817.": ["Add them: 4000 + 817 = \\boxed{4817}.", "I think it is \\boxed{4807}.",
                            "Numbers are fun to add together.", "Adding gives \\boxed{4817}"],
    "Find x if 3x - 5 = 7.": ["So x = \\boxed{4}.", "x = \\boxed{4}.", "x = \\boxed{5}.", "x = \\boxed{4}."],
    "A box holds 9130 pens. Half are red. How many are red?": [
        "\\boxed{4000}", "\\boxed{4000}", "Red pens are nice.", "\\boxed{4600}"],  # none right (4565)
}
REFERENCES = {"Compute 4000 + 817.": "4817", "Find x if 3x - 5 = 7.": "4",
              "A box holds 9130 pens. Half are red. How many are red?": "4565"}
CODE = ("Write a Python function triple(n) that returns three times n.", "assert triple(2) == 6\nassert triple(0) == 0")
CODE_ANSWERS = ["```python\ndef triple(n):\n    return 3 * n\n```", "```python\ndef triple(n):\n    return n + 3\n```"]


def answer(request: Request) -> str | list[str]:
    prompt = request.prompt or request.messages[-1][1]
    for question, samples in PLANNED.items():
        if prompt.startswith(question):
            return samples[: request.params.n]
    if prompt.startswith(CODE[0]):
        return (CODE_ANSWERS * 4)[: request.params.n]
    if "graded on five aspects" in prompt:
        return " 3\nRelevance: 3\nCompleteness: 3\nUsefulness: 3\nClarity: 3\nRationale: fine."
    if "Write them as a numbered list" in prompt:
        return "1. How do plants make sugar from sunlight?\n"
    return ["Plants use light to make sugar, \\boxed{sugar}."] * request.params.n


@pytest.fixture
def model():
    llm = FakeLLM(answer)
    registry.install(registry.ModelConfig(backend=FAKE_BACKEND), llm)
    yield llm
    registry.shutdown_all()


def write_seeds(path):
    rows = [{"instruction": q, "reference": r, "domain": "math"} for q, r in REFERENCES.items()]
    rows.append({"instruction": CODE[0], "tests": CODE[1], "domain": "code"})
    rows.append({"text": "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar.",
                 "domain": "science"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_referenced_items_are_judged_against_their_reference_and_only_right_answers_train(tmp_path, model):
    write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    assert synth.main(["--seeds", str(tmp_path / "seeds.jsonl"), "--output", str(out), "--no_cache",
                       "--models.default.backend", FAKE_BACKEND, "--evolve.operations", "[harder]",
                       "--critique.judge_check", "false", "--output.sft_per_prompt", "4"]) == 0
    kept = {r.instruction: r for r in read_records(str(out / "data"))}
    rejected = {r.instruction: r for r in read_records(str(out / "rejects"))}

    # verdicts from the reference, not from agreement: "4807" is wrong although it is a number, the
    # unreadable answer stays unverified; a majority of "4000" proves nothing against the reference
    add = kept["Compute 4000 + 817."]
    assert [r.verdict for r in add.responses] == ["verified", "wrong", "unverified", "verified"]
    assert add.consistency.method == "reference" and add.consistency.agreement == 0.5
    assert add.instruction == "Compute 4000 + 817." and not add.evolution  # used as written, never evolved
    assert add.critique is None and add.response == PLANNED["Compute 4000 + 817."][0]  # no judge call
    none_right = rejected["A box holds 9130 pens. Half are red. How many are red?"]
    assert (none_right.reject_stage, none_right.reject_reason) == ("consistency", "no_right_answer")
    assert kept[CODE[0]].consistency.outcome == "verified"

    # the reference never reaches a model; given items are not sent to generate or evolve
    prompts = [c.prompt or c.messages[-1][1] for c in model.calls]
    for reference in ("4817", "4565"):
        assert not any(reference in p for p in prompts)
    assert not any("Rewrite the" in p and "4000 + 817" in p for p in prompts)

    hf_cache = str(tmp_path / "hf")
    sft = datasets.load_dataset(str(out), "sft", split="train", cache_dir=hf_cache)
    answers = [row["messages"][1]["content"] for row in sft if row["messages"][0]["content"] == "Compute 4000 + 817."]
    assert sorted(answers) == sorted({PLANNED["Compute 4000 + 817."][0], PLANNED["Compute 4000 + 817."][3]})
    x_rows = [row for row in sft if row["messages"][0]["content"] == "Find x if 3x - 5 = 7."]
    assert len(x_rows) == 2  # three right samples, two distinct texts
    pairs = datasets.load_dataset(str(out), "dpo", split="train", cache_dir=hf_cache)
    by_prompt = {}
    for pair in pairs:
        by_prompt.setdefault(pair["prompt"][0]["content"], []).append(pair)
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"], p["pair_source"])
            for p in by_prompt["Compute 4000 + 817."]] == [
        (PLANNED["Compute 4000 + 817."][0], PLANNED["Compute 4000 + 817."][1], "verified")]
    assert [p["rejected"][0]["content"] for p in by_prompt["Find x if 3x - 5 = 7."]] == ["x = \\boxed{5}."]
    assert [p["rejected"][0]["content"] for p in by_prompt[CODE[0]]] == [CODE_ANSWERS[1]]

    rates = json.loads((out / "stats.json").read_text())["quality"]["pass_rates"]
    assert rates["math"] == {"items": 3, "k": 4, "pass@1": round((2 / 4 + 3 / 4 + 0) / 3, 4), "pass@k": round(2 / 3, 4),
                             "right_answers": 5}
    assert rates["code"]["pass@k"] == 1.0
    assert "referenced math items: pass@1 / pass@k" in (out / "README.md").read_text()


@pytest.mark.parametrize("fields, reason", [
    ({"instruction": "   "}, "empty_text"),
    ({"instruction": "Compute 2 + 2.", "reference": ["4"]}, "invalid_field"),
    ({"instruction": 7}, "invalid_field"),
])
def test_a_bad_given_item_is_a_recorded_rejection(fields, reason):
    record = given_item(fields, "seeds.jsonl:3", SeedsConfig())
    assert (record.status, record.reject_reason) == ("rejected", reason)


def test_a_numeric_reference_is_read_as_text_and_short_questions_are_kept():
    record = given_item({"instruction": "Compute 3 + 4.", "reference": 7, "domain": "Math"}, "f:1", SeedsConfig())
    assert (record.status, record.reference, record.domain, record.objective) == ("kept", "7", "math", True)
    assert record.referenced and record.instruction == record.seed_text == "Compute 3 + 4."
