"""Grades from logprobs (G-Eval) and the judge check on the shipped calibration pairs: parsers and
routing with a fake judge (exact values and reasons); the real SmolLM2 path is in test_filters_vllm.py."""
from __future__ import annotations

import collections
import dataclasses
import json
import math

import pytest

from datagen.filters import calibration
from datagen.stages.critique import CritiqueConfig, CritiqueStage, read_critique
from datagen.stages.judge_check import JudgeCheckFailed, enforce_min_auc, judge_check
from datagen.filters.critique_parse import expected_scores
from datagen.inference.base import Completion, Request
from datagen.record import Consistency, Record, Response
from fakes import FakeLLM, install_fake
from stage_harness import run_transform


def tok(text, top=None):
    """A generated token; `top` maps alternatives to probabilities."""
    top = top or {text: 1.0}
    return {"token": text, "logprob": math.log(top.get(text, 1.0)),
            "top": {t: math.log(p) for t, p in top.items()}}


def fewshot_tokens(accuracy_top, rest=(4, 4, 3, 3)):
    """What SmolLM2's tokenizer makes of ' 1\nRelevance: 4\n...' after the prefilled 'Accuracy:'."""
    tokens = [tok(" "), tok(max(accuracy_top, key=accuracy_top.get), accuracy_top), tok("\n")]
    for name, tier in zip(("Rele", "Complete", "Use", "Clar"), rest):
        suffix = {"Rele": "vance", "Complete": "ness", "Use": "fulness", "Clar": "ity"}[name]
        tokens += [tok(name), tok(suffix), tok(":"), tok(" "), tok(str(tier)), tok("\n")]
    return tokens


def test_expected_score_from_the_probabilities_of_1_to_4():
    tokens = fewshot_tokens({"1": 0.6, "4": 0.3, "\n": 0.1})
    assert expected_scores(tokens, prefix="Accuracy:") == {
        "accuracy": 2.0, "relevance": 4.0, "completeness": 4.0, "usefulness": 3.0, "clarity": 3.0}
    # a tier missing from the alternatives counts 0; tokens like " 3" and Chinese aspect names work
    chat = [tok("准确性"), tok("："), tok(" 3", {" 3": 0.5, " 2": 0.5}), tok("\n"), tok("Accuracy"), tok(": "),
            tok("1", {"1": 1.0})]
    assert expected_scores(chat) == {"accuracy": 2.5}  # the first score position of an aspect wins
    assert expected_scores([tok("Score"), tok(": "), tok("3")]) == {}


def test_read_critique_uses_logprobs_only_when_asked_and_given():
    text = " 1\nRelevance: 4\nCompleteness: 4\nUsefulness: 3\nClarity: 3"
    completion = Completion(texts=[text], logprobs=[fewshot_tokens({"1": 0.6, "4": 0.3, "\n": 0.1})])
    parsed = read_critique(completion, CritiqueConfig())
    assert parsed.scores["accuracy"] == 1 and parsed.expected["accuracy"] == 2.0
    assert parsed.grade(["accuracy"]) == 2.0 and parsed.grade(["accuracy"], use_expected=False) == 1.0
    assert read_critique(completion, CritiqueConfig(grading="sampled")).expected == {}
    assert read_critique(Completion(texts=[text]), CritiqueConfig()).expected == {}  # a backend without logprobs
    with pytest.raises(ValueError, match="critique.grading must be one of logprobs, sampled"):
        CritiqueConfig(grading="vibes")
    with pytest.raises(ValueError, match=r"critique.aspects: \['tone'\]"):
        CritiqueConfig(aspects=["tone"])


def judged(accuracy: dict[str, float]) -> Completion:
    text = f" {max(accuracy, key=accuracy.get)}\nRelevance: 4\nCompleteness: 4\nUsefulness: 3\nClarity: 3"
    return Completion(texts=[text], finish_reasons=["stop"], logprobs=[fewshot_tokens(accuracy)])


