"""Evolution: output parsing, the failed-evolution checks, then the steps on Beam: the clarify gate
(instructions that lack their context), expansion, and harder rounds that climb."""
from __future__ import annotations

import re

import apache_beam as beam
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.stages.evolve import (TEMPLATE_VERSION, EvolveConfig, EvolveStage, build_prompt, check_evolution, check_step,
                            parse_evolved, stage_names)
from datagen.inference.base import Request
from datagen.inference.registry import ModelConfig
from datagen.record import EvolutionStep, Record
from datagen.config_loader import ConfigError, load_config
from pipelines.synth_config import SynthConfig
from fakes import FAKE_BACKEND, FakeLLM, install_fake
from stage_harness import run_transform

PIECES = ["Sure! Here is the rewritten question:", "Answer:", "1. ", "2. ", "```", "\n", "\n\n", ":", "?", "？",
          "Instruction: ", "This version adds", "\\boxed{2}", "12", "3.5", "勾股定理", "Why is the sky blue"]
MESSY = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), max_size=30).map("".join)
REASONS = {"", "evolution_copy", "evolution_lost_information", "evolution_became_answer", "evolution_unparseable"}


def run(records, cfg, llm, namespaces=("evolve_clarify",)):
    model = install_fake(llm, "evolve-test")
    out = run_transform(records, EvolveStage(cfg, {"default": model}), namespaces)
    by_text = lambda r: r.instruction  # noqa: E731
    return sorted(out.kept, key=by_text), sorted(out.rejected, key=by_text), out.counters


def instruction_in(prompt: str) -> str:
    return re.search(r"(?:Instruction|Question): (.*)\n\n", prompt).group(1)


# -- parsing and checks -------------------------------------------------------------------------
def test_parse_evolved_strips_chatter_labels_answers_and_extra_candidates():
    assert parse_evolved("Sure! Here is the rewritten instruction:\n\nFind the area of a 6 cm by 4 cm "
                         "rectangle.\n\nThis version adds units.") == "Find the area of a 6 cm by 4 cm rectangle."
    assert parse_evolved("Here is the harder task: Compute 3+4, then square it.") == "Compute 3+4, then square it."
    assert parse_evolved("1. Find x if 2x=4.\n2. Find y if 3y=9.") == "Find x if 2x=4."
    assert parse_evolved('Rewritten instruction:\n"What is 2+2?"\nAnswer: 4') == "What is 2+2?"
    assert parse_evolved("Instruction: Explain photosynthesis\nto a child.") == "Explain photosynthesis to a child."
    assert parse_evolved("```\nWrite a haiku about rain.\n```") == "Write a haiku about rain."
    assert parse_evolved("Sure!") == "" and parse_evolved("") == ""


CFG = EvolveConfig()


@pytest.mark.parametrize("operation,before,after,reason", [
    ("clarify", "Why do plants need sunlight?", "Why do plants need sunlight to make their food?", ""),
    ("clarify", "What is the boiling point of water?", "What is the boiling point of water?", "evolution_copy"),
    ("harder", "How many legs does a spider have?", "A spider has eight legs.", "evolution_became_answer"),
    ("harder", "How many legs does a spider have?", "The answer is: how many? Eight.", "evolution_became_answer"),
    ("harder", "A train travels 120 km in 2 hours. What is its speed?", "What is the speed of a train?",
     "evolution_lost_information"),
    ("clarify", "Describe the causes of the French Revolution.", "Describe an event in detail, please.",
     "evolution_lost_information"),
    ("clarify", "Name three primary colors.", "ok", "evolution_unparseable"),
    ("expand", "What is a will?", "What is a will?", "evolution_copy"),
    ("expand", "What is a will?", "Explain what a lease must contain.", ""),
])
def test_check_evolution(operation, before, after, reason):
    assert check_evolution(operation, before, after, [], CFG)[0] == reason


