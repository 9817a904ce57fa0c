"""`python -m pipelines.loop`: step skipping and resuming (with stand-in steps), the config (extends,
dotted changes, one-line errors), the plan's fingerprints, the training math problems (disjoint from
the eval set, exact answers) and the closing table. The loop itself does not run in CI."""
from __future__ import annotations

import json
import re
import sys
import threading
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from datagen.config_loader import ConfigError
from datagen.readers import eval_sets
from pipelines import loop
from pipelines.looping import math_train
from pipelines.looping.loop_config import load_loop_config, step_config
from pipelines.looping.steps import DONE_FILE, LoopError, Step, run_steps
from pipelines.looping.table import write_table

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- steps

def stand_in_steps(tmp_path: Path, calls: list[str], fail: set[str] = frozenset(), prints: str = "a") -> list[Step]:
    def work(step: Step) -> dict:
        calls.append(step.name)
        if step.name in fail:
            raise RuntimeError(f"{step.name} killed")
        return {"made": step.name}

    return [Step(name, tmp_path / name, f"fp-{name}-{prints}", work) for name in ("synth", "sft", "dpo")]


def test_a_rerun_skips_finished_steps_and_resumes_the_killed_one(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError, match="sft killed"):
        run_steps(stand_in_steps(tmp_path, calls, fail={"sft"}))
    assert calls == ["synth", "sft"]
    assert (tmp_path / "synth" / DONE_FILE).is_file() and not (tmp_path / "sft" / DONE_FILE).exists()

    calls.clear()
    steps = run_steps(stand_in_steps(tmp_path, calls))
    assert calls == ["sft", "dpo"]  # synth was done: skipped; sft ran again (its trainer resumes)
    assert [s.skipped for s in steps] == [True, False, False]
    assert steps[0].summary == {"made": "synth"}
    attempts = json.loads((tmp_path / "sft" / "loop-attempts.json").read_text())
    assert attempts["attempts"] == 2

    calls.clear()
    assert all(s.skipped for s in run_steps(stand_in_steps(tmp_path, calls)))
    assert calls == []


def test_a_changed_config_stops_before_any_step_runs(tmp_path):
    calls: list[str] = []
    run_steps(stand_in_steps(tmp_path, calls))
    changed = stand_in_steps(tmp_path, calls := [], prints="b")
    with pytest.raises(LoopError, match="step synth: .* holds the output of another config"):
        run_steps(changed)
    assert calls == []


def test_a_killed_step_with_another_config_is_not_resumed(tmp_path):
    calls: list[str] = []
    with pytest.raises(RuntimeError):
        run_steps(stand_in_steps(tmp_path, calls, fail={"synth"}))
    with pytest.raises(LoopError, match="step synth"):
        run_steps(stand_in_steps(tmp_path, [], prints="b"))


def test_only_runs_the_named_steps(tmp_path):
    calls: list[str] = []
    steps = run_steps(stand_in_steps(tmp_path, calls), only=["sft"])
    assert calls == ["sft"] and [s.name for s in steps] == ["sft"]
    with pytest.raises(LoopError, match="--only: no step named eval"):
        run_steps(stand_in_steps(tmp_path, calls), only=["eval"])


def test_a_second_loop_on_the_same_output_waits_for_the_step_then_skips_it(tmp_path):
    started, release, calls = threading.Event(), threading.Event(), []

    def slow(step: Step) -> dict:
        calls.append(step.name)
        started.set()
        assert release.wait(30)
        return {}

    def steps() -> list[Step]:
        return [Step("dpo", tmp_path / "dpo", "fp", slow)]

    first = threading.Thread(target=run_steps, args=(steps(),))
    first.start()
    assert started.wait(30)
    second_result: list = []
    second = threading.Thread(target=lambda: second_result.extend(run_steps(steps())))
    second.start()
    second.join(0.5)
    assert second.is_alive()  # waiting on the first one's lock
    release.set()
    first.join(30)
    second.join(30)
    assert calls == ["dpo"] and second_result[0].skipped


# ---------------------------------------------------------------------------------------------- config