def test_stage_grades_by_expected_accuracy_and_critiques_only_candidates():
    """A verified item: the judge sees its verified answers only; the proven-wrong one is never chosen."""
    verdicts = ["verified", "wrong", "verified", "unverified"]
    record = Record(seed_id="m", domain="math", instruction="What is 6 x 7?", objective=True,
                    responses=[Response(f"answer {i}", verdict=v) for i, v in enumerate(verdicts)],
                    consistency=Consistency(method="math", outcome="verified"))
    plain = Record(seed_id="p", instruction="Why?", responses=[Response("answer 0")])
    tiers = {"answer 0": {"2": 0.5, "3": 0.5}, "answer 2": {"3": 0.9, "4": 0.1}}
    judge = FakeLLM(lambda r: judged(tiers[r.prompt.rsplit("### Answer\n", 1)[1].split("\n")[0]]), name="judge")
    model = install_fake(judge, "judge-logprobs")
    cfg = CritiqueConfig(model="judge", min_mean=2.6)
    out = run_transform([record, plain], CritiqueStage(cfg, {"judge": model}), ["critique"])
    assert [r.prompt.rsplit("### Answer\n", 1)[1].split("\n")[0] for r in judge.calls] == [
        "answer 0", "answer 2", "answer 0"]
    assert all(r.params.logprobs == 8 for r in judge.calls)
    kept = out.kept[0]
    assert kept.response == "answer 2" and [r.score for r in kept.responses] == [2.5, None, 3.1, None]
    assert (kept.critique.mean, kept.critique.grading, kept.critique.expected["accuracy"]) == (3.1, "logprobs", 3.1)
    assert [(r.reject_reason, r.reject_detail) for r in out.rejected] == [
        ("low_critique_score", "mean=2.50 accuracy=2.50 relevance=4 completeness=4 usefulness=3 clarity=3")]


def test_no_candidate_answer_is_a_reason():
    record = Record(seed_id="w", instruction="2+2?", responses=[Response("5", verdict="wrong")],
                    consistency=Consistency(outcome="verified"))
    out = run_transform([record], CritiqueStage(CritiqueConfig(model="j"), {"j": install_fake(FakeLLM(), "j0")}),
                        ["critique"])
    assert [(r.reject_reason, r.reject_detail) for r in out.rejected] == [
        ("no_candidates", "no answer may be chosen (verdicts ['wrong'])")]


# -- the judge check ---------------------------------------------------------------------------------
def test_shipped_calibration_pairs_cover_every_domain_in_english_and_chinese():
    pairs = calibration.load_pairs()
    assert len(pairs) >= 40 and len({p.id for p in pairs}) == len(pairs)
    cells = collections.Counter((p.domain, p.lang) for p in pairs)
    assert {d for d, _ in cells} == {"math", "code", "science", "humanities", "general"}
    assert all(cells[(d, lang)] >= 3 for d in ("math", "code", "science", "humanities", "general")
               for lang in ("en", "zh"))
    assert all(p.good != p.bad for p in pairs)


def test_auc_counts_ties_and_ungraded_answers_half():
    assert calibration.auc([3, 2, 2, None], [1, 3, 2, 1]) == 0.5  # win, loss, tie, ungraded
    assert calibration.auc([4, 4], [1, 1]) == 1.0
    assert calibration.unpaired_auc([3, 1], [2, 2]) == 0.5


def pair_judge(good_tiers, bad_tiers):
    answers = {p.good: good_tiers for p in calibration.load_pairs()} | {p.bad: bad_tiers for p in calibration.load_pairs()}

    def respond(request: Request) -> Completion:
        answer = request.prompt.rsplit("### Answer\n", 1)[1].rsplit("\n### Grades", 1)[0]
        return judged(answers[answer])
    return FakeLLM(respond, name="calibrated")


def test_judge_check_measures_logprob_and_sampled_grades_on_the_same_calls():
    # sampled digits always 3 (a coin: 0.5); the probabilities still lean the right way
    check = judge_check(CritiqueConfig(), pair_judge({"3": 0.6, "4": 0.4}, {"3": 0.7, "2": 0.3}))
    pairs = len(calibration.load_pairs())
    assert (check["pairs"], check["grading"], check["aspects"], check["auc"], check["auc_sampled"],
            check["auc_logprobs"], check["weak"], check["unparsed"]) == (
        pairs, "logprobs", ["accuracy"], 1.0, 0.5, 1.0, False, 0)
    assert check["per_aspect"] == {"accuracy": 1.0, "relevance": 0.5, "completeness": 0.5, "usefulness": 0.5,
                                   "clarity": 0.5}
    assert set(check["by_domain"]) == {"math", "code", "science", "humanities", "general"}
    assert check["model"] == "fake:calibrated"