def test_recorded_smollm2_harder_output_is_an_answer():
    """A "harder" rewrite SmolLM2-135M wrote in a trial, replayed as text: it answered instead."""
    before = "A rectangle is 8 cm long and 5 cm wide. What is its perimeter?"
    raw = ("A rectangle is a square object that has an edge length of 8 cm.  It measures 5 cm wide. This means "
           "the perimeter of a rectangle is 8 + 5 = 13 cm.")
    assert check_evolution("harder", before, parse_evolved(raw), [], CFG)[0] == "evolution_became_answer"


def test_check_evolution_details():
    assert check_evolution("harder", "Add 120 and 2.", "Add the numbers together, please.", [], CFG) == (
        "evolution_lost_information", "numbers missing: 120, 2")
    assert check_evolution("expand", "What is a will?", "Explain what a lease is.", ["Explain what a lease is."],
                           CFG) == ("evolution_copy", "similarity 1.00 to 'Explain what a lease is.'")


def test_check_step_adds_self_containment_and_climbing():
    assert check_step("harder", "How many legs does a spider have?",
                      "How many legs does the spider in the passage have, and why?", [], CFG) == (
        "evolution_not_self_contained", "refers_to_absent_text: 'in the passage' is not in the instruction")
    assert check_step("harder", "Why do plants need sunlight and water?", "Why do plants need sunlight, water?",
                      [], CFG) == ("evolution_not_harder", "6 words, the input had 7")
    assert check_step("harder", "Why do plants need sunlight?", "Why do plants need sunlight? Explain in 3 steps.",
                      [], CFG) == ("", "")
    # written by SmolLM2-135M in the demo
    assert check_step("harder", "How many edges does the pyramid have?", "I would add an additional constraint. "
                      "How many edges does the pyramid have if it has 5 faces?", [], CFG) == (
        "evolution_talks_about_task", "talks about the question instead of asking it")
    assert check_step("harder", "What is the area of a rectangle with a length of 6 and a width of 4?",
                      "How many people can fit into a room that is 4 times the area of a room that is 6 times the "
                      "area of a room that is 4 times the length of a room?", [], CFG) == (
        "evolution_repetitive", "repeated 3-gram ratio 0.36 > 0.20")


def test_steps_and_their_counter_names():
    assert stage_names(EvolveConfig()) == ["evolve_clarify", "evolve_expand", "evolve_harder_r1", "evolve_harder_r2"]
    assert stage_names(EvolveConfig(rounds=0, low_resource_domains=[])) == ["evolve_clarify"]
    assert stage_names(EvolveConfig(operations=["clarify"], rounds=3)) == ["evolve_clarify"]


def test_prompts_ask_for_chinese_for_chinese_instructions():
    assert "请用中文写" in build_prompt("clarify", Record("s", instruction="什么是勾股定理？"), [])
    assert build_prompt("harder", Record("s", instruction="Why is 7 prime?"), []).startswith(
        "Rewrite the question below into a harder question:")
    assert "Instruction: Name a prime.\n" in build_prompt("clarify", Record("s", instruction="Name a prime."), [])
    prompt = build_prompt("expand", Record("s", domain="law", instruction="What is a will?"), ["What is a lease?"])
    assert "1. What is a will?\n2. What is a lease?" in prompt and "new law task" in prompt


@settings(max_examples=200, deadline=None)
@given(MESSY, st.text(max_size=120), st.sampled_from(["clarify", "harder", "expand"]))
def test_parse_and_check_never_raise(raw, before, operation):
    after = parse_evolved(raw)
    assert isinstance(after, str) and after == after.strip()
    assert check_evolution(operation, before, after, [before[:20]], CFG)[0] in REASONS


def test_config_validation():
    with pytest.raises(ConfigError, match="evolve: unknown operation 'shorter' in operations"):
        load_config(SynthConfig, overrides=["--evolve.operations", "[clarify, shorter]"])
    with pytest.raises(ConfigError, match="evolve.model: model 'big' is not defined under models"):
        load_config(SynthConfig, overrides=["--evolve.model", "big"])


