"""Response generation: routing checks, n samples in one request, per-model partitions on Beam."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.inference.base import Completion
from datagen.inference.registry import ModelConfig, install
from datagen.record import Record, Response
from datagen.stages.respond import (STAGE, TEMPLATE_ID, RespondConfig, RespondFn, RespondStage, build_prompt,
                             check_routing, route_for)
from datagen.config_loader import ConfigError
from fakes import FAKE_BACKEND, FakeLLM
from stage_harness import run_transform

GENERAL = ModelConfig(backend=FAKE_BACKEND, model="general-test")
MATHY = ModelConfig(backend=FAKE_BACKEND, model="math-test")
MODELS = {"default": GENERAL, "mathy": MATHY}


def run(records, cfg, llms):
    for model, llm in llms.items():
        install(MODELS[model], llm)
    out = run_transform(records, RespondStage(cfg, MODELS), [STAGE])
    by_text = lambda r: r.instruction  # noqa: E731
    return sorted(out.kept, key=by_text), sorted(out.rejected, key=by_text), out.counters[STAGE]


# -- routing and prompts ------------------------------------------------------------------------
def test_routing_fallback_and_config_errors():
    routing = {"math": "mathy", "*": "default"}
    assert route_for("math", routing) == "mathy" and route_for("poetry", routing) == "default"
    assert route_for("poetry", {"math": "mathy"}) is None
    with pytest.raises(ConfigError, match="domain 'poetry' has no route and there is no '\\*' fallback"):
        RespondStage(RespondConfig(routing={"math": "mathy"}), MODELS, domains=["math", "poetry"])
    check_routing(RespondConfig(routing={"math": "mathy"}), ["math"])  # every domain routed: no error
    with pytest.raises(ValueError, match="n_objective and n_subjective must be at least 1"):
        RespondConfig(n_objective=0)


def test_prompts_ask_for_extractable_answers():
    assert build_prompt(Record("s", domain="math", instruction="What is 2+3?")) == (
        "What is 2+3?\n\nSolve it step by step, then give the final answer as \\boxed{answer}.")
    assert build_prompt(Record("s", domain="code", instruction="Write add(a, b).", tests="assert add(1, 2) == 3")) == (
        "Write add(a, b).\n\nAnswer with one Python code block.\nIt must pass these tests:\nassert add(1, 2) == 3")
    assert build_prompt(Record("s", domain="science", instruction="Why is the sky blue?")) == "Why is the sky blue?"
    assert build_prompt(Record("s", domain="math", instruction="一年有多少天？")).endswith("\\boxed{答案}。")


def test_referenced_math_is_asked_as_written_and_cooler():
    """A math item with a reference is asked exactly as written, at the referenced temperature; an unreferenced
    one and a referenced code item keep their hints and the general temperature."""
    cfg = RespondConfig(temperature=0.7, referenced_temperature=0.3)
    items = [Record("s", domain="math", instruction="Compute 4 + 5.", reference="9"),
             Record("s", domain="math", instruction="Compute 4 + 6."),
             Record("t", domain="code", instruction="t", seed_text="t", tests="assert f() == 1")]
    llm = FakeLLM(lambda req: ["9"] * req.params.n, name="mathy")
    run(items, cfg, {"default": llm})
    sent = sorted((c.messages[-1][1], c.params.temperature) for c in llm.calls)
    assert sent[0] == ("Compute 4 + 5.", 0.3)
    assert sent[1][0].startswith("Compute 4 + 6.\n\nSolve it step by step") and sent[1][1] == 0.7
    assert "It must pass these tests" in sent[2][0] and sent[2][1] == 0.3
    hinted = RespondConfig(hint_referenced_math=True)
    assert build_prompt(items[0], hinted.hint_referenced_math).endswith("\\boxed{answer}.")
    with pytest.raises(ValueError, match="referenced_temperature"):
        RespondConfig(referenced_temperature=-1)


# -- the stage ----------------------------------------------------------------------------------
def general_answers(req):
    prompt = req.messages[-1][1]
    if "capital" in prompt:
        return Completion(texts=["Paris.", "  ", "It is Paris."], finish_reasons=["stop", "stop", "length"])
    if "silence" in prompt:
        return ["", " \n"]
    return [f"answer {i}" for i in range(req.params.n)]


def test_stage_routes_samples_and_rejects():
    records = [Record("s", domain="math", instruction="What is 2+3?", objective=True),
               Record("s", domain="humanities", instruction="Write a poem about rain."),
               Record("s", domain="general", instruction="What is the capital of France?", objective=True),
               Record("s", domain="general", instruction="Describe silence."),
               Record("s", domain="general", instruction="   ")]
    mathy = FakeLLM(lambda req: ["5", "\\boxed{5}", "5", "6"], name="mathy")
    general = FakeLLM(general_answers, name="general")
    cfg = RespondConfig(routing={"math": "mathy", "*": "default"}, n_objective=4, n_subjective=2)
    kept, rejected, counters = run(records, cfg, {"mathy": mathy, "default": general})

    assert [(c.params.n, c.messages[-1][1][:12]) for c in mathy.calls] == [(4, "What is 2+3?")]
    assert sorted((c.params.n, c.messages[-1][1]) for c in general.calls) == [
        (2, "Describe silence."), (2, "Write a poem about rain."), (4, "What is the capital of France?")]
    assert [(r.instruction, r.responses) for r in kept] == [
        ("What is 2+3?", [Response("5", "fake:mathy", "stop"), Response("\\boxed{5}", "fake:mathy", "stop"),
                          Response("5", "fake:mathy", "stop"), Response("6", "fake:mathy", "stop")]),
        ("What is the capital of France?", [Response("Paris.", "fake:general", "stop"),
                                            Response("It is Paris.", "fake:general", "length")]),
        ("Write a poem about rain.", [Response("answer 0", "fake:general", "stop"),
                                      Response("answer 1", "fake:general", "stop")])]
    step = kept[0].lineage[-1]
    assert (step.stage, step.model, step.template_id) == ("respond", "fake:mathy", TEMPLATE_ID)
    assert '"n": 4' in step.params_json and kept[0].id == records[0].id
    assert [(r.instruction, r.reject_stage, r.reject_reason, r.reject_detail) for r in rejected] == [
        ("   ", "respond", "empty_instruction", "nothing to answer"),
        ("Describe silence.", "respond", "empty_response", "2 samples, all empty")]
    assert counters == {"in": 5, "kept": 3, "out": 3, "rejected:empty_instruction": 1,
                        "rejected:empty_response": 1}


def test_unrouted_domain_is_rejected_and_counted():
    cfg = RespondConfig(routing={"math": "mathy"})
    records = [Record("s", domain="math", instruction="What is 1+1?"), Record("s", domain="poetry",
                                                                              instruction="Write a sonnet.")]
    kept, rejected, counters = run(records, cfg, {"mathy": FakeLLM(["2"], name="mathy")})
    assert [r.instruction for r in kept] == ["What is 1+1?"]
    assert [(r.reject_reason, r.reject_detail) for r in rejected] == [
        ("no_route", "domain 'poetry' not in respond.routing (math)")]
    assert counters == {"in": 2, "kept": 1, "out": 1, "rejected:no_route": 1}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=5), st.lists(st.sampled_from(["stop", "length", ""]), max_size=5))
def test_complete_never_raises(texts, reasons):
    fn = RespondFn(RespondConfig(), GENERAL)
    fn.llm = FakeLLM(name="p")
    out = fn.complete(Record("s", instruction="Why?"), [Completion(texts=texts, finish_reasons=reasons)])
    if any(t.strip() for t in texts):
        assert [r.text for r in out.responses] == [t.strip() for t in texts if t.strip()]
    else:
        assert out.reject_reason == "empty_response"
