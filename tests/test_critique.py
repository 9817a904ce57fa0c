"""Critique: the score parser on messy judge output, then the stage on the DirectRunner with a
fake judge — exact outputs, rejection reasons and counters."""
from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.stages.critique import (CHAT_TEMPLATE_ID, FEWSHOT_TEMPLATE_ID, TEMPLATE_VERSION, CritiqueConfig,
                              CritiqueStage, critique_request, critique_requests, read_critique)
from datagen.filters.critique_parse import ParsedCritique, mean_score, parse_critique, to_tier
from datagen.inference.base import Completion, Request, SamplingParams
from datagen.record import CRITIQUE_ASPECTS, Critique, LineageStep, Record, Response
from fakes import FakeLLM, install_fake
from stage_harness import run_transform

FULL = {"accuracy": 3, "relevance": 4, "completeness": 2, "usefulness": 3, "clarity": 4}


# the grade as the mean of five sampled aspects (a real judge's setting); the demo default is tested below
FIVE = CritiqueConfig(model="judge", grading="sampled", aspects=list(CRITIQUE_ASPECTS), min_mean=2.5)


def run_critique(records, judge, cfg=FIVE):
    model = install_fake(judge, f"judge-{id(judge)}")
    out = run_transform(records, CritiqueStage(cfg, {"judge": model}), ["critique"])
    by_seed = lambda r: r.seed_id  # noqa: E731
    return sorted(out.kept, key=by_seed), sorted(out.rejected, key=by_seed), out.counters["critique"]


def grades(accuracy, relevance, completeness, usefulness, clarity, why="ok"):
    """What the few-shot judge writes after the prefilled "Accuracy:"."""
    return (f" {accuracy}\nRelevance: {relevance}\nCompleteness: {completeness}\nUsefulness: {usefulness}\n"
            f"Clarity: {clarity}\nRationale: {why}")


# -- parser -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "Accuracy: 3/4\nRelevance: 4/4\nCompleteness: 2/4\nUsefulness: 3/4\nClarity: 4/4\nRationale: Mostly right.",
    "accuracy - 3\nrelevance - 4\ncompleteness - 2\nusefulness - 3\nclarity - 4\nreason: Mostly right.",
    "| Aspect | Score |\n|---|---|\n| Accuracy | 3 |\n| Relevance | 4 |\n| Completeness | 2 |\n"
    "| Usefulness | 3 |\n| Clarity | 4 |\n\nRationale: Mostly right.",
    "**Accuracy (1-4)**: 3\n**Relevance**: 4\n**Completeness**: 2\n**Usefulness**: 3\n**Clarity**: 4\n"
    "**Rationale**: Mostly right.",
    "准确性：3\n相关性：4\n完整性：2\n有用性：3\n清晰度：４\n理由：Mostly right.",
    'Sure! ```json\n{"accuracy": 3, "relevance": "4", "completeness": {"score": 2}, "usefulness": 3.0, '
    '"clarity": "4/4", "rationale": "Mostly right."}\n```',
    '{"scores": {"Accuracy": 3, "Relevance": 4, "Completeness": 2, "Usefulness": "good", "Clarity": 4}, '
    '"reason": "Mostly right."}',
    "Accuracy: 3 out of 4, Relevance: 4 out of 4, Completeness: 2 out of 4, Usefulness: 3 out of 4, "
    "Clarity: 4 out of 4. Rationale: Mostly right.",
])
def test_parser_reads_the_formats_judges_write(text):
    assert parse_critique(text) == ParsedCritique(FULL, "Mostly right.", "")


def test_parser_rescales_other_scales_and_drops_out_of_range_values():
    assert parse_critique("Accuracy: 10/10\nRelevance: 1/10\nCompleteness: 7/10\nClarity: 3/5").scores == {
        "accuracy": 4, "relevance": 1, "completeness": 3, "clarity": 3}
    assert parse_critique("Accuracy: 5\nRelevance: 0\nCompleteness: 3\nUsefulness: 9\nClarity: 2") == (
        ParsedCritique({"completeness": 3, "clarity": 2}, "", "only 2 aspects scored: completeness, clarity"))


def test_parser_ignores_the_echoed_format_and_reports_what_is_missing():
    assert parse_critique("Accuracy: 1-4\nRelevance: N\nClarity: <1-4>") == ParsedCritique(
        {}, "Accuracy: 1-4 Relevance: N Clarity: <1-4>", "no scores found")
    assert parse_critique("") == ParsedCritique({}, "", "empty critique")
    assert parse_critique("The answer is fine.") == ParsedCritique({}, "The answer is fine.", "no scores found")
    assert parse_critique("Accuracy: 4\nClarity: 3", min_aspects=2) == ParsedCritique(
        {"accuracy": 4, "clarity": 3}, "", "")


def test_to_tier():
    assert [to_tier(v) for v in (1, "2", 3.4, "4/4", "excellent", {"score": 2}, "7/10")] == [1, 2, 3, 4, 4, 2, 3]
    assert [to_tier(v) for v in (0, 5, "0/4", None, True, float("nan"), "x", {"note": 3})] == [None] * 8


