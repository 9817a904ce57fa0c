"""HumanEval answers run against HumanEval's own tests in the project's sandbox."""
from __future__ import annotations

import json
import math

import pytest

from datagen.readers import eval_sets
from rewards.code_verifier import HumanEvalScorer, build_program, check_problem, check_problems, extract_code


@pytest.fixture(scope="module")
def problems():
    return eval_sets.load("code", limit=6)


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is the function:\n\n```{lang}\n{code}\n```\nIt works."


def test_canonical_solutions_pass_as_a_whole_function_and_as_a_body(problems):
    whole = [fenced(p["prompt"] + p["canonical_solution"]) for p in problems]
    assert [c.passed for c in check_problems(problems, whole)] == [True] * len(problems)
    bodies = [p["canonical_solution"] for p in problems]  # a completion model continues the prompt
    assert [c.passed for c in check_problems(problems, bodies)] == [True] * len(problems)


def test_wrong_and_broken_answers_fail_with_a_reason(problems):
    p = problems[0]
    wrong = check_problem(p, fenced(f"def {p['entry_point']}(*args):\n    return None"))
    assert not wrong.passed and "AssertionError" in wrong.error
    broken = check_problem(p, fenced(f"def {p['entry_point']}(:\n    pass"))
    assert not broken.passed and broken.error
    nothing = check_problem(p, "I don't know.")
    assert not nothing.passed


def test_an_endless_answer_times_out(problems):
    p = problems[0]
    check = check_problem(p, fenced(f"def {p['entry_point']}(*args):\n    while True:\n        pass"), timeout=2)
    assert not check.passed and check.error == "timeout"


def test_the_block_that_defines_the_function_is_the_one_run():
    text = "Example use:\n```python\nprint(f(1))\n```\nThe function:\n```python\ndef f(x):\n    return x\n```"
    assert extract_code(text, "f").startswith("def f(x)")
    assert extract_code("no fences, def f(x): return x", "f") == "no fences, def f(x): return x"


def test_prompt_helpers_and_imports_stay_available(problems):
    program = build_program("from typing import List\n\ndef helper():\n    return 1\n\ndef g(xs: List[int]):\n"
                            '    """Doc."""\n', fenced("def g(xs):\n    return helper()"), "g")
    namespace: dict = {}
    exec(program, namespace)  # noqa: S102 - our own test string
    assert namespace["g"]([1]) == 1


def test_scorer_form_gives_one_score_per_answer_and_nan_for_a_bad_reference(problems):
    from rewards.code_verifier import problem_reference

    p = problems[1]
    refs = [problem_reference(p), problem_reference(p), "not json"]
    answers = [fenced(p["prompt"] + p["canonical_solution"]), "nope", "whatever"]
    scores = HumanEvalScorer(timeout=5).score(["q"] * 3, answers, refs)
    assert scores[:2] == [1.0, 0.0] and math.isnan(scores[2])
    assert json.loads(refs[0])["entry_point"] == p["entry_point"]