# -- the stage ----------------------------------------------------------------------------------
CLARIFY_OUT = {
    "Why do plants need sunlight?": "Sure! Here it is:\nWhy do plants need sunlight to make their food?",
    "What is the boiling point of water?": "What is the boiling point of water?",
    "How many legs does a spider have?": "A spider has eight legs.",
    "A train travels 120 km in 2 hours. What is its speed?": "What is the speed of a train?",
    "Name three primary colors.": "Sure!",
}
CLARIFY_ALL = EvolveConfig(operations=["clarify"], clarify="all", low_resource_domains=[])


def test_clarify_all_exact_records_and_reasons():
    records = [Record("s", domain="science", instruction=text) for text in CLARIFY_OUT]
    llm = FakeLLM(lambda req: CLARIFY_OUT[instruction_in(req.messages[-1][1])], name="evo")
    cfg = EvolveConfig(operations=["clarify"], clarify="all", low_resource_domains=[], on_failure="reject")
    kept, rejected, counters = run(records, cfg, llm, namespaces=stage_names(cfg))
    before = "Why do plants need sunlight?"
    after = "Why do plants need sunlight to make their food?"
    assert [(r.instruction, r.evolution) for r in kept] == [
        (after, [EvolutionStep(0, "clarify", before, after, True, "")])]
    assert kept[0].id == kept[0].content_id() != records[0].id
    step = kept[0].lineage[-1]
    assert (step.stage, step.model, step.template_id, step.template_version) == (
        "evolve", "fake:evo", "evolve/clarify", TEMPLATE_VERSION)
    assert [(r.instruction, r.reject_stage, r.reject_reason, r.evolution[-1].accepted, r.evolution[-1].reason)
            for r in rejected] == [
        ("A train travels 120 km in 2 hours. What is its speed?", "evolve", "evolution_lost_information", False,
         "evolution_lost_information"),
        ("How many legs does a spider have?", "evolve", "evolution_became_answer", False, "evolution_became_answer"),
        ("Name three primary colors.", "evolve", "evolution_unparseable", False, "evolution_unparseable"),
        ("What is the boiling point of water?", "evolve", "evolution_copy", False, "evolution_copy")]
    assert rejected[1].evolution[-1].after == "A spider has eight legs."
    assert counters["evolve_clarify"] == {"in": 5, "kept": 1, "out": 1, "rejected:evolution_copy": 1,
                                          "rejected:evolution_lost_information": 1,
                                          "rejected:evolution_became_answer": 1, "rejected:evolution_unparseable": 1}


RECTANGLE_SEED = "A rectangle is 6 cm long and 4 cm wide, so its area is 24 square centimetres."
WITH_CONTEXT = {  # what the fake model writes when asked to restate an instruction with its seed text
    "What is the area of the rectangle?": "What is the area of a rectangle that is 6 cm long and 4 cm wide?",
    "Summarize the passage above.": "Summarize the passage above in two sentences.",
    "这个长方形的面积是多少？": "一个长方形长6厘米，宽4厘米，它的面积是多少？",
}


def restate(request: Request) -> str:
    prompt = request.messages[-1][1]
    assert prompt.startswith(f"Text:\n{RECTANGLE_SEED}\n\n") and "without saying what it is" in prompt
    return WITH_CONTEXT[instruction_in(prompt)]