# -- properties ---------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400),
                 st.text(alphabet=st.sampled_from(list("AccuracyRelevanceClarity准确性: -|/{}\"0123456789\n")),
                         max_size=200)))
def test_parser_never_raises_and_always_gives_scores_or_a_reason(text):
    parsed = parse_critique(text)
    assert all(aspect in CRITIQUE_ASPECTS and 1 <= tier <= 4 for aspect, tier in parsed.scores.items())
    assert parsed.problem or len(parsed.scores) >= 3
    assert isinstance(parsed.rationale, str)


_STYLES = [lambda a, n: f"{a.title()}: {n}", lambda a, n: f"**{a}**: {n}/4", lambda a, n: f"| {a} | {n} |",
           lambda a, n: f"{a} - {n}", lambda a, n: f'"{a}": {n},']


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(CRITIQUE_ASPECTS), st.integers(1, 4), min_size=3),
       st.sampled_from(_STYLES), st.sampled_from(["", "Some preamble.\n"]))
def test_parser_round_trips_scores_written_in_any_style(scores, style, preamble):
    text = preamble + "\n".join(style(aspect, tier) for aspect, tier in scores.items())
    assert parse_critique(text).scores == {a: scores[a] for a in CRITIQUE_ASPECTS if a in scores}


# -- prompts ------------------------------------------------------------------------------------
def test_fewshot_prompt_is_a_completion_and_chat_prompt_is_a_chat():
    params = SamplingParams(temperature=0.0)
    fewshot = critique_request("Q?", "### A heading\nA." + "x" * 50, CritiqueConfig(max_answer_chars=20), params)
    assert fewshot.messages == () and fewshot.prompt.endswith(
        "### Question\nQ?\n### Answer\n# A heading\nA.xxxx\n[... answer cut for length ...]\n### Grades\n"
        "Accuracy:")
    chat = critique_request("Q?", "A.", CritiqueConfig(style="chat"), params)
    assert chat.prompt is None and chat.messages[0][0] == "system" and "Question:\nQ?\n\nAnswer:\nA." in chat.messages[1][1]
    with pytest.raises(ValueError, match="critique.style must be one of fewshot, chat"):
        CritiqueConfig(style="vibes")


def test_plain_functions_judge_pairs_without_beam():
    """What a reward judge calls: requests for (question, answer) pairs, then scores and a mean."""
    cfg = CritiqueConfig(max_tokens=99, seed=7)
    requests = critique_requests([("What is 2 + 3?", "5"), ("Why?", "Because.")], cfg)
    assert [r.prompt.split("### Question\n")[-1].split("\n")[0] for r in requests] == ["What is 2 + 3?", "Why?"]
    assert requests[0].params == SamplingParams(n=1, max_tokens=99, temperature=0.0, seed=7, stop=("###", "\n\n"),
                                                logprobs=8)  # grading logprobs by default
    judged = read_critique(grades(4, 4, 3, 4, 3, "Right."), cfg)  # a few-shot judge continues "Accuracy:"
    assert (judged.scores, judged.rationale, judged.mean) == (dict(zip(CRITIQUE_ASPECTS, (4, 4, 3, 4, 3))),
                                                              "Right.", 3.6)
    unusable = read_critique(" no idea", cfg)
    assert unusable.problem == "no scores found" and unusable.mean is None
    chat = critique_requests([("Q?", "A.")], CritiqueConfig(style="chat"))[0]
    assert chat.params.stop == () and chat.messages[0][0] == "system"


# -- the stage ----------------------------------------------------------------------------------
def answered(seed, *texts):
    return Record(seed_id=seed, instruction=f"question {seed}", responses=[Response(t, model="m") for t in texts])


CANNED = {  # answer text → what the fake judge says about it
    "good answer": grades(4, 4, 3, 4, 4, "Correct and clear."),
    "weak answer": grades(2, 2, 2, 2, 2, "Vague."),
    "so-so answer": grades(3, 3, 2, 3, 3, "Fine."),
    "blunt answer": grades(4, 4, 4, 1, 4, "Correct but useless."),
    "rambling answer": " it is hard to say. I liked it.",
}


def fake_judge(request: Request):
    prompt = request.prompt or request.messages[-1][1]
    answer = prompt.rsplit("### Answer\n", 1)[1].split("\n### Grades", 1)[0]
    if answer == "server down":
        return Completion(error="HTTP 500 after 4 attempts")
    return CANNED[answer]


