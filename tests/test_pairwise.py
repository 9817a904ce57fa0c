"""Pairwise judging: the verdict parser on what judges write, and both orders for every pair."""
from __future__ import annotations

from typing import Sequence

import pytest

from datagen.inference.base import Completion
from rewards.pairwise import PairJudgement, PairwiseConfig, both_orders, collect, parse_verdict
from fakes import FakeLLM


class PairwiseJudge:
    """The test's judge: judges (instruction, answer of M, answer of B) triples in both orders with one model."""

    def __init__(self, llm, cfg: PairwiseConfig | None = None) -> None:
        self.llm = llm
        self.cfg = cfg or PairwiseConfig()
        self.name = f"pairwise:{llm.identity}"

    def judge(self, instructions: Sequence[str], answers_m: Sequence[str],
              answers_b: Sequence[str]) -> list[PairJudgement]:
        return collect(self.llm.generate(both_orders(self.cfg, instructions, answers_m, answers_b)))


@pytest.mark.parametrize("reply,verdict", [
    ("Verdict: A", "A"),
    ("verdict: b\nAnswer B explains the steps.", "B"),
    ("Verdict: tie", "tie"),
    ("**Verdict:** **A**", "A"),
    ("Verdict: Answer B", "B"),
    ("[[A]]", "A"),
    ("My final verdict is [[C]]", "tie"),
    ("B.", "B"),
    ("A", "A"),
    ("Answer A is better because it is correct.", "A"),
    ("I think response B is more helpful.", "B"),
    ("I prefer B.", "B"),
    ('The answer "A" is better.', "A"),
    ("B is the better answer.", "B"),
    ("A\n\nA is better.", "A"),
    ("Both answers are equally good.", "tie"),
    ("It's a tie.", "tie"),
    ("判断：A", "A"),
    ("答案B更好。", "B"),
])
def test_parser_reads_what_judges_write(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", [
    "",
    "Both answers discuss the topic.",  # no verdict
    "Verdict: A\nVerdict: B",  # contradicts itself
    "Answer A is better. Answer B is better.",
    "The answer is 42.",  # a small judge answering the question instead
    "As an AI language model I cannot decide.",
    "Answer A is better, but both are equally good.",  # a pick and a tie at once
    "A is better. B is better.",
    "A simple example of a statistical test is the F-test.",  # "A" as an article, not a verdict
])
def test_unreadable_replies_are_none_not_guessed(reply):
    assert parse_verdict(reply) is None


def test_every_pair_is_judged_in_both_orders_with_the_answers_swapped():
    requests = both_orders(PairwiseConfig(), ["Q1", "Q2"], ["m1", "m2"], ["b1", "b2"])
    assert len(requests) == 4
    texts = [r.messages[-1][1] for r in requests]
    for i, (m, b) in enumerate([("m1", "b1"), ("m2", "b2")]):
        first, second = texts[2 * i], texts[2 * i + 1]
        assert first.index(m) < first.index(b)  # M's answer shown as A
        assert second.index(b) < second.index(m)  # M's answer shown as B
    # blind: the prompt never names the models
    assert all("model" not in t.lower() and "baseline" not in t.lower() for t in texts)


def test_verdicts_are_scored_from_the_evaluated_models_side():
    judgements = collect([Completion(texts=["Verdict: A"]), Completion(texts=["Verdict: A"]),
                          Completion(texts=["Verdict: B"]), Completion(texts=["Verdict: tie"]),
                          Completion(texts=["???"]), Completion(error="timeout")])
    assert [(j.score_ab, j.score_ba) for j in judgements] == [(1.0, 0.0), (0.0, 0.5), (None, None)]
    assert judgements[2].reply_ba.startswith("(judge call failed")


def test_collect_refuses_a_pair_judged_in_one_order_only():
    with pytest.raises(ValueError):
        collect([Completion(texts=["Verdict: A"])])


def test_judge_with_a_model_sends_two_requests_per_pair():
    judge_llm = FakeLLM(["Verdict: A"])
    judgements = PairwiseJudge(judge_llm).judge(["Q"], ["m"], ["b"])
    assert len(judge_llm.calls) == 2
    assert (judgements[0].verdict_ab, judgements[0].verdict_ba) == ("A", "A")
    assert (judgements[0].score_ab, judgements[0].score_ba) == (1.0, 0.0)


def test_long_answers_are_cut_in_the_judge_prompt():
    request = both_orders(PairwiseConfig(max_answer_chars=50), ["Q"], ["x" * 500], ["y"])[0]
    assert "x" * 51 not in request.messages[-1][1] and "[...]" in request.messages[-1][1]