def test_instructions_that_lack_their_context_are_clarified_with_the_seed_or_rejected():
    records = [Record("s", domain="math", seed_text=RECTANGLE_SEED, instruction=t) for t in WITH_CONTEXT]
    records.append(Record("s", domain="math", seed_text=RECTANGLE_SEED, instruction="Why is 7 a prime number?"))
    llm = FakeLLM(restate, name="evo")
    cfg = EvolveConfig(operations=["clarify"], low_resource_domains=[])
    kept, rejected, counters = run(records, cfg, llm, namespaces=stage_names(cfg))
    assert [r.instruction for r in kept] == ["What is the area of a rectangle that is 6 cm long and 4 cm wide?",
                                             "Why is 7 a prime number?", "一个长方形长6厘米，宽4厘米，它的面积是多少？"]
    assert [s.operation for s in kept[0].evolution] == ["clarify"] and kept[1].evolution == []
    assert kept[0].lineage[-1].template_id == "evolve/clarify_context"
    assert "mentions 'the rectangle' without" in llm.calls[0].messages[-1][1]
    assert [(r.reject_stage, r.reject_reason, r.reject_detail) for r in rejected] == [
        ("evolve", "refers_to_absent_text", "'passage above' is not in the instruction; clarify failed: "
         "evolution_not_self_contained (refers_to_absent_text: 'passage above' is not in the instruction)")]
    assert len(llm.calls) == 3  # the self-contained question needed no call
    assert counters["evolve_clarify"] == {"in": 4, "kept": 3, "out": 3, "rejected:refers_to_absent_text": 1}


def test_without_clarify_such_instructions_are_rejected_without_a_call():
    llm = FakeLLM(name="evo")
    records = [Record("s", domain="math", instruction="What is the area of the rectangle?"),
               Record("s", domain="math", instruction="计算这个三角形的周长。")]
    cfg = EvolveConfig(operations=["harder"], rounds=0, low_resource_domains=[])
    kept, rejected, counters = run(records, cfg, llm, namespaces=stage_names(cfg))
    assert kept == [] and llm.calls == []
    assert sorted((r.reject_reason, r.reject_detail) for r in rejected) == [
        ("refers_to_undefined_object", "'the rectangle' is never introduced (clarify is off)"),
        ("refers_to_undefined_object", "'这个三角形' is never described (clarify is off)")]


def test_harder_rounds_climb_on_the_previous_result_and_count_per_step():
    llm = FakeLLM(lambda req: instruction_in(req.messages[-1][1]) + " Show each step.", name="evo")
    start = Record("s", domain="science", instruction="Why do plants need sunlight?")
    cfg = EvolveConfig(operations=["clarify", "harder"], rounds=2, low_resource_domains=[])
    kept, rejected, counters = run([start], cfg, llm, namespaces=stage_names(cfg))
    once = "Why do plants need sunlight? Show each step."
    twice = once + " Show each step."
    assert rejected == [] and [r.instruction for r in kept] == [twice]
    assert [(s.round, s.operation, s.before, s.after) for s in kept[0].evolution] == [
        (1, "harder", start.instruction, once), (2, "harder", once, twice)]
    assert counters == {"evolve_clarify": {"in": 1, "kept": 1, "out": 1},
                        "evolve_harder_r1": {"in": 1, "kept": 1, "out": 1},
                        "evolve_harder_r2": {"in": 1, "kept": 1, "out": 1}}
    assert len({call.params.seed for call in llm.calls}) == 2  # each round samples anew


def test_a_harder_rewrite_that_says_no_more_is_dropped_and_the_round_before_goes_on():
    llm = FakeLLM(lambda req: "Why do plants need light?", name="evo")
    start = Record("s", domain="science", instruction="Why do plants need sunlight?")
    cfg = EvolveConfig(operations=["harder"], rounds=1, low_resource_domains=[])
    kept, rejected, _ = run([start], cfg, llm, namespaces=stage_names(cfg))
    assert rejected == [] and kept[0].instruction == start.instruction
    assert [(s.accepted, s.reason) for s in kept[0].evolution] == [(False, "evolution_not_harder")]


LAW = ["What is a will?", "What does a notary do?", "When is a contract void?"]
EXPANSIONS = {LAW[0]: "New task: Explain what a lease must contain.", LAW[1]: LAW[2],
              LAW[2]: "What rights does a tenant have when the house is sold?"}