def test_a_coin_judge_is_reported_and_min_auc_stops_the_run():
    check = judge_check(CritiqueConfig(grading="sampled"), pair_judge({"3": 1.0}, {"3": 1.0}))
    assert (check["auc"], check["auc_logprobs"], check["weak"]) == (0.5, None, True)
    assert calibration.warning_line(check).startswith(
        "WARNING: the critique judge scored 0.50 AUC on 50 calibration pairs (0.5 = a coin): its critique "
        "filters nothing meaningful.")
    enforce_min_auc(check, CritiqueConfig())  # min_auc 0: never stops
    with pytest.raises(JudgeCheckFailed) as err:
        enforce_min_auc(check, CritiqueConfig(min_auc=0.7))
    assert str(err.value) == ("critique judge AUC 0.50 on 50 calibration pairs is below critique.min_auc 0.7: "
                              "stopped before any stage ran")


def test_bad_calibration_files_are_clear(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"id": "x", "domain": "math", "lang": "en", "question": "q", "good": "a"}\n')
    with pytest.raises(calibration.CalibrationError, match=r"pairs.jsonl:1: needs non-empty bad"):
        calibration.load_pairs(path)
    with pytest.raises(calibration.CalibrationError, match="judge calibration file not found"):
        calibration.load_pairs(tmp_path / "none.jsonl")
    assert dataclasses.fields(calibration.CalibrationPair)[-1].name == "flaw"


# -- the judge check cannot be passed by answer length (issue 20, point 1) -------------------------
def test_the_good_answer_is_the_shorter_one_in_about_half_of_every_domain_and_language():
    pairs = calibration.load_pairs()
    for key in ("domain", "lang"):
        for value in {getattr(p, key) for p in pairs}:
            picked = [p for p in pairs if getattr(p, key) == value]
            shorter = sum(len(p.good) < len(p.bad) for p in picked)
            assert 0.4 <= shorter / len(picked) <= 0.6, (key, value, shorter, len(picked))
    cells = collections.Counter((p.domain, p.lang) for p in pairs)
    for cell, n in cells.items():
        shorter = sum(len(p.good) < len(p.bad) for p in pairs if (p.domain, p.lang) == cell)
        assert n // 2 <= shorter <= (n + 1) // 2, (cell, shorter, n)
    # a known-bad answer that beats its good one on length is long: at least twice the good one
    assert all(len(p.bad) >= 2 * len(p.good) for p in pairs if len(p.good) < len(p.bad))


def length_judge(longest: int = 400):
    """Grades every answer by its length alone: the longer, the likelier an accuracy of 4."""
    def respond(request: Request) -> Completion:
        answer = request.prompt.rsplit("### Answer\n", 1)[1].rsplit("\n### Grades", 1)[0]
        p4 = min(0.98, 0.01 + len(answer) / longest)
        return judged({"4": p4, "1": 1 - p4})
    return FakeLLM(respond, name="length")


def knowing_judge():
    return pair_judge({"4": 0.8, "3": 0.2}, {"1": 0.7, "2": 0.3})


def test_the_check_reports_the_length_and_first_graded_baselines_beside_the_judge():
    check = judge_check(CritiqueConfig(), knowing_judge())
    assert check["auc"] == 1.0
    # prefer-the-longer on the same pairs; first-graded: the answer of a pair the check grades first
    # (it alternates, so a grader that drifts with call order gains nothing); a constant grader: 0.5
    assert check["baselines"] == {"longer": 0.5, "longer_unpaired": check["baselines"]["longer_unpaired"],
                                  "first_graded": 0.5, "constant": 0.5}
    assert 0.4 <= check["baselines"]["longer_unpaired"] <= 0.6
    assert check["by_length"] == {"good_shorter": 1.0, "good_longer": 1.0}
    judge = knowing_judge()
    judge_check(CritiqueConfig(), judge)
    answers = [r.prompt.rsplit("### Answer\n", 1)[1].rsplit("\n### Grades", 1)[0] for r in judge.calls]
    pairs = calibration.load_pairs()
    assert answers[:4] == [pairs[0].good, pairs[0].bad, pairs[1].bad, pairs[1].good]


