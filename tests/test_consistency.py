"""Self-consistency: answer extractors, equivalence, the code sandbox, then the stage on the
DirectRunner with exact outputs, rejection reasons and counters."""
from __future__ import annotations

import dataclasses
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datagen.filters.answers import extract_boxed, extract_math_answer, extract_short_answer, math_equivalent, normalize_short
from datagen.stages.consistency import Answer, ConsistencyConfig, ConsistencyStage, group_answers
from datagen.filters.python_code import extract_code
from datagen.filters.sandbox import RunResult, run_sandboxed
from datagen.record import Consistency, LineageStep, Record, Response
from stage_harness import run_transform

CFG = ConsistencyConfig()


def run_consistency(records, cfg=CFG):
    out = run_transform(records, ConsistencyStage(cfg), ["consistency"])
    by_seed = lambda r: r.seed_id  # noqa: E731
    return sorted(out.kept, key=by_seed), sorted(out.rejected, key=by_seed), out.counters["consistency"]


def item(seed, domain, *texts, tests="", objective=True):
    return Record(seed_id=seed, domain=domain, instruction=f"question {seed}", objective=objective, tests=tests,
                  responses=[Response(t, model="m", finish_reason="stop") for t in texts])


def lineage(method):
    return [LineageStep("consistency", params_json=json.dumps({"method": method, "threshold": 0.5},
                                                                sort_keys=True))]


# -- math answers -------------------------------------------------------------------------------
def test_boxed_takes_the_last_box_with_balanced_braces():
    assert extract_boxed(r"first \boxed{1}, then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{\frac{1}{2}") is None
    assert extract_boxed("no box") is None


def test_math_answer_order_boxed_then_stated_then_equation_then_last_number():
    assert extract_math_answer(r"So $x = \boxed{\frac{1}{2}}$. Check: 3") == r"\frac{1}{2}"
    assert extract_math_answer("We add. The answer is 42. Done in 3 steps.") == "42"
    assert extract_math_answer("**Answer:** $3.5$") == "3.5"
    assert extract_math_answer("Final answer: 1,000 dollars.") == "1,000 dollars"
    assert extract_math_answer("Adding:\n2 + 2 = 4") == "4"
    assert extract_math_answer("3 apples and 5 pears make 8 fruit in all") == "8"
    assert extract_math_answer("1,250 people came") == "1250"
    assert extract_math_answer("I cannot solve this.") is None


def test_math_equivalence_uses_math_verify_and_string_fallbacks():
    assert math_equivalent("1/2", "0.5")
    assert math_equivalent(r"\frac{1}{2}", "0.5")
    assert math_equivalent(r"2\sqrt{2}", r"\sqrt{8}")
    assert math_equivalent("x = 3", "3")
    assert math_equivalent("1,000", "1000")
    assert math_equivalent("12 dollars", "12")
    assert not math_equivalent("3", "4")
    assert not math_equivalent("abc", "abd")
    # power towers never reach sympy: equal strings still agree, different ones do not
    assert math_equivalent("9^9^9", "9^9^9")
    assert not math_equivalent("2^{99999}", "2^{99998}")


# -- short answers ------------------------------------------------------------------------------
def test_short_answers_normalise_case_punctuation_articles_and_spaces():
    assert normalize_short("  The  Nile, river! ") == "nile river"
    assert extract_short_answer("Paris.") == "paris"
    assert extract_short_answer("Let me think.\nThe answer is: Paris!") == "paris"
    assert extract_short_answer(r"It is \boxed{The Nile}") == "nile"
    assert extract_short_answer("The capital is Paris. It is large.") == "capital is paris"
    assert extract_short_answer(" \n ... ") is None


# -- code ---------------------------------------------------------------------------------------
def test_code_blocks_that_parse_are_joined_in_order():
    text = ("Here:\n```python\ndef f(x):\n    return x\n```\nUse it:\n```py\nprint(f(2))\n```\n"
            "```\n>>> f(2)\n2\n```\n```bash\nls\n```")
    assert extract_code(text) == "def f(x):\n    return x\n\nprint(f(2))"


def test_code_without_fences_or_with_broken_fences():
    assert extract_code("def f(x):\n    return x") == "def f(x):\n    return x"
    assert extract_code("```python\ndef f(:\n```") == "def f(:\n"
    assert extract_code("Just prose, no code.") is None