def test_expand_adds_records_from_in_domain_examples():
    records = [Record("s", domain="law", instruction=t) for t in LAW]
    records.append(Record("s", domain="science", instruction="Why is the sky blue?"))
    llm = FakeLLM(lambda req: EXPANSIONS[re.search(r"\n1\. (.*)\n", req.messages[-1][1]).group(1)], name="evo")
    cfg = EvolveConfig(operations=["expand"], low_resource_domains=["law"], expand_examples=2)
    kept, rejected, counters = run(records, cfg, llm, namespaces=stage_names(cfg))
    assert rejected == []
    assert [r.instruction for r in kept] == sorted([*LAW, "Why is the sky blue?", "Explain what a lease must contain.",
                                                    "What rights does a tenant have when the house is sold?"])
    by_text = {r.instruction: r for r in kept}
    assert by_text["Explain what a lease must contain."].evolution == [
        EvolutionStep(0, "expand", LAW[0], "Explain what a lease must contain.", True, "")]
    assert by_text[LAW[0]].evolution == [] and by_text["Why is the sky blue?"].evolution == []
    failed = by_text[LAW[1]].evolution  # a copy of an example: not added, the attempt stays on the original
    assert [(s.operation, s.accepted, s.reason) for s in failed] == [("expand", False, "evolution_copy")]
    for call in llm.calls:  # every prompt shows the other two law instructions as examples
        prompt = call.messages[-1][1]
        assert sum(text in prompt for text in LAW) == 3 and "sky" not in prompt
    assert counters["evolve_expand"] == {"in": 4, "kept": 4, "out": 6}


def test_zero_rounds_pass_self_contained_records_through():
    start = Record("s", domain="science", instruction="Why do plants need sunlight?")
    kept, rejected, _ = run([start], EvolveConfig(rounds=0), FakeLLM(name="evo"))
    assert kept == [start] and rejected == []


def test_by_default_a_failed_evolution_is_dropped_and_the_original_goes_on():
    records = [Record("s", domain="science", instruction=text) for text in CLARIFY_OUT]
    llm = FakeLLM(lambda req: CLARIFY_OUT[instruction_in(req.messages[-1][1])], name="evo")
    kept, rejected, counters = run(records, CLARIFY_ALL, llm, namespaces=stage_names(CLARIFY_ALL))
    assert rejected == []
    unchanged = {r.instruction: r for r in kept if not r.evolution[-1].accepted}
    assert sorted(unchanged) == sorted(t for t in CLARIFY_OUT if t != "Why do plants need sunlight?")
    spider = unchanged["How many legs does a spider have?"]
    assert spider.id == Record("s", domain="science", instruction="How many legs does a spider have?").id
    assert (spider.evolution[-1].reason, spider.evolution[-1].after) == ("evolution_became_answer",
                                                                         "A spider has eight legs.")
    assert counters["evolve_clarify"] == {"in": 5, "kept": 5, "out": 5}


def _steps_with_side_inputs(cfg: EvolveConfig) -> list[str]:
    """Labels of the evolution steps that wait on a side input (i.e. on all of generation)."""
    class Visitor(beam.pipeline.PipelineVisitor):
        def __init__(self):
            self.labels = []

        def visit_transform(self, node):
            if "/evolve_" in node.full_label and node.side_inputs:
                self.labels.append(node.full_label)

    p = beam.Pipeline()
    _ = p | beam.Create([Record("s", domain="law", instruction=LAW[0])]) | EvolveStage(
        cfg, {"default": ModelConfig(backend=FAKE_BACKEND, model="evolve-test")})
    visitor = Visitor()
    p.visit(visitor)
    return visitor.labels


def test_only_expansion_waits_for_generation_the_other_steps_stream():
    assert _steps_with_side_inputs(EvolveConfig(rounds=2, low_resource_domains=[])) == []
    assert _steps_with_side_inputs(EvolveConfig(rounds=2, operations=["clarify", "harder"])) == []
    assert [label.split("/")[-2] for label in _steps_with_side_inputs(EvolveConfig(rounds=2))] == ["evolve_expand"]