def test_extends_and_dotted_changes(tmp_path):
    variant = tmp_path / "variant.yaml"
    variant.write_text(f"extends: {ROOT / 'configs/loop/cpu.yaml'}\noutput: {tmp_path / 'out'}\n"
                       "dpo:\n  set: {sync_ref_model: true}\n")
    cfg = load_loop_config(str(variant), ["--prompts.count", "50"])
    assert cfg.output == str(tmp_path / "out") and cfg.prompts.count == 50
    assert cfg.dpo.set["sync_ref_model"] is True and cfg.dpo.set["online.num_samples"] == 8  # merged, not replaced
    base = tmp_path / "base.yaml"
    base.write_text("online:\n  ratio: 0.5\n  margin: 0.5\nreward:\n  kind: classifier\n  batch_size: 8\n")
    data = step_config(str(base), {"online.ratio": 1.0, "reward": {"kind": "math"}})
    assert data == {"online": {"ratio": 1.0, "margin": 0.5}, "reward": {"kind": "math", "batch_size": 8}}


@pytest.mark.parametrize("args, message", [
    (["--bogus", "1"], "unknown key bogus"),
    (["--dpo.set.learning_rate", "abc"], "dpo: learning_rate: expected a number"),
    (["--config", "nope.yaml"], "config file not found"),
    (["--variants", "{'a b': {}}"], "variants: name 'a b'"),
])
def test_bad_config_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    assert loop.main([*args, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_help_lists_the_keys(capsys):
    with pytest.raises(SystemExit) as exit_info:
        loop.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--dpo.set" in out and "--variants" in out and "results.md" in out


def test_plan_fingerprints_follow_what_each_step_depends_on(tmp_path):
    from pipelines.looping.work import LoopPlan

    def plan(*overrides: str) -> dict[str, str]:
        cfg = load_loop_config(str(ROOT / "configs/loop/cpu.yaml"), ["--output", str(tmp_path), *overrides])
        return {s.name: s.fingerprint for s in LoopPlan(cfg, cfg.model, {}).steps}

    base = plan()
    assert list(base) == ["prompts", "synth", "sft", "dpo", "eval-sft", "eval-dpo", "eval-dpo-raw"]
    assert plan() == base  # stable
    fewer = plan("--prompts.referenced", "100")  # the referenced seeds feed synth, so everything after it
    assert [k for k in base if base[k] == fewer[k]] == []
    lr = plan("--dpo.set.learning_rate", "1e-6")
    assert [k for k in base if base[k] != lr[k]] == ["dpo", "eval-dpo", "eval-dpo-raw"]
    variant = plan("--variants", "{tr-dpo: {sync_ref_model: true}}")
    assert {k: v for k, v in variant.items() if k in base} == base
    assert set(variant) - set(base) == {"dpo-tr-dpo", "eval-dpo-tr-dpo"}


def test_a_reward_model_step_scores_the_dpo_steps_that_name_no_reward_model(tmp_path, monkeypatch):
    from pipelines.looping.work import LoopPlan

    variants = ("{proxy: {reward: {kind: classifier, model: ''}, raw_checkpoint: true}, "
                "own: {reward: {kind: classifier, model: smollm2-135m}}}")

    def plan(*overrides: str) -> LoopPlan:
        cfg = load_loop_config(str(ROOT / "configs/loop/cpu.yaml"), [
            "--output", str(tmp_path), "--rm.config", "configs/posttrain/rm_tiny.yaml", "--variants", variants,
            *overrides])
        return LoopPlan(cfg, cfg.model, {})

    base = plan()
    steps = {s.name: s for s in base.steps}
    assert list(steps) == ["prompts", "synth", "sft", "rm", "dpo", "dpo-proxy", "dpo-own", "eval-sft", "eval-dpo",
                           "eval-dpo-proxy", "eval-dpo-own", "eval-dpo-raw", "eval-dpo-proxy-raw"]
    other = {s.name: s.fingerprint for s in plan("--rm.set.learning_rate", "1e-6").steps}
    assert [k for k in steps if steps[k].fingerprint != other[k]] == ["rm", "dpo-proxy", "eval-dpo-proxy",
                                                                      "eval-dpo-proxy-raw"]
    ran = []
    monkeypatch.setattr(base, "command", lambda argv, step: ran.append(argv))
    for name in ("rm", "dpo-proxy", "dpo-own"):
        steps[name].run(steps[name])
    written = {name: yaml.safe_load((tmp_path / name / "loop-config.yaml").read_text()) for name in ("rm", "dpo-proxy",
                                                                                                       "dpo-own")}
    assert written["rm"]["dataset"] == str(tmp_path / "synth") and ran[0][1].endswith("posttrain/rm.py")
    assert written["dpo-proxy"]["reward"]["model"] == str(tmp_path / "rm")
    assert written["dpo-own"]["reward"]["model"] == "smollm2-135m"
    assert "raw_checkpoint" not in written["dpo-proxy"]
    with pytest.raises(ConfigError, match="raw_checkpoint: expected true or false"):
        load_loop_config(None, ["--variants", "{x: {raw_checkpoint: 3}}"])


def proxy_step(directory: Path, gold: list[float], proxy: list[float], **config) -> Path:
    """A finished reward-model DPO step: its config and one stats line per round."""
    directory.mkdir(parents=True)
    (directory / "loop-config.yaml").write_text(yaml.safe_dump({"model": {"name": "sft"}, **config}))
    (directory / "dpo_summary.json").write_text("{}")
    (directory / "rounds").mkdir()
    for k, (g, r) in enumerate(zip(gold, proxy)):
        stats = {"kind": "stats", "online/round": k, "reward/mean": r, "gold/accuracy": g,
                 "gold/chosen_accuracy": 0.9 - 0.1 * k, "gold/rejected_accuracy": 0.2,
                 "online/kl_to_reference": 0.01 * k, "online/answer_chars_mean": 100 + 10 * k}
        (directory / "rounds" / f"round-{k:03d}.jsonl").write_text(json.dumps(stats) + "\n")
    return directory


def test_the_table_puts_the_proxy_against_gold_for_every_reward_model_dpo(tmp_path):
    rising = [0.2, 0.4, 0.6, 0.3, 0.3, 0.3]  # 3-round means .2 .3 .4 .433 .4 .3: peak − last = 13.3 pts
    no_ema = proxy_step(tmp_path / "dpo-proxy", rising, [0.1, 0.5, 0.9, 1.3, 1.7, 2.1],
                        ema={"enabled": True, "export": True}, online={"margin": 0.0})
    (no_ema / "checkpoint-12").mkdir()
    tr = proxy_step(tmp_path / "dpo-tr", [0.2] * 6, [0.1] * 6, ema={"enabled": False}, online={"margin": 0.0},
                    sync_ref_model=True)
    math_dpo = training_step(tmp_path / "dpo", "sft", offline=10)  # a math-reward DPO: no gold logged, not in the section
    start = [0.0] * 40
    evals = {"dpo": fake_eval(tmp_path / "eval-dpo", [1.0] * 10 + [0.0] * 30, start, 0.5, policy_dir=math_dpo),
             "dpo-proxy": fake_eval(tmp_path / "eval-dpo-proxy", [1.0] * 14 + [0.0] * 26, start, 0.5, policy_dir=no_ema),
             "dpo-proxy-raw": fake_eval(tmp_path / "eval-dpo-proxy-raw", [1.0] * 12 + [0.0] * 28, start, 0.5,
                                        policy_dir=no_ema / "checkpoint-12"),
             "dpo-tr": fake_eval(tmp_path / "eval-dpo-tr", [1.0] * 8 + [0.0] * 32, start, 0.5, policy_dir=tr)}
    write_table(tmp_path, evals, [], "python -m pipelines.loop")
    section = json.loads((tmp_path / "results.json").read_text())["proxy_vs_gold"]
    assert section["baseline"] == "dpo-proxy-raw"  # the raw weights of the export run ran no EMA
    rows = section["rows"]
    assert set(rows) == {"dpo-proxy", "dpo-proxy-raw", "dpo-tr"}
    assert rows["dpo-proxy"]["emas"] == ["weight EMA export"] and rows["dpo-tr"]["emas"] == ["TR-DPO reference"]
    assert rows["dpo-proxy"]["gold_peak_to_final"] == pytest.approx((0.4 + 0.6 + 0.3) / 3 - 0.3)
    assert rows["dpo-tr"]["gold_peak_to_final"] == pytest.approx(0.0)
    assert rows["dpo-proxy"]["math_vs_baseline"]["value"] == pytest.approx(0.05)  # 14 vs 12 of 40
    assert rows["dpo-tr"]["math_vs_baseline"]["value"] == pytest.approx(-0.1)
    assert "math_vs_baseline" not in rows["dpo-proxy-raw"]
    proxy = rows["dpo-proxy"]  # first and last: means over 3 rounds
    assert (proxy["gold_first"], proxy["gold_last"]) == (pytest.approx(0.4), pytest.approx(0.3))
    assert (proxy["proxy_first"], proxy["proxy_last"]) == (pytest.approx(0.5), pytest.approx(1.7))
    assert (proxy["edge_first"], proxy["edge_last"]) == (pytest.approx(0.6), pytest.approx(0.3))
    assert (proxy["kl_last"], proxy["chars_first"], proxy["chars_last"]) == (pytest.approx(0.04), 110, 140)
    text = (tmp_path / "results.md").read_text()
    assert "## Proxy reward against gold" in text and "| dpo-tr | TR-DPO reference |" in text
    assert "| 40% → 30% | 13.3 pts | +60 → +30 pts |" in text
    assert (tmp_path / "charts" / "proxy_vs_gold.png").stat().st_size > 5000


# ---------------------------------------------------------------------------------------------- prompts

def test_the_prompts_step_writes_the_seed_corpus_and_the_first_problems_as_referenced_seeds(tmp_path):
    from datagen import SHIPPED_SEEDS
    from pipelines.looping.work import LoopPlan

    cfg = load_loop_config(str(ROOT / "configs/loop/cpu.yaml"),
                           ["--output", str(tmp_path), "--prompts.count", "40", "--prompts.referenced", "12"])
    plan = LoopPlan(cfg, cfg.model, {})
    prompts, synth = plan.steps[0], plan.steps[1]
    summary = prompts.run(prompts)
    seeds = tmp_path / "prompts" / "seeds"
    assert sorted(p.name for p in seeds.iterdir()) == ["referenced_math.jsonl", SHIPPED_SEEDS.name]
    assert (seeds / SHIPPED_SEEDS.name).read_bytes() == SHIPPED_SEEDS.read_bytes()
    referenced = [json.loads(line) for line in (seeds / "referenced_math.jsonl").read_text().splitlines()]
    problems = [json.loads(line) for line in (tmp_path / "prompts" / "math_train.jsonl").read_text().splitlines()]
    assert summary["referenced_seeds"] == len(referenced) == 12
    assert [(r["instruction"], r["reference"]) for r in referenced] == [(p["prompt"], p["reference"]) for p in problems[:12]]
    assert {r["domain"] for r in referenced} == {"math"}
    assert synth.fingerprint != LoopPlan(load_loop_config(
        str(ROOT / "configs/loop/cpu.yaml"), ["--output", str(tmp_path), "--prompts.referenced", "0"]),
        cfg.model, {}).steps[1].fingerprint


def test_training_math_problems_are_disjoint_from_the_eval_set_and_exact():
    eval_questions = [item["question"] for item in eval_sets.load("math")]
    rows, dropped = math_train.disjoint_from_eval(math_train.make_problems(600, seed=1), eval_questions)
    # the generator's own wording never equals an eval question, but its short arithmetic can restate one
    assert dropped["same_question"] == dropped["shared_ngram"] == 0 and len(rows) + dropped["restated_question"] == 600
    assert 0 < dropped["restated_question"] < 60
    assert rows == math_train.disjoint_from_eval(math_train.make_problems(600, seed=1), eval_questions)[0]
    assert [r["level"] for r in math_train.make_problems(8, seed=1)] == [1, 2, 3, 4, 1, 2, 3, 4]
    eval_grams = set().union(*(math_train.ngrams(q, 8) for q in eval_questions))
    for row in rows:
        assert not (math_train.ngrams(row["prompt"], 8) & eval_grams) or len(
            math_train.normalized_words(row["prompt"])) < 8
        if row["kind"] == "arithmetic":  # e.g. "Work out 17 × 6."
            a, op, b = re.fullmatch(r"\D+ (\d+) ([-+×÷]) (\d+)\.", row["prompt"]).groups()
            value = {"+": Fraction(a) + Fraction(b), "-": Fraction(a) - Fraction(b), "×": Fraction(a) * Fraction(b),
                     "÷": Fraction(a) / Fraction(b)}[op]
            assert math_train.fmt(value) == row["reference"]


def test_the_overlap_check_drops_eval_questions():
    rows = [{"prompt": "What is 3 + 4?", "reference": "7"},
            {"prompt": "Quinn has 5 coins and gets 9 more. How many coins does Quinn have now?", "reference": "14"},
            {"prompt": "Compute 3 + 4.", "reference": "7"},  # the eval question restated: trains on its answer
            {"prompt": "Compute 3 + 5.", "reference": "8"}, {"prompt": "Compute 4 + 3.", "reference": "7"}]
    kept, dropped = math_train.disjoint_from_eval(rows, ["What is 3 + 4?", "Ava has 2 coins and gets 9 more. "
                                                                          "How many coins does Ava have now?"])
    assert [r["prompt"] for r in kept] == ["Compute 3 + 5.", "Compute 4 + 3."]
    assert dropped == {"same_question": 1, "shared_ngram": 1, "restated_question": 1}


# ---------------------------------------------------------------------------------------------- table

def fake_eval(directory: Path, model: list[float], baseline: list[float], win: float, consistency: float = 0.8,
              bias: float = 0.1, policy_dir: Path | None = None) -> Path:
    """An eval step's outputs; `policy_dir`: the model it evaluated (its loop-config.yaml names it)."""
    from pipelines.evaluation import stats

    directory.mkdir(parents=True)
    if policy_dir is not None:
        (directory / "loop-config.yaml").write_text(f"models:\n  policy: {{backend: vllm, model: {policy_dir}}}\n")
    est = lambda v: stats.accuracy(v).to_dict()  # noqa: E731
    results = {"tasks": {
        "math": {"model": est(model), "baseline": est(baseline), "model_by_level": {"1": est(model)},
                 "baseline_by_level": {"1": est(baseline)},
                 "difference": stats.paired_difference(model, baseline).to_dict()},
        "judge": {"judge": "smollm2-135m", "win_rate": {"value": win, "low": win - 0.1, "high": win + 0.1, "n": 8},
                  "length_controlled_win_rate": {"value": win, "low": win - 0.2, "high": win + 0.2, "n": 8},
                  "position_bias": {"value": bias, "low": bias - 0.1, "high": bias + 0.1, "n": 8},
                  "order_consistency": {"value": consistency, "low": consistency - 0.2, "high": consistency + 0.2,
                                        "n": 8}}}}
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "items.jsonl").write_text("".join(
        json.dumps({"task": "math", "id": f"m{i}", "correct_model": m, "correct_baseline": b}) + "\n"
        for i, (m, b) in enumerate(zip(model, baseline))))
    return directory


def test_the_table_reports_each_policy_against_the_start_and_dpo_against_sft(tmp_path):
    start = [1.0] * 10 + [0.0] * 30
    sft = [1.0] * 12 + [0.0] * 28
    dpo = [1.0] * 20 + [0.0] * 20
    evals = {"sft": fake_eval(tmp_path / "eval-sft", sft, start, 0.55),
             "dpo": fake_eval(tmp_path / "eval-dpo", dpo, start, 0.6)}
    steps = [Step("sft", tmp_path / "sft", "x", lambda s: {}, seconds=61.0, load=3.0)]
    assert write_table(tmp_path, evals, steps, "python -m pipelines.loop")["policies"] == 3
    text = (tmp_path / "results.md").read_text()
    rows: dict[str, str] = {}
    for line in text.splitlines():  # the first table (the by-level table repeats the names)
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert "25.0% [" in rows["start"] and "50.0% [" in rows["dpo"]
    assert "+25.0 pts" in rows["dpo"] and "+20.0 pts" in rows["dpo"]  # vs start, vs SFT
    assert "60.0% [50.0, 70.0]" in rows["dpo"] and "(smollm2-135m)" in text
    assert "| sft | 1 min 01 s | 3.0 | ran |" in text
    assert (tmp_path / "charts" / "policies.png").stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["policies"]["dpo"]["math_vs_sft"]["value"] == pytest.approx(0.2)


def table_rows(text: str) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():  # the first table only
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells)
    return rows