def test_sandbox_passing_and_failing_tests():
    assert run_sandboxed("def add(a, b):\n    return a + b", "assert add(1, 2) == 3") == RunResult(True, "", "")
    assert run_sandboxed("def add(a, b):\n    return a - b", "assert add(1, 2) == 3") == RunResult(
        False, "", "AssertionError")
    # the solution's demo block does not run under tests; it does when run alone
    demo = "def add(a, b):\n    return a + b\nif __name__ == '__main__':\n    print(add(2, 2))"
    assert run_sandboxed(demo, "assert add(1, 1) == 2") == RunResult(True, "", "")
    assert run_sandboxed(demo) == RunResult(True, "4\n", "")


def test_sandbox_timeout_kills_the_program():
    assert run_sandboxed("while True:\n    pass", timeout=1.0) == RunResult(False, "", "timeout")


def test_sandbox_memory_bomb_hits_the_address_space_limit():
    assert run_sandboxed("x = bytearray(2 * 1024 ** 3)", memory_mb=128) == RunResult(False, "", "MemoryError")


def test_sandbox_refuses_sockets_with_or_without_a_network_namespace():
    attempt = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)"
    for namespace in (True, False):
        result = run_sandboxed(attempt, network_namespace=namespace)
        assert result == RunResult(False, "", "PermissionError: sandbox: socket.getaddrinfo is not allowed")
    raw = run_sandboxed("import _socket\n_socket.socket()", network_namespace=False)
    assert raw.error == "PermissionError: sandbox: socket.__new__ is not allowed"


