"""The training views from verified answers (DPO provenance, SFT of objective items) and the
data-quality section of stats.json, the card and the report."""
from __future__ import annotations

import json

from datagen.output.finalize import dpo_row, finalize, sft_row
from datagen.output.quality import QualityTally, distinct_n, distribution, markdown_rows
from datagen.record import Consistency, Critique, Record, Response
from test_output import run_pipeline


def row(responses, outcome="verified", response="right 1", objective=True):
    return {"id": "i", "domain": "math", "instruction": "What is 6 x 7?", "response": response,
            "objective": objective, "consistency": {"outcome": outcome},
            "responses": [{"text": t, "score": s, "verdict": v} for t, s, v in responses]}


def test_a_proven_wrong_answer_becomes_the_rejected_of_a_verified_pair():
    pair = dpo_row(row([("right 1", 2.4, "verified"), ("wrong", None, "wrong"), ("right 2", 2.1, "verified")]))
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"], pair["pair_source"]) == (
        "right 1", "wrong", "verified")
    assert (pair["score_chosen"], pair["score_rejected"]) == (2.4, None)


def test_otherwise_the_critique_ranks_and_never_chooses_a_wrong_answer():
    all_right = row([("right 1", 2.4, "verified"), ("right 2", 2.1, "verified")])
    assert (dpo_row(all_right)["rejected"][0]["content"], dpo_row(all_right)["pair_source"]) == ("right 2", "critique")
    untested = row([("crash", 3.9, "wrong"), ("runs", 2.0, "unverified"), ("runs too", 1.5, "unverified")],
                   outcome="unverifiable", response="runs")
    pair = dpo_row(untested)
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"], pair["pair_source"]) == (
        "runs", "runs too", "critique")  # the crash scored best, but a proven-wrong answer is never chosen
    assert dpo_row(row([("right 1", 2.0, "verified")])) is None


def test_sft_takes_only_verified_answers_of_verified_items():
    assert sft_row(row([("right 1", 2.4, "verified")]))["messages"][1]["content"] == "right 1"
    assert sft_row(row([("right 1", 2.4, "unverified")])) is None
    assert sft_row(row([("runs", 2.0, "unverified")], outcome="unverifiable", response="runs")) is not None
    assert sft_row(row([("essay", 2.0, "")], outcome="subjective", response="essay", objective=False)) is not None


def test_a_critique_pair_needs_a_margin_above_the_judges_noise():
    close = row([("a", 2.388, "unverified"), ("b", 2.385, "unverified")], outcome="unverifiable", response="a")
    assert dpo_row(close)["pair_source"] == "critique"  # no noise measured: any margin
    assert dpo_row(close, min_margin=0.05) is None  # 0.003 apart on a judge whose grades spread 0.05
    wide = row([("a", 2.9, "unverified"), ("b", 2.1, "unverified")], outcome="unverifiable", response="a")
    assert dpo_row(wide, min_margin=0.05)["chosen"][0]["content"] == "a"