def test_the_table_gives_the_difference_detectable_at_n_for_every_comparison(tmp_path):
    start = [1.0] * 10 + [0.0] * 30
    sft = [1.0] * 12 + [0.0] * 28  # the start's 10 plus 2
    dpo = [1.0] * 20 + [0.0] * 20  # the start's 10 plus 10 (SFT's 12 plus 8)
    evals = {"sft": fake_eval(tmp_path / "eval-sft", sft, start, 0.55),
             "dpo": fake_eval(tmp_path / "eval-dpo", dpo, start, 0.6)}
    write_table(tmp_path, evals, [], "python -m pipelines.loop")
    rows = table_rows((tmp_path / "results.md").read_text())
    head = rows["policy"]
    vs_start, vs_sft = head.index("detectable at n"), head.index("detectable at n (vs SFT)")
    # by hand, (1.959964 + 0.841621) * sqrt(psi / 40):
    #   sft vs start: psi = 2/40,  MDE = 2.801585 * 0.0353553 = 0.099050, observed 0.05 -> not cleared
    #   dpo vs start: psi = 10/40, MDE = 2.801585 * 0.0790569 = 0.221484, observed 0.25 -> cleared
    #   dpo vs sft:   psi = 8/40,  MDE = 2.801585 * 0.0707107 = 0.198101, observed 0.20 -> cleared
    assert rows["sft"][vs_start] == "±9.9 pts: not cleared" and rows["sft"][vs_sft] == "—"
    assert rows["dpo"][vs_start] == "±22.1 pts: cleared" and rows["dpo"][vs_sft] == "±19.8 pts: cleared"
    assert rows["start"][vs_start] == "—"
    saved = json.loads((tmp_path / "results.json").read_text())["policies"]
    assert saved["sft"]["math_vs_start_detectable"]["mde"] == pytest.approx(0.099050, abs=2e-6)
    assert saved["dpo"]["math_vs_start_detectable"]["mde"] == pytest.approx(0.221484, abs=2e-6)
    assert saved["dpo"]["math_vs_sft_detectable"]["mde"] == pytest.approx(0.198101, abs=2e-6)
    assert saved["dpo"]["math_vs_sft_detectable"]["clears"] is True