def test_sandbox_refuses_processes_and_writes_outside_its_directory(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("keep me")
    assert run_sandboxed("import subprocess\nsubprocess.run(['true'])").error == (
        "PermissionError: sandbox: subprocess.Popen is not allowed")
    assert run_sandboxed(f"import os\nos.remove({str(target)!r})").error == (
        "PermissionError: sandbox: os.remove outside the sandbox directory")
    assert run_sandboxed(f"open({str(target)!r}, 'w').write('gone')").error == (
        "PermissionError: sandbox: open outside the sandbox directory")
    assert target.read_text() == "keep me"
    assert run_sandboxed("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())") == (
        RunResult(True, "ok\n", ""))


def test_sandbox_reports_exit_before_tests_and_oversized_output():
    assert run_sandboxed("import sys\nsys.exit(0)", "assert False").error == (
        "solution exited before the tests ran (0)")
    flood = run_sandboxed("print('x' * 10 ** 7)", output_kb=64)
    assert (flood.ok, flood.error) == (False, "OSError: [Errno 27] File too large")


# -- grouping -----------------------------------------------------------------------------------
def test_grouping_skips_non_answers_and_keeps_first_appearance_order():
    answers = [Answer("2", "2"), Answer("", None), Answer("3", "3"), Answer("2.0", "2.0"), Answer("3", "3")]
    assert group_answers(answers, math_equivalent) == [[0, 3], [2, 4]]
    assert group_answers([Answer("x", "x")], lambda a, b: 1 / 0) == [[0]]


# -- the stage ----------------------------------------------------------------------------------
TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
GOOD_ADD = "```python\ndef add(a, b):\n    return a + b\n```"


def decided(rec, method, shown, verdicts, majority, agreement, outcome):
    return dataclasses.replace(
        rec, lineage=lineage(method),
        responses=[dataclasses.replace(r, final_answer=a, verdict=v) for r, a, v in zip(rec.responses, shown, verdicts)],
        consistency=Consistency(answers=shown, majority=majority, agreement=agreement, method=method, outcome=outcome))


def test_stage_verifies_answers_and_rejects_with_exact_reasons():
    math_ok = item("a-math", "math", r"So \boxed{\frac{1}{2}}.", "The answer is 0.5.", "wrong: 7", "x = 1/2")
    math_split = item("b-math", "math", r"\boxed{1}", r"\boxed{2}", r"\boxed{3}", r"\boxed{4}")
    math_tie = item("c-math", "math", "answer is 2", "answer is 2", "answer is 3", "answer is 3")
    code_ok = item("d-code", "code", GOOD_ADD, GOOD_ADD, "```python\ndef add(a, b):\n    return a * b\n```",
                   "No code, sorry.", tests=TESTS)
    printing = "```python\nprint(sum(range(5)))\n```"
    code_untested = item("e-code", "code", printing, printing, "```python\nprint(1/0)\n```")
    short_ok = item("f-qa", "science", "Oxygen.", "The answer is oxygen", "Nitrogen")
    single = item("g-math", "math", r"\boxed{5}")
    no_answer = item("h-math", "math", "I do not know.", "Hard question.")
    essay = item("i-essay", "humanities", "An essay.", objective=False)
    crashing = item("j-code", "code", "```python\nprint(x)\n```", "```python\nimport nope\n```")

    kept, rejected, counters = run_consistency(
        [math_ok, math_split, math_tie, code_ok, code_untested, short_ok, single, no_answer, essay, crashing])

    assert kept == [
        # the minority "7" is proven different from 1/2 by math-verify: wrong, so a DPO `rejected`
        decided(math_ok, "math", [r"\frac{1}{2}", "0.5", "7", "1/2"], ["verified", "verified", "wrong", "verified"],
                r"\frac{1}{2}", 0.75, "verified"),
        # test outcomes, not stdout: a failing test is wrong, no code is unverified
        decided(code_ok, "code", ["pass", "pass", "fail: AssertionError", "no code"],
                ["verified", "verified", "wrong", "unverified"], "pass", 0.5, "verified"),
        # no tests: nothing verified; a crash is still wrong; the item goes on as subjective
        decided(code_untested, "code", ["ran: no test executed", "ran: no test executed",
                                        "fail: ZeroDivisionError: division by zero"],
                ["unverified", "unverified", "wrong"], "", 0.0, "unverifiable"),
        # a minority short answer proves nothing (it may be the right answer in other words)
        decided(short_ok, "short", ["oxygen", "oxygen", "nitrogen"], ["verified", "verified", "unverified"],
                "oxygen", 2 / 3, "verified"),
        dataclasses.replace(essay, consistency=Consistency(method="skipped", outcome="subjective")),
    ]
    assert [(r.seed_id, r.reject_stage, r.reject_reason, r.reject_detail) for r in rejected] == [
        ("b-math", "consistency", "inconsistent", 'agreement=0.25 answers=["1", "2", "3", "4"]'),
        ("c-math", "consistency", "inconsistent", 'agreement=0.50 tie answers=["2", "2", "3", "3"]'),
        ("g-math", "consistency", "too_few_answers", "1 responses, need 2"),
        ("h-math", "consistency", "no_final_answer", "method=math responses=2"),
        ("j-code", "consistency", "all_answers_fail", 'no tests; every program failed: '
         '["fail: NameError: name \'x\' is not defined", "fail: ModuleNotFoundError: No module named \'nope\'"]'),
    ]
    assert counters == {"in": 10, "kept": 5, "out": 5, "rejected:inconsistent": 2, "rejected:too_few_answers": 1,
                        "rejected:no_final_answer": 1, "rejected:all_answers_fail": 1}
    assert counters["kept"] + sum(v for k, v in counters.items() if k.startswith("rejected:")) == counters["in"]


def test_code_answers_must_define_what_the_tests_call():
    """The demo's kept record that returned a constant list: it defined another name, so it fails."""
    other_name = "```python\ndef plus(a, b):\n    return a + b\n```"
    constant = "```python\nresult = [1, 2, 3]\nprint(result)\n```"
    kept, rejected, _ = run_consistency([item("a", "code", GOOD_ADD, GOOD_ADD, other_name, constant, tests=TESTS)])
    assert [r.final_answer for r in kept[0].responses] == ["pass", "pass", "fail: defines none of add",
                                                           "fail: defines none of add"]
    assert [r.verdict for r in kept[0].responses] == ["verified", "verified", "wrong", "wrong"]
    _, rejected, _ = run_consistency([item("b", "code", other_name, constant, tests=TESTS)])
    assert [(r.reject_reason, r.reject_detail) for r in rejected] == [
        ("inconsistent", 'agreement=0.00 answers=["fail: defines none of add", "fail: defines none of add"]')]


def test_math_minorities_are_wrong_only_when_proven():
    rec = item("a", "math", r"\boxed{12}", "The answer is 12.", r"\boxed{13}", r"\boxed{blue}", "No idea at all",
               r"\boxed{12}")
    kept, _, _ = run_consistency([rec])
    assert [(r.final_answer, r.verdict) for r in kept[0].responses] == [
        ("12", "verified"), ("12", "verified"), ("13", "wrong"), ("blue", "unverified"), ("", "unverified"),
        ("12", "verified")]
    assert kept[0].answer_candidates() == [0, 1, 5] and kept[0].verified
    untested = item("b", "code", GOOD_ADD, "```python\nprint(1/0)\n```")
    kept, _, _ = run_consistency([untested])
    assert not kept[0].verified and kept[0].answer_candidates() == [0]  # never a proven-wrong answer


def test_threshold_and_min_answers_come_from_config():
    rec = item("a", "math", "answer is 2", "answer is 2", "answer is 3")
    kept, rejected, _ = run_consistency([rec], ConsistencyConfig(threshold=0.7))
    assert (kept, [r.reject_detail for r in rejected]) == ([], ['agreement=0.67 answers=["2", "2", "3"]'])
    kept, rejected, counters = run_consistency([item("b", "math", r"\boxed{5}")], ConsistencyConfig(min_answers=1))
    assert [r.consistency.agreement for r in kept] == [1.0] and counters["kept"] == 1


# -- properties: the extractors never raise and return a value or None --------------------------
_MATHY = st.text(alphabet=st.sampled_from(list("0123456789.,/=-+^{}()$\\ abxboxedfracanswer is:\n")),
                 max_size=80)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=300), _MATHY))
