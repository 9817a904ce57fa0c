"""`python -m pipelines.eval`: bad input in one line, complete outputs, both orders judged.

Routing and bookkeeping run on test doubles injected through the registry (tests/fakes.py); the
real paths run at the end: the embedded SmolLM2 through transformers, and through a vLLM server.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from datagen.readers import eval_sets
from datagen.inference.base import Request
from fakes import FakeLLM, install_fake
from pipelines import eval as eval_cli
from pipelines.evaluation import EvalConfig, evaluate

LIMIT = 6


@pytest.mark.parametrize("args,message", [
    (["--model", "smollm2-135m", "--tasks", "math,trivia"], "unknown task 'trivia'"),
    (["--model", "no-such-model", "--tasks", "math"], "unknown model 'no-such-model'"),
    (["--model", "smollm2-135m", "--tasks", "math", "--limit", "0"], "would be empty"),
    (["--model", "smollm2-135m", "--tasks", "judge"], "needs a judge and a baseline"),
    (["--model", "smollm2-135m", "--tasks", ","], "no task given"),
    (["--tasks", "math"], "which model to evaluate"),
    (["--model", "smollm2-135m", "--math.nope", "1"], "unknown key"),
    (["--model", "smollm2-135m", "--stats.power", "1.5"], "stats.power: expected a number between 0 and 1"),
])
def test_bad_input_is_one_clear_line_and_exit_2(args, message, capsys):
    assert eval_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_model_that_cannot_be_loaded_is_one_line_and_exit_2(tmp_path, capsys):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # no weights, no tokenizer
    args = ["--model", str(broken), "--tasks", "math", "--limit", "1", "--backend", "transformers", "--no_cache",
            "--output", str(tmp_path / "out")]
    assert eval_cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot load model {broken}" in err


def test_the_shipped_config_loads_and_names_its_roles():
    from datagen.config_loader import load_config

    path = Path(__file__).resolve().parents[1] / "configs/eval/cpu.yaml"
    cfg = load_config(EvalConfig, path, ["--models.policy.backend", "transformers"])
    assert cfg.chosen_tasks() == ["math", "code", "judge"]
    assert cfg.models["policy"].backend == "transformers" and cfg.models["start"] == cfg.models["judge"]


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as stop:
        eval_cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--baseline", "--judge", "--reward", "--tasks", "--limit", "--output", "--config",
                   "--models.<name>.backend", "--answers.math_max_tokens", "--pairwise.max_tokens"):
        assert option in out


# -- test doubles -------------------------------------------------------------------------------
def user_text(request: Request) -> str:
    return request.messages[-1][1]


def policy(good: bool):
    """Answers math right on every item (good) or every other item, code with the canonical solution
    (good) or a stub, open instructions at length (good) or briefly."""
    math_items = {item["question"]: (i, item["answer"]) for i, item in enumerate(eval_sets.load("math", LIMIT))}
    code_items = {item["prompt"]: item for item in eval_sets.load("code", LIMIT)}

    def answer(request: Request) -> str:
        text = user_text(request)
        if text in math_items:
            i, gold = math_items[text]
            return f"The answer is {gold}." if good or i % 2 else "The answer is 123456."
        for prompt, item in code_items.items():
            if prompt in text:
                body = item["canonical_solution"] if good else "    return None\n"
                return f"```python\n{prompt}{body}```"
        return "A careful, complete answer. " * (8 if good else 1)
    return answer


def longer_answer_judge(request: Request) -> str:
    """A judge that prefers the longer answer: blind, so it must read both from the prompt."""
    text = user_text(request)
    first = re.search(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]", text, re.S).group(1)
    second = re.search(r"\[Answer B\]\n(.*?)\n\nReply with", text, re.S).group(1)
    return "Verdict: A" if len(first) > len(second) else "Verdict: B" if len(second) > len(first) else "Verdict: tie"


class LengthReward:
    name = "length"

    def score(self, prompts, responses, references=None):
        return [len(r) / 100 for r in responses]


@pytest.fixture
def fakes():
    doubles = {"policy": FakeLLM(policy(True), "policy"), "start": FakeLLM(policy(False), "start"),
               "judge": FakeLLM(longer_answer_judge, "judge")}
    return doubles, {name: install_fake(llm, name) for name, llm in doubles.items()}


def test_every_task_writes_complete_outputs(fakes, tmp_path):
    doubles, models = fakes
    cfg = EvalConfig(model="policy", baseline="start", judge="judge", reward="length", limit=LIMIT,
                     tasks=["math", "code", "judge", "reward"], output=str(tmp_path), models=models)
    cfg.cache.enabled = False
    results = evaluate(cfg, reward_scorer=LengthReward())
    tasks = results["tasks"]
    assert tasks["math"]["model"]["value"] == 1.0 and tasks["math"]["baseline"]["value"] == 0.5
    assert tasks["math"]["difference"]["value"] == 0.5 and tasks["math"]["model"]["n"] == LIMIT
    assert tasks["code"]["model"]["value"] == 1.0 and tasks["code"]["baseline"]["value"] == 0.0
    judge = tasks["judge"]
    assert judge["win_rate"]["value"] == 1.0 and judge["order_consistency"]["value"] == 1.0
    assert judge["position_bias"]["value"] == 0.0 and judge["verdicts"]["unreadable"] == 0
    assert tasks["reward"]["difference"]["value"] > 0
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["tasks"]["judge"]["win_rate"] == judge["win_rate"]
    for figure in (on_disk["tasks"]["math"]["model"], judge["win_rate"], judge["length_controlled_win_rate"]):
        assert {"value", "low", "high", "n"} <= set(figure)
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    for task in ("math", "code", "judge", "reward"):
        assert len([r for r in rows if r["task"] == task]) == LIMIT
    for row in rows:
        if row["task"] == "judge":
            assert row["answer_model"] and row["answer_baseline"] and row["reply_ab"] and row["reply_ba"]
            assert row["verdict_ab"] == "A" and row["verdict_ba"] == "B"  # the longer answer, in both orders
        if row["task"] == "math":
            assert {"prompt", "reference", "answer_model", "correct_model", "answer_baseline", "correct_baseline"} <= set(row)
    html = (tmp_path / "report.html").read_text()
    for picture in ("accuracy.png", "judge.png", "lengths.png", "reward.png"):
        assert (tmp_path / picture).stat().st_size > 5000 and picture in html


def test_every_pair_is_judged_in_both_orders(fakes, tmp_path):
    doubles, models = fakes
    cfg = EvalConfig(model="policy", baseline="start", judge="judge", limit=LIMIT, tasks=["judge"],
                     output=str(tmp_path), models=models)
    cfg.cache.enabled = False
    evaluate(cfg)
    prompts = [user_text(r) for r in doubles["judge"].calls]
    assert len(prompts) == 2 * LIMIT
    long_answer, short_answer = policy(True)(Request.chat("x")), policy(False)(Request.chat("x"))
    for item in eval_sets.load("judge", LIMIT):
        shown = [p for p in prompts if f"[Instruction]\n{item['instruction']}\n" in p]
        assert len(shown) == 2
        orders = {p.index(long_answer) < p.index(short_answer + "\n\n[Answer B]") for p in shown}
        assert orders == {True, False}  # once with the model first, once with the baseline first


def test_cli_with_a_models_config_prints_one_summary_line(fakes, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"models": {name: {"backend": "fake", "model": name}
                                                 for name in ("policy", "judge")}}))
    out = tmp_path / "out"
    code = eval_cli.main(["--config", str(config), "--model", "policy", "--baseline", "policy", "--judge", "judge",
                          "--tasks", "math,judge", "--limit", "4", "--output", str(out), "--no_cache"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eval policy vs policy: math 100.0%") and "judge win rate 50.0%" in lines[0]
    assert (out / "results.json").is_file() and (out / "report.html").is_file()


def test_offline_mode_only_when_every_model_is_local(tmp_path):
    local = eval_cli.parse_args(["--model", "smollm2-135m", "--baseline", str(tmp_path), "--judge", "smollm2-135m"])
    assert eval_cli.all_models_local(local)
    hub = eval_cli.parse_args(["--model", "smollm2-135m", "--baseline", "HuggingFaceTB/SmolLM2-360M-Instruct"])
    assert not eval_cli.all_models_local(hub)  # a hub id must stay downloadable: no HF_HUB_OFFLINE


# -- an eval that can see a gain (issue 18) and failed answers in the judge task (issue 20) -------------
def first_answer_judge(request: Request) -> str:
    """A judge that always prefers whichever answer it is shown first (SmolLM2-135M's habit)."""
    return "Verdict: A"


def run_judge(models: dict, tmp_path: Path, tasks=("math", "judge")) -> dict:
    cfg = EvalConfig(model="policy", baseline="start", judge="judge", limit=LIMIT, tasks=list(tasks),
                     output=str(tmp_path), models=models)
    cfg.cache.enabled = False
    return evaluate(cfg)


def test_math_reports_the_difference_detectable_at_n_and_whether_it_clears_it(fakes, tmp_path):
    from pipelines.evaluation.report import summary_line

    results = run_judge(fakes[1], tmp_path, ("math",))
    det = results["tasks"]["math"]["detectable"]
    # policy right on all 6, start on 3 (every other): 3 discordant items, all the model's.
    # psi = 3/6; MDE = (1.959964 + 0.841621) * sqrt(0.5 / 6) = 2.801585 * 0.288675 = 0.808749
    assert (det["n"], det["model_only"], det["baseline_only"]) == (6, 3, 0)
    assert det["mde"] == pytest.approx(0.808749, abs=2e-6)
    assert det["observed"] == pytest.approx(0.5) and det["clears"] is False
    assert det["n_needed"] == 1570  # (2.801585 / 0.05)**2 * 0.5 = 1569.8 items for a +5 pt gain
    # planning figure: at n=6, both at the start's 50%, independent: psi 0.5 again
    assert results["tasks"]["math"]["planned"]["mde"] == pytest.approx(0.808749, abs=2e-6)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["tasks"]["math"]["detectable"] == det
    html = (tmp_path / "report.html").read_text()
    assert "detectable at n" in html and "±80.9 pts" in html and "does not clear it" in html
    assert "needs n ≥ 1570 (raise n)" in html
    line = summary_line(results, str(tmp_path))
    assert "Δ +50.0 pts" in line and "detectable ±80.9 pts: not cleared" in line


@pytest.mark.parametrize("judge,signal", [(first_answer_judge, False), (longer_answer_judge, True)])
def test_a_judge_without_signal_prints_no_signal_instead_of_a_win_rate(judge, signal, tmp_path, capsys):
    models = {"policy": install_fake(FakeLLM(policy(True), "policy"), "policy"),
              "start": install_fake(FakeLLM(policy(False), "start"), "start"),
              "judge": install_fake(FakeLLM(judge, "judge"), "judge")}
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"models": {name: {"backend": "fake", "model": name} for name in models}}))
    out = tmp_path / "out"
    assert eval_cli.main(["--config", str(config), "--model", "policy", "--baseline", "start", "--judge", "judge",
                          "--tasks", "judge", "--limit", str(LIMIT), "--output", str(out), "--no_cache"]) == 0
    line = capsys.readouterr().out
    judged = json.loads((out / "results.json").read_text())["tasks"]["judge"]
    html = (out / "report.html").read_text()
    assert judged["signal"] is signal
    assert judged["win_rate"]["value"] == (0.5 if not signal else 1.0)  # the numbers stay in results.json
    if signal:
        assert judged["no_signal_reason"] == "" and "judge win rate 100.0% [" in line and "no signal" not in line
        assert "<td>win rate</td><td>100.0%</td>" in html and "no signal" not in html
    else:
        assert "order consistency 0.00 < 0.6" in judged["no_signal_reason"] and "+0.50 beyond ±0.3" in judged["no_signal_reason"]
        assert "judge win rate no signal (order consistency 0.00 < 0.6" in line and "50.0%" not in line
        assert "<td>win rate</td><td>no signal</td>" in html
        assert "<td>length-controlled win rate</td><td>no signal</td>" in html