@pytest.mark.parametrize("consistency,bias,shown", [(0.0, 0.5, "no signal"), (0.9, 0.05, "60.0% [50.0, 70.0]"),
                                                    (0.8, -0.35, "no signal")])
def test_the_table_prints_no_signal_for_a_judge_that_cannot_judge(tmp_path, consistency, bias, shown):
    start, dpo = [1.0] * 10 + [0.0] * 30, [1.0] * 20 + [0.0] * 20
    evals = {"dpo": fake_eval(tmp_path / "eval-dpo", dpo, start, 0.6, consistency=consistency, bias=bias)}
    write_table(tmp_path, evals, [], "python -m pipelines.loop")
    text = (tmp_path / "results.md").read_text()
    rows = table_rows(text)
    judge_col = next(i for i, h in enumerate(rows["policy"]) if h.startswith("judge win rate"))
    assert rows["dpo"][judge_col] == shown and (rows["dpo"][judge_col + 1] == "no signal") == (shown == "no signal")
    assert ("Judge smollm2-135m: no signal (" in text) == (shown == "no signal")
    saved = json.loads((tmp_path / "results.json").read_text())["policies"]["dpo"]
    assert saved["win_rate"]["value"] == 0.6 and saved["judge_signal"] is (shown != "no signal")


def training_step(directory: Path, started_from: str, sft_rows: int | None = None,
                  offline: int | None = None, round_rows: list[list[dict]] | None = None) -> Path:
    """A finished SFT (data_report.json) or DPO (dpo_summary.json, data_report.json, rounds/) step directory."""
    directory.mkdir(parents=True)
    (directory / "loop-config.yaml").write_text(f"model:\n  name: {started_from}\n")
    if sft_rows is not None:
        (directory / "data_report.json").write_text(json.dumps({"train_rows": sft_rows, "eval_rows": 3}))
    if offline is not None:
        (directory / "data_report.json").write_text(json.dumps({"train_rows": offline}))
        (directory / "dpo_summary.json").write_text("{}")
    for k, rows in enumerate(round_rows or []):
        (directory / "rounds").mkdir(exist_ok=True)
        lines = [{"kind": "stats"}, {"kind": "sample", "prompt": "x"}] + [{"kind": "train_row", **r} for r in rows]
        (directory / "rounds" / f"round-{k:03d}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return directory


def test_the_dose_response_chart_puts_accuracy_against_the_training_rows_of_each_policy(tmp_path):
    pair = lambda i, src: {"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}", "source": src}  # noqa: E731
    sft = training_step(tmp_path / "sft", "smollm2-moe", sft_rows=120)
    sft2 = training_step(tmp_path / "sft-r2", str(sft), sft_rows=80)  # a second expert-iteration round
    # DPO: 2 rounds, 5 distinct pairs (p0 and p1 offline pairs repeat across rounds), 19 offline available
    dpo = training_step(tmp_path / "dpo", str(sft2), offline=19, round_rows=[
        [pair(0, "offline"), pair(1, "offline"), pair(2, "online")],
        [pair(0, "offline"), pair(3, "online"), pair(4, "online"), pair(1, "offline")]])
    (dpo / "checkpoint-16").mkdir()
    offline_only = training_step(tmp_path / "dpo-off", str(sft2), offline=19)  # no rounds: its offline pairs
    start = [1.0] * 10 + [0.0] * 30
    evals = {"sft": fake_eval(tmp_path / "eval-sft", [1.0] * 12 + [0.0] * 28, start, 0.5, policy_dir=sft),
             "sft-r2": fake_eval(tmp_path / "eval-sft-r2", [1.0] * 14 + [0.0] * 26, start, 0.5, policy_dir=sft2),
             "dpo": fake_eval(tmp_path / "eval-dpo", [1.0] * 20 + [0.0] * 20, start, 0.5, policy_dir=dpo),
             "dpo-raw": fake_eval(tmp_path / "eval-dpo-raw", [1.0] * 16 + [0.0] * 24, start, 0.5,
                                  policy_dir=dpo / "checkpoint-16"),
             "dpo-off": fake_eval(tmp_path / "eval-dpo-off", [1.0] * 11 + [0.0] * 29, start, 0.5,
                                  policy_dir=offline_only)}
    write_table(tmp_path, evals, [], "python -m pipelines.loop")
    assert (tmp_path / "charts" / "dose_response.png").stat().st_size > 5000
    points = {p["policy"]: p for p in json.loads((tmp_path / "results.json").read_text())["dose_response"]}
    expected = {"start": (0, 0, 0.25, []), "sft": (120, 0, 0.30, ["sft"]), "sft-r2": (200, 0, 0.35, ["sft", "sft-r2"]),
                "dpo": (200, 5, 0.50, ["sft", "sft-r2", "dpo"]), "dpo-raw": (200, 5, 0.40, ["sft", "sft-r2", "dpo"]),
                "dpo-off": (200, 19, 0.275, ["sft", "sft-r2", "dpo-off"])}
    assert set(points) == set(expected)
    for name, (rows, pairs, accuracy, chain) in expected.items():
        p = points[name]
        assert (p["sft_rows"], p["dpo_pairs"], p["training_rows"]) == (rows, pairs, rows + pairs), name
        assert p["math"]["value"] == pytest.approx(accuracy) and p["lineage"] == chain, name
        assert p["math"]["low"] < accuracy < p["math"]["high"]  # its interval travels with it
    text = (tmp_path / "results.md").read_text()
    assert "| dpo | start → sft → sft-r2 → dpo | 200 | 5 | 50.0% [" in text


def test_a_failed_step_reports_the_commands_own_error_line(tmp_path):
    from pipelines.looping.commands import run_logged

    script = ("import sys; print('working'); print('error: vLLM server exited before it was ready; last log lines:'); "
              "print('RuntimeError: Engine core initialization failed'); sys.exit(2)")
    with pytest.raises(LoopError) as failure:
        run_logged([sys.executable, "-c", script], tmp_path / "log.txt", "synth", every=5)
    assert failure.value.exit_code == 2
    assert str(failure.value).startswith("step synth failed (exit 2): error: vLLM server exited before it was ready")
    assert "working" in (tmp_path / "log.txt").read_text()