def test_extractors_never_raise(text):
    for extract in (extract_math_answer, extract_short_answer, extract_code, extract_boxed):
        out = extract(text)
        assert out is None or (isinstance(out, str) and out.strip())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_MATHY, _MATHY)
def test_math_equivalence_never_raises_and_is_reflexive(a, b):
    assert isinstance(math_equivalent(a, b), bool)
    if a.strip():
        assert math_equivalent(a, a)


def test_sandbox_leaves_no_temp_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    run_sandboxed("print(1)")
    assert os.listdir(tmp_path) == []


# -- a right answer states the value --------------------------------------------------------------
def test_an_expression_that_restates_the_question_is_not_a_right_answer():
    """"29 + 64" equals 93, but as the answer to "What is 29 + 64?" it only restates the question: against a
    plain-value reference it is wrong (the datagen check and the eval's / reward's check alike)."""
    from datagen.filters.answers import is_plain_value
    from rewards.math_verifier import check_answer

    record = dataclasses.replace(item("s", "math", "The answer is 29 + 64.", "So 29 + 64 = \\boxed{29 + 64}",
                                      "29 + 64 = 93", "\\boxed{93.}"), reference="93")
    kept, rejected, _ = run_consistency([record])
    assert [r.verdict for r in kept[0].responses] == ["wrong", "wrong", "verified", "verified"]
    only_echoes = dataclasses.replace(record, responses=record.responses[:2])
    kept, rejected, _ = run_consistency([only_echoes])
    assert not kept and rejected[0].reject_reason == "no_right_answer"

    assert check_answer("The answer is 29 + 64.", "93").correct == 0.0
    assert check_answer("Liam gave away 3, so there are 8 - 3 shells left.", "5").correct == 0.0
    assert check_answer("29 + 64 = 93 marbles", "93").correct == 1.0
    assert check_answer("x = 4", "4").correct == 1.0 and check_answer("It is 7/2.", "3.5").correct == 1.0
    # a reference that is itself an expression sets no such bar
    assert check_answer("The answer is $\\sqrt{2}$.", "$\\sqrt{2}$").correct == 1.0
    assert [is_plain_value(a) for a in ("1,200", "-4", "\\frac{1}{4}", "40%", "12 dollars", "2\\pi", "8 - 3")] == \
        [True, True, True, True, True, False, False]


def test_a_right_value_reached_by_false_working_is_not_verified():
    from datagen.filters.answers import false_equations

    lucky = "Femi lost 8, so 18 - 8 = 8, and 8 + 2 = 10. The answer is 10."
    sound = "Femi had 18 and lost 8: 18 - 8 = 10. The answer is 10."
    assert false_equations(lucky) == ["18 - 8 = 8"] and false_equations(sound) == []
    # a longer expression on either side is not read as a one-step equation
    assert false_equations("2 + 3 × 4 = 14, and 1,200 + 300 = 1,500; 7/2 = 3.5") == []
    record = dataclasses.replace(item("s", "math", lucky, sound, "The answer is 11."), reference="10")
    kept, _, _ = run_consistency([record])
    assert [r.verdict for r in kept[0].responses] == ["unverified", "verified", "wrong"]
    unchecked, _, _ = run_consistency([record], dataclasses.replace(CFG, check_working=False))
    assert [r.verdict for r in unchecked[0].responses] == ["verified", "verified", "wrong"]