def test_failed_answers_are_left_out_of_the_judged_pairs_and_counted(tmp_path):
    from datagen.inference.base import Completion
    from pipelines.evaluation.report import summary_line

    instructions = [item["instruction"] for item in eval_sets.load("judge", LIMIT)]
    good = policy(True)

    def flaky(request: Request):  # the policy's call fails on the first two instructions
        if user_text(request) in instructions[:2]:
            return Completion(error="HTTP 500: engine died")
        return good(request)

    judge = FakeLLM(longer_answer_judge, "judge")
    models = {"policy": install_fake(FakeLLM(flaky, "policy"), "policy"),
              "start": install_fake(FakeLLM(policy(False), "start"), "start"),
              "judge": install_fake(judge, "judge")}
    results = run_judge(models, tmp_path, ("judge",))
    j = results["tasks"]["judge"]
    assert j["pairs"] == {"total": LIMIT, "judged": LIMIT - 2, "left_out": 2,
                          "failed_answers": {"model": 2, "baseline": 0}}
    assert len(judge.calls) == 2 * (LIMIT - 2)  # never sent to the judge
    assert not any(instructions[0] in user_text(r) or instructions[1] in user_text(r) for r in judge.calls)
    # an empty answer would have lost to the start's short one in both orders: left out, the rest are all wins
    assert j["win_rate"]["value"] == 1.0 and j["win_rate"]["n"] == LIMIT - 2
    assert j["verdicts"]["judged"] == 2 * (LIMIT - 2) and j["verdicts"]["model_first"]["loss"] == 0
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text().splitlines()]
    left = [r for r in rows if r["task"] == "judge" and "left_out" in r]
    assert [r["prompt"] for r in left] == instructions[:2]
    assert all(r["left_out"] == "failed answer: model" and "verdict_ab" not in r for r in left)
    assert left[0]["error"] == {"model": "HTTP 500: engine died"}
    assert "2 of 6 pairs left out because an answer failed (model 2, baseline 0)" in (tmp_path / "report.html").read_text()
    assert "2 pairs left out (failed answers)" in summary_line(results, str(tmp_path))