def test_a_judge_that_grades_by_length_fails_the_gate_and_one_that_knows_the_answers_passes():
    check = judge_check(CritiqueConfig(), length_judge())
    assert 0.45 <= check["auc"] <= 0.55 and check["baselines"]["longer"] == 0.5
    assert check["by_length"] == {"good_shorter": 0.0, "good_longer": 1.0}
    with pytest.raises(JudgeCheckFailed) as err:
        enforce_min_auc(check, CritiqueConfig(min_auc=0.75))
    assert str(err.value).startswith(f"critique judge AUC {check['auc']:.2f} on 50 calibration pairs is below "
                                     "critique.min_auc 0.75")
    # even with a lenient min_auc, not beating the length baseline stops the run
    with pytest.raises(JudgeCheckFailed) as err:
        enforce_min_auc(check, CritiqueConfig(min_auc=0.3))
    assert str(err.value) == (f"critique judge AUC {check['auc']:.2f} on 50 calibration pairs is not above 0.50, "
                              "what preferring the longer answer scores on the same pairs "
                              "(critique.must_beat_length): stopped before any stage ran")
    enforce_min_auc(check, CritiqueConfig(min_auc=0.3, must_beat_length=False))
    enforce_min_auc(check, CritiqueConfig())  # min_auc 0: never stops
    enforce_min_auc(judge_check(CritiqueConfig(), knowing_judge()), CritiqueConfig(min_auc=0.75))


def test_on_pairs_where_the_good_answer_is_longer_the_length_gate_is_what_stops_a_length_judge(tmp_path):
    """The old shipped pairs (good answer longer in 45 of 50): a length judge cleared min_auc 0.75."""
    path = tmp_path / "long_good.jsonl"
    rows = [{"id": f"x{i}", "domain": "math", "lang": "en", "question": f"What is {i} + {i}?",
             "good": f"{i} + {i} = {2 * i}, because adding a number to itself doubles it." if i % 10 else f"{2 * i}",
             "bad": f"It is {2 * i + 1}." if i % 10 else f"It is {2 * i + 1}, as adding a number to itself..."}
            for i in range(1, 21)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = CritiqueConfig(calibration_file=str(path), min_auc=0.75)
    check = judge_check(cfg, length_judge())
    assert check["auc"] == check["baselines"]["longer"] == 0.9
    with pytest.raises(JudgeCheckFailed, match=r"is not above 0.90, what preferring the longer answer scores"):
        enforce_min_auc(check, cfg)
    enforce_min_auc(check, dataclasses.replace(cfg, must_beat_length=False))  # min_auc alone let it through
    card = calibration.describe(check)
    assert "prefer-the-longer 0.90" in card and "first-graded 0.50" in card
    assert ["baseline: prefer the longer answer", "0.90"] in calibration.table_rows(check)


# -- critique rationales that copy the prompt's own example (issue 20, point 8) -----------------------
def test_rationales_copied_from_the_prompt_examples_are_counted_in_the_judge_check():
    def respond(request: Request) -> Completion:
        answer = request.prompt.rsplit("### Answer\n", 1)[1].rsplit("\n### Grades", 1)[0]
        why = "Correct and clear, though brief." if len(answer) % 3 else "It names the right gas."
        text = f" 3\nRelevance: 4\nCompleteness: 3\nUsefulness: 3\nClarity: 4\nRationale: {why}"
        return Completion(texts=[text], finish_reasons=["stop"])
    check = judge_check(CritiqueConfig(grading="sampled"), FakeLLM(respond, name="copier"))
    answers = [a for p in calibration.load_pairs() for a in (p.good, p.bad)]
    assert check["copied_rationales"] == sum(1 for a in answers if len(a) % 3) > 0
    assert f"{check['copied_rationales']} of 100 rationales repeat the prompt's own example" in \
        calibration.describe(check)