def test_quality_figures():
    tally = QualityTally()
    tally.add_kept({"instruction": "a b c a b", "response": "x" * 10, "objective": True,
                    "consistency": {"outcome": "verified"}})
    tally.add_kept({"instruction": "a b d", "response": "x" * 30, "objective": True,
                    "consistency": {"outcome": "unverifiable"}})
    tally.add_kept({"instruction": "e f", "response": "x" * 20, "objective": False,
                    "consistency": {"outcome": "subjective"}})
    tally.add_rejected({"reject_stage": "decontam", "reject_reason": "contaminated_paraphrase",
                        "reject_detail": "code HumanEval/64: instruction restates the item's task"})
    verdicts = lambda *vs: [{"verdict": v} for v in vs]  # noqa: E731
    tally.add_referenced({"domain": "math", "consistency": {"method": "reference"},
                          "responses": verdicts("verified", "wrong", "unverified", "verified")})
    tally.add_referenced({"domain": "math", "consistency": {"method": "reference"},  # a reject: none right
                          "responses": verdicts("wrong", "wrong", "wrong", "wrong")})
    tally.add_referenced({"domain": "math", "consistency": {"method": "math"},  # majority vote: no reference
                          "responses": verdicts("verified", "verified")})
    tally.add_pair({"pair_source": "critique", "score_chosen": 2.5, "score_rejected": 2.25})
    tally.add_pair({"pair_source": "verified", "score_chosen": None, "score_rejected": None})
    stages = {"dedup": {"rejected": {"near_duplicate": 4}}}
    domains = {"math": {"kept": 2, "rejected": 6}, "code": {"kept": 0, "rejected": 3}}
    judge = {"auc": 0.83, "grading": "logprobs", "pairs": 50, "weak": False, "per_aspect": {}}
    summary = tally.summary(stages, domains, judge, {"verified": 1, "critique": 2})
    assert summary == {
        "yield_by_domain": {"math": 0.25, "code": 0.0},
        "judge": {"auc": 0.83, "grading": "logprobs", "pairs": 50, "weak": False},
        "verification": {"kept": 2, "verified": 1, "unverifiable": 1, "share_verified": 0.5,
                         "outcomes": {"subjective": 1, "unverifiable": 1, "verified": 1}},
        "answer_chars": {"n": 3, "min": 10, "p10": 10, "median": 20, "p90": 30, "max": 30, "mean": 20.0},
        "diversity": {"distinct_1": 0.6, "distinct_2": 0.714, "distinct_3": 1.0, "instructions": 3},
        "duplicates_removed": 4,
        "contamination": {"hits": 1, "by_reason": {"contaminated_paraphrase": 1}, "by_benchmark": {"code": 1}},
        "dpo_pairs": {"critique": 2, "verified": 1},
        "pair_margins": {"critique": {"n": 1, "min": 0.25, "p10": 0.25, "median": 0.25, "p90": 0.25, "max": 0.25}},
        "pass_rates": {"math": {"items": 2, "k": 4, "pass@1": 0.25, "pass@k": 0.5, "right_answers": 2}},
    }
    rows = dict(markdown_rows(summary))
    assert rows["referenced math items: pass@1 / pass@k (k=4)"].startswith("25.0% / 50.0% over 2 items")
    assert rows["objective items verified"] == "1 of 2 kept (50%); 1 unverifiable, judged as subjective"
    assert rows["contamination hits"] == "1 (contaminated_paraphrase: 1, code: 1)"
    assert rows["critique judge AUC (calibration pairs)"] == "0.83 on 50 pairs (logprobs grades)"
    assert distinct_n([], 2) is None and distribution([]) == {"n": 0}


def test_stats_card_and_report_carry_judge_check_and_quality(tmp_path):
    verified = Record(seed_id="v", domain="math", instruction="What is 6 x 7?", objective=True, response="42",
                      responses=[Response("42", score=2.5, verdict="verified"), Response("41", verdict="wrong")],
                      consistency=Consistency(method="math", outcome="verified"),
                      critique=Critique({"accuracy": 3}, mean=2.5))
    essay = Record(seed_id="e", domain="humanities", instruction="Write a haiku about rain.", response="Rain.",
                   responses=[Response("Rain.", score=2.4), Response("No.", score=1.9)],
                   consistency=Consistency(method="skipped", outcome="subjective"))
    run_pipeline(tmp_path, [verified, essay])
    check = {"pairs": 50, "grading": "sampled", "aspects": ["accuracy"], "auc": 0.48, "auc_unpaired": 0.5,
             "per_aspect": {"accuracy": 0.48}, "auc_sampled": 0.48, "auc_logprobs": None, "auc_all_aspects": 0.5,
             "by_domain": {"math": 0.5}, "unparsed": 0, "mean_good": 2.0, "mean_bad": 2.0, "weak": True,
             "model": "vllm:smollm2-135m"}
    finalize(str(tmp_path), {"gate": {"in": 2, "kept": 2, "out": 2, "rejected": {}}}, {}, 1.0, judge_check=check)
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["judge_check"] == check and stats["quality"]["dpo_pairs"] == {"critique": 1, "verified": 1}
    assert stats["quality"]["verification"]["share_verified"] == 1.0
    card = (tmp_path / "README.md").read_text()
    assert "## Data quality" in card and "## Judge check" in card
    assert "> **WARNING: the critique judge scored 0.48 AUC on 50 calibration pairs" in card
    assert "**0.48** with sampled grades of accuracy (sampled digits 0.48, the mean of all five aspects 0.50)" in card
    html = (tmp_path / "report" / "index.html").read_text()
    assert "<h2>Data quality</h2>" in html and "WARNING: the critique judge scored 0.48" in html


def test_grade_noise_is_the_judges_spread_within_a_known_quality():
    from datagen.filters.calibration import grade_noise

    # good answers graded 2 and 4 (sample variance 2), bad ones all 1 (variance 0): pooled sqrt((2 + 0) / 2) = 1
    assert grade_noise([2.0, 4.0, None], [1.0, 1.0, 1.0]) == 1.0
    assert grade_noise([3.0], [None]) is None  # one grade shows no spread
