"""Instruction generation: the parser on messy output, prompts, then the stage and the cap on Beam."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.stages.generate import (CAP_STAGE, STAGE, TEMPLATE_VERSION, GenerateConfig, GenerateStage,
                              ParsedInstruction, build_prompt, domain_tag, is_closed_question, parse_instructions)
from datagen.filters.python_code import valid_tests
from datagen.filters.text import is_mostly_cjk, looks_like_answer, looks_like_instruction
from datagen.record import REJECTED, Record
from datagen.config_loader import ConfigError, load_config
from pipelines.synth_config import SynthConfig
from fakes import FakeLLM, install_fake
from stage_harness import run_transform

P = ParsedInstruction


def run(records, cfg, llm, namespaces=(STAGE,)):
    """Run GenerateStage on the DirectRunner; returns kept, rejected and counters per namespace."""
    model = install_fake(llm, "gen-test")
    out = run_transform(records, GenerateStage(cfg, {"default": model}), namespaces)
    return (sorted(out.kept, key=lambda r: r.instruction), sorted(out.rejected, key=lambda r: r.seed_id),
            out.counters)


# -- parser -------------------------------------------------------------------------------------
def test_numbered_list_with_chatter_around_it():
    raw = ("Sure! Here are 3 questions:\n1. How does photosynthesis store energy?\n"
           "2) What gas do plants release?\n3. Why are leaves green?\nI hope these help!")
    assert parse_instructions(raw) == [P("How does photosynthesis store energy?"), P("What gas do plants release?"),
                                       P("Why are leaves green?")]


def test_json_shapes():
    assert parse_instructions('["What is 2+2?", "Explain gravity."]') == [P("What is 2+2?"), P("Explain gravity.")]
    assert parse_instructions('Output: {"instructions": ["Why is the sky blue?"]} done') == [
        P("Why is the sky blue?")]
    assert parse_instructions('{"question": "Why is ice slippery?", "tests": []}') == [P("Why is ice slippery?")]
    assert parse_instructions('1. Sort the list ["b", "a"] in Python.') == [P('Sort the list ["b", "a"] in Python.')]
    fenced = ('```json\n[{"instruction": "Write a function add(a, b) that returns a + b.", '
              '"tests": ["assert add(1, 2) == 3", "assert foo(1)"]}]\n```')
    assert parse_instructions(fenced) == [P("Write a function add(a, b) that returns a + b.",
                                            ("assert add(1, 2) == 3",))]


def test_chinese_and_bullet_markers():
    raw = "1、计算直角边为5和12的三角形的斜边。\n（2）什么是勾股定理？\n- 请证明勾股定理。\n• Why is 7 prime?"
    assert [i.text for i in parse_instructions(raw)] == [
        "计算直角边为5和12的三角形的斜边。", "什么是勾股定理？", "请证明勾股定理。", "Why is 7 prime?"]


def test_bold_markers_code_answers_and_asserts():
    raw = ("**1.** **Write a Python function `add(a, b)` that returns the sum.**\n   assert add(1, 2) == 3\n"
           "```python\ndef add(a, b):\n    return a + b\n```\n**2.** Answer: 42\n"
           "3. Reverse a list in Python using slicing:\n```python\nx[::-1]\n```")
    assert parse_instructions(raw) == [
        P("Write a Python function `add(a, b)` that returns the sum.", ("assert add(1, 2) == 3",)),
        P("Reverse a list in Python using slicing.")]


def test_statements_answers_duplicates_and_the_template_example_are_dropped():
    raw = ("1. The hypotenuse is 5.\n2. What is the area of a 6 by 4 rectangle?\n"
           "3. what is the area of a 6 by 4 rectangle?\n4. The answer is 24.\n"
           "5. A rectangle is 6 cm long and 4 cm wide. What is its area?")
    assert parse_instructions(raw, exclude=("A rectangle is 6 cm long and 4 cm wide. What is its area?",)) == [
        P("What is the area of a 6 by 4 rectangle?")]


def test_items_that_merely_start_like_chatter_are_kept():
    raw = "1. Great Expectations: describe how Pip changes.\n2. We have 5 apples and eat 2. How many are left?"
    assert [i.text for i in parse_instructions(raw)] == ["Great Expectations: describe how Pip changes.",
                                                         "We have 5 apples and eat 2. How many are left?"]


def test_truncated_last_item_is_dropped_and_k_caps():
    raw = "1. Why is the sky blue?\n2. How do magnets work?\n3. Describe how a rainbow forms in the"
    assert [i.text for i in parse_instructions(raw, truncated=True)] == ["Why is the sky blue?",
                                                                         "How do magnets work?"]
    assert len(parse_instructions(raw, truncated=False)) == 3
    assert parse_instructions(raw, k=1) == [P("Why is the sky blue?")]


def test_recorded_smollm2_outputs():
    """Outputs SmolLM2-135M wrote in trials, replayed as text (no model runs here)."""
    echo = ("1. \n2. \n3. \n*  1. The Pythagorean triple c-3, a-3-4 is an example of a Pythagorean triple.\n\n"
            "There are other Pythagorean triples found in the set")
    assert parse_instructions(echo, 3, truncated=True) == []
    statement = ("A Pythagorean triplet (3, 4, 5) is a famous Pythagorean triple. It is also a Pythagorean triple "
                 "that can be constructed using the Pythagorean theorem: 3^2 + 4^2 = 5^2.")
    assert parse_instructions(statement, 3) == []
    code = ("1. Write a Python function that takes a list of integers and returns the maximum sum of a "
            "contiguous subarray where each element is non-negative.")
    assert parse_instructions(code, 3) == [P(code[3:])]
    science = "1. How does the process work?\n2. What makes this process possible?\n3. Why doesn't it occur in space?"
    assert len(parse_instructions(science, 3)) == 3


def test_valid_tests_keep_compiling_asserts_on_named_functions():
    instruction = "Write a Python function count_vowels(s) that returns the number of vowels."
    lines = ["assert count_vowels('hello') == 2", "assert count_vowels(", "print(count_vowels('a'))",
             "assert other('x') == 1", "`assert count_vowels('') == 0`", "assert count_vowels('hello') == 2"]
    assert valid_tests(lines, instruction) == ("assert count_vowels('hello') == 2", "assert count_vowels('') == 0")


def test_heuristics():
    assert is_closed_question("How many moons does Mars have?")
    assert not is_closed_question("How does the Moon cause tides?")
    assert not is_closed_question("What is the capital of France? Explain why it grew.")
    assert is_closed_question("一年有多少天？")
    assert looks_like_instruction("Given a list of numbers, return the largest.")
    assert not looks_like_instruction("The mitochondria is the powerhouse of the cell.")
    assert is_mostly_cjk("勾股定理 a^2+b^2") and not is_mostly_cjk("Pythagoras 定理")
    assert looks_like_answer("**Answer:** 12") and looks_like_answer("It is \\boxed{12}.")
    assert looks_like_answer("Let's solve it step by step.")
    assert not looks_like_answer("Let us consider a triangle with sides 3, 4, 5. Find its area.")


# Fragments small models emit, shuffled together with arbitrary text.
PIECES = ["1. ", "2) ", "- ", "**1.** ", "1、", "（2）", "\n", "\n\n", "```", "```json\n", "[", "]", "{", "}", '"',
          '{"instruction": "', '"tests": ["assert f(1) == 1"]', "assert f(", "Sure! Here are:", "Answer: ", "?",
          "Why is ", "Write a function f(x)", "什么是", "？", "\\boxed{3}", ", ", ":"]
MESSY = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=12)), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(MESSY, st.integers(1, 5), st.booleans())
def test_parser_never_raises_and_respects_k(raw, k, truncated):
    items = parse_instructions(raw, k, truncated)
    assert len(items) <= k
    assert all(item.text.strip() and looks_like_instruction(item.text) for item in items)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.from_regex(r"[A-Za-z]{3,12}( [a-z]{2,10}){0,6}", fullmatch=True), min_size=1, max_size=6,
                unique_by=str.lower),
       st.sampled_from(["{i}. ", "{i}) ", "- ", "* ", "{i}、", "**{i}.** "]))
def test_parser_recovers_any_list_of_questions(topics, marker):
    raw = "Here you go:\n" + "\n".join(marker.format(i=i) + f"Why is {t}?" for i, t in enumerate(topics, 1))
    assert [i.text for i in parse_instructions(raw + "\nEnjoy!")] == [f"Why is {t}?" for t in topics]


# -- prompts ------------------------------------------------------------------------------------
def test_prompt_per_domain():
    cfg = GenerateConfig(k=2, low_resource_domains=["law"])
    tag, template_id, prompt = build_prompt(Record("s", domain="Writing", seed_text="Haiku is a form."), cfg)
    assert (tag, template_id) == ("humanities", "generate/humanities")
    assert prompt.startswith("Text:\nHaiku is a form.\n\nWrite 2 writing tasks or questions about this topic,")
    assert prompt.endswith("Write them as a numbered list, one per line. Do not answer them.")
    assert "Chinese" not in prompt
    assert build_prompt(Record("s", domain="law", seed_text="x"), cfg)[:2] == ("law", "generate/low_resource")
    assert "questions a student could ask about law" in build_prompt(Record("s", domain="law", seed_text="x"), cfg)[2]
    assert domain_tag("astrology", cfg) == "general"
    assert "请用中文写" in build_prompt(Record("s", domain="math", seed_text="勾股定理指出直角三角形"), cfg)[2]


# -- the stage ----------------------------------------------------------------------------------
SEEDS = {
    "m": ("math", "Pythagoras: a right triangle with legs 3 and 4 has hypotenuse 5."),
    "c": ("code", "Slicing reverses a string: s[::-1]."),
    "x": ("science", "Stars fuse hydrogen into helium."),
    "e": ("science", "   "),
}
OUTPUTS = {
    "Pythagoras": "Sure!\n0. A rectangle is 6 cm long and 4 cm wide. What is its area?\n"
                  "1. What is the hypotenuse of a right triangle with legs 6 and 8?\n"
                  "2. How many Pythagorean triples have a hypotenuse below 20?\n3. Prove that 5, 12, 13 is a triple.",
    "Slicing": "1. Write a Python function reverse_words(s) that reverses word order.\n"
               "assert reverse_words('a b') == 'b a'\nassert nope(",
    "Stars": "Stars are hot. They shine. The end.",
}


def fake():
    return FakeLLM(lambda req: next(v for k, v in OUTPUTS.items() if k in req.messages[-1][1]), name="gen")


def seeds():
    return [Record(seed_id=sid, domain=dom, seed_text=text, source="unit") for sid, (dom, text) in SEEDS.items()]


def test_stage_exact_records_reasons_and_counters():
    kept, rejected, counters = run(seeds(), GenerateConfig(k=3), fake())
    assert [(r.seed_id, r.domain, r.instruction, r.objective, r.tests) for r in kept] == [
        ("m", "math", "How many Pythagorean triples have a hypotenuse below 20?", True, ""),
        ("m", "math", "Prove that 5, 12, 13 is a triple.", True, ""),
        ("m", "math", "What is the hypotenuse of a right triangle with legs 6 and 8?", True, ""),
        ("c", "code", "Write a Python function reverse_words(s) that reverses word order.", True,
         "assert reverse_words('a b') == 'b a'")]
    assert all(r.id == r.content_id() and r.source == "unit" for r in kept)
    step = kept[0].lineage[-1]
    assert (step.stage, step.model, step.template_id, step.template_version) == (
        "generate", "fake:gen", "generate/math", TEMPLATE_VERSION)
    assert [(r.seed_id, r.status, r.reject_stage, r.reject_reason) for r in rejected] == [
        ("e", REJECTED, "generate", "empty_seed"), ("x", REJECTED, "generate", "no_instructions_parsed")]
    assert rejected[1].reject_detail == "Stars are hot. They shine. The end."
    assert counters[STAGE] == {"in": 4, "kept": 2, "out": 4, "rejected:empty_seed": 1,
                               "rejected:no_instructions_parsed": 1}


def test_domain_cap_keeps_lowest_ids_per_domain():
    kept, rejected, counters = run(seeds(), GenerateConfig(k=3, max_per_domain=2), fake(),
                                   namespaces=(STAGE, CAP_STAGE))
    math_ids = sorted(r.id for r in kept + rejected if r.domain == "math")
    assert sorted(r.id for r in kept if r.domain == "math") == math_ids[:2]
    capped = [r for r in rejected if r.reject_stage == CAP_STAGE]
    assert [(r.id, r.reject_reason) for r in capped] == [(math_ids[2], "domain_cap")]
    assert capped[0].reject_detail == "domain 'math' is capped at 2 records (lowest ids kept)"
    assert counters[CAP_STAGE] == {"in": 4, "kept": 3, "out": 3, "rejected:domain_cap": 1}
    assert counters[STAGE]["out"] == counters[CAP_STAGE]["in"]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="generate: k must be at least 1, got 0"):
        load_config(SynthConfig, overrides=["--generate.k", "0"])
    with pytest.raises(ConfigError, match="generate.model: model 'big' is not defined under models"):
        load_config(SynthConfig, overrides=["--generate.model", "big"])