def test_stage_scores_each_response_chooses_the_best_and_rejects_with_exact_reasons():
    best_of_two = answered("a", "weak answer", "good answer")
    half_parsed = answered("b", "rambling answer", "so-so answer")
    all_weak = answered("c", "weak answer", "weak answer")
    unparseable = answered("d", "rambling answer")
    nothing = answered("e")
    blunt = answered("f", "blunt answer")
    failing = answered("g", "server down")
    judge = FakeLLM(fake_judge, name="judge")

    kept, rejected, counters = run_critique(
        [best_of_two, half_parsed, all_weak, unparseable, nothing, blunt, failing], judge)

    params = {"max_tokens": 128, "n": 1, "seed": 4567, "stop": ["###", "\n\n"], "temperature": 0.0, "top_p": 0.95}
    step = LineageStep("critique", "fake:judge", FEWSHOT_TEMPLATE_ID, TEMPLATE_VERSION,
                       json.dumps(params, sort_keys=True))

    def scored(rec, scores, best, crit_scores, rationale):
        responses = [dataclasses.replace(r, score=s) for r, s in zip(rec.responses, scores)]
        critique = Critique(crit_scores, rationale, "fake:judge", mean_score(crit_scores), {}, "sampled")
        return dataclasses.replace(rec, responses=responses, response=rec.responses[best].text,
                                   critique=critique, lineage=[step])

    good = dict(zip(CRITIQUE_ASPECTS, (4, 4, 3, 4, 4)))
    so_so = dict(zip(CRITIQUE_ASPECTS, (3, 3, 2, 3, 3)))
    blunt_scores = dict(zip(CRITIQUE_ASPECTS, (4, 4, 4, 1, 4)))
    assert kept == [
        scored(best_of_two, [2.0, 3.8], 1, good, "Correct and clear."),
        scored(half_parsed, [None, 2.8], 1, so_so, "Fine."),
        scored(blunt, [3.4], 0, blunt_scores, "Correct but useless."),
    ]
    assert [(r.seed_id, r.reject_stage, r.reject_reason, r.reject_detail) for r in rejected] == [
        ("c", "critique", "low_critique_score",
         "mean=2.00 accuracy=2 relevance=2 completeness=2 usefulness=2 clarity=2"),
        ("d", "critique", "critique_unparseable", "no scores found: 'Accuracy: it is hard to say. I liked it.'"),
        ("e", "critique", "no_responses", "nothing to critique"),
        ("g", "critique", "inference_failed", "HTTP 500 after 4 attempts"),
    ]
    low = rejected[0]
    assert (low.response, low.critique.mean, [r.score for r in low.responses]) == ("weak answer", 2.0, [2.0, 2.0])
    assert counters == {"in": 7, "kept": 3, "out": 3, "rejected:low_critique_score": 1,
                        "rejected:critique_unparseable": 1, "rejected:no_responses": 1,
                        "rejected:inference_failed": 1}
    assert len(judge.calls) == 9  # one request per response; none for the record without responses


def test_per_aspect_floor_and_chat_style_come_from_config():
    chat_judge = FakeLLM(lambda req: "Accuracy: 4\nRelevance: 4\nCompleteness: 4\nUsefulness: 1\nClarity: 4",
                         name="chat")
    cfg = dataclasses.replace(FIVE, style="chat", min_each=2)
    kept, rejected, counters = run_critique([answered("a", "blunt answer")], chat_judge, cfg)
    assert kept == [] and [(r.reject_reason, r.reject_detail) for r in rejected] == [
        ("low_critique_score", "mean=3.40 accuracy=4 relevance=4 completeness=4 usefulness=1 clarity=4")]
    assert rejected[0].lineage[0].template_id == CHAT_TEMPLATE_ID
    assert chat_judge.calls[0].messages[0][0] == "system"
    assert counters == {"in": 1, "rejected:low_critique_score": 1}  # counters never incremented are absent


def test_a_rationale_that_repeats_the_prompts_own_example_is_kept_out_of_the_dataset_and_counted():
    """The demo judge wrote "On topic and clear, but the sum is wrong." about a haiku and "Correct and
    clear, though brief." about most answers: the few-shot prompt's rationales, not its own."""
    copied = {"copy one": grades(4, 4, 3, 4, 4, "Correct and clear, though brief."),
              "copy two": grades(4, 4, 3, 4, 4, "on topic and clear but the sum is wrong"),
              "own words": grades(4, 4, 3, 4, 4, "Correct, though it skips the carry.")}
    judge = FakeLLM(lambda r: copied[r.prompt.rsplit("### Answer\n", 1)[1].split("\n### Grades", 1)[0]], name="cp")
    kept, rejected, counters = run_critique([answered("a", "copy one"), answered("b", "copy two"),
                                             answered("c", "own words")], judge)
    assert [(r.seed_id, r.critique.rationale, r.critique.scores["accuracy"]) for r in kept] == [
        ("a", "", 4), ("b", "", 4), ("c", "Correct, though it skips the carry.", 4)]
    assert counters["copied_rationales"] == 2 and rejected == []
    # the chat prompt's own placeholder is no rationale either
    chat = read_critique("Accuracy: 4\nRelevance: 4\nCompleteness: 4\nUsefulness: 4\nClarity: 4\n"
                         "Rationale: one sentence explaining the scores", CritiqueConfig(style="chat"))
    assert (chat.rationale, chat.copied_rationale, chat.mean) == ("", True, 4.0)
    assert read_critique(grades(4, 4, 3, 4, 3, "Right."), CritiqueConfig()).copied_rationale is False
