"""Rule filters: each check on its own, then the stage on the DirectRunner with exact reasons."""
from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.record import KEPT, Record, Response
from datagen.stages.rules import (RESPONSE_REASONS, Finding, RulesConfig, RulesStage, apply_rules,
                           check_code_fences, check_garbled, check_json, check_language_allowed,
                           check_language_match, check_length, check_repetition, check_truncated,
                           dominant_reason, instruction_finding, repeated_ngram_ratio, response_finding,
                           script_language)
from datagen.filters.text import words
from stage_harness import run_transform

CFG = RulesConfig()
INSTRUCTION = "Explain why the sum of two even numbers is always even."
ANSWER = "Write them as 2a and 2b; their sum 2(a + b) is a multiple of two, so it is even."
INSTRUCTION_REASONS = {"empty_instruction", "instruction_too_short", "instruction_too_long", "garbled",
                       "repetition", "wrong_language"}


def run_rules(records, cfg=CFG):
    out = run_transform(records, RulesStage(cfg), ["rules"])
    return out.kept, out.rejected, out.counters["rules"]


def record(instruction=INSTRUCTION, *texts, finish="stop", seed="s"):
    return Record(seed_id=seed, instruction=instruction,
                  responses=[Response(t, model="m", finish_reason=finish) for t in texts])


# -- checks -----------------------------------------------------------------------------------
def test_words_split_han_characters_and_drop_punctuation():
    assert words("Hello, World! 你好 abc中文 x_y") == [
        "hello", "world", "你", "好", "abc", "中", "文", "x", "y"]


def test_truncation():
    assert check_truncated(Response("cut", finish_reason="length")) == Finding(
        "truncated", "finish_reason=length: hit max_tokens")
    assert check_truncated(Response("done", finish_reason="stop")) is None


def test_length_bounds():
    assert check_length("  ", 2, 10, "response") == Finding("empty_response", "response is blank")
    assert check_length("a", 2, 10, "response") == Finding("response_too_short", "1 chars < 2")
    assert check_length("x" * 12001, 2, 12000, "response") == Finding(
        "response_too_long", "12,001 chars > 12,000")
    assert check_length("fine", 2, 10, "instruction") is None


def test_repetition():
    looped = "the answer is four " * 8
    assert repeated_ngram_ratio(looped, 4) == 1 - 4 / 29
    assert check_repetition(looped, 4, 0.3) == Finding("repetition", "repeated 4-gram ratio 0.86 > 0.30")
    assert check_repetition(ANSWER, 4, 0.3) is None
    assert repeated_ngram_ratio("yes yes yes", 4) == 0.0  # too short to judge


def test_garbled_text():
    assert check_garbled("The cafÃ© is â€œniceâ€\x9d", 0.2) == Finding(
        "garbled", "garbled ratio 1.00 > 0.20 (0 U+FFFD, 0 control, 8 mojibake chars)")
    assert check_garbled("ĠTheĠcatĠsat", 0.2).reason == "garbled"
    assert check_garbled("null\x00byte", 0.2) == Finding(
        "garbled", "garbled ratio 1.00 > 0.20 (0 U+FFFD, 1 control, 0 mojibake chars)")
    assert check_garbled("bad \ufffd\ufffd bytes", 0.2).detail.endswith(
        "(2 U+FFFD, 0 control, 0 mojibake chars)")
    clean_texts = ("Café’s crème brûlée — très « bon », ½ cup at 90 °C.",
                   "质数是只有两个因数的自然数。", "tab\tand\nnewline")
    for clean in clean_texts:
        assert check_garbled(clean, 0.2) is None, clean


def test_code_fences():
    assert check_code_fences("```python\nprint(1)\n") == Finding(
        "unbalanced_code_fence", "1 ``` fence lines: a code block is not closed")
    assert check_code_fences("```python\nprint(1)\n```\nand `inline` code") is None


def test_json_only_when_asked():
    asks = "Return the three largest primes below 20 as a JSON array."
    assert check_json('Sure! ```json\n[19, 17, 13]\n```', asks) is None
    assert check_json('The answer: {"primes": [19, 17, 13]}. Done.', asks) is None
    assert check_json('{"primes": [19, 17, 13]', asks).reason == "invalid_json"
    assert check_json('{"primes": [19, 17, 13]', "What is JSON used for?") is None


def test_script_language():
    assert script_language("写一个Python函数计算阶乘") == "zh"
    assert script_language("What does 你好 mean?") == "en"
    assert script_language("Quelle est la capitale de la France ?") == "en"  # script level: Latin
    assert script_language("Привет, мир") == "other"
    assert script_language("2 + 2 = 4") == ""


def test_language_checks():
    assert check_language_allowed("Как дела?", ["en", "zh"]) == Finding(
        "wrong_language", "script other (han 0.00, latin 0.00, other 1.00); allowed: en, zh")
    assert check_language_allowed("Как дела?", []) is None
    zh = "用Python写一个计算阶乘的函数。"
    assert check_language_match("Here is the function.", zh) == Finding(
        "language_mismatch", "instruction is zh, response is en (han 0.00, latin 1.00, other 0.00)")
    code_answer = "函数如下：\n```python\ndef fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n```"
    assert check_language_match(code_answer, zh) is None  # code does not count
    assert check_language_match("你好，世界", "Translate 'hello, world' into Chinese.") is None
    assert check_language_match("42", zh) is None


def test_dominant_reason_breaks_ties_by_check_order():
    assert dominant_reason([Finding("repetition", ""), Finding("truncated", "")]) == "truncated"
    findings = [Finding("truncated", ""), Finding("garbled", ""), Finding("garbled", "")]
    assert dominant_reason(findings) == "garbled"


# -- the stage --------------------------------------------------------------------------------
def test_stage_keeps_good_answers_and_rejects_with_exact_reasons():
    cases = {
        "truncated": (INSTRUCTION, "cut off", "also cut"),
        "instruction_too_short": ("Why?", ANSWER),
        "wrong_language": ("Почему сумма двух чётных чисел чётна?", ANSWER),
        "no_responses": (INSTRUCTION,),
        "repetition": (INSTRUCTION, "even even even even " * 10),
        "unbalanced_code_fence": ("Write a Python function that doubles a number.", "```python\ndef f(x):"),
        "invalid_json": ("Give the first three primes as a JSON array.", "[2, 3, 5"),
        "language_mismatch": ("为什么两个偶数之和一定是偶数？", ANSWER),
        "garbled": (INSTRUCTION, "Ã©Ã¨Ã  â€œâ€\x9d"),
    }
    records = [record(*texts, seed=name, finish="length" if name == "truncated" else "stop")
               for name, texts in cases.items()]
    records.append(Record(seed_id="kept", instruction=INSTRUCTION, responses=[
        Response(ANSWER, finish_reason="stop"), Response("A truncated ans", finish_reason="length")]))
    kept, rejected, counters = run_rules(records)

    [good] = kept
    assert good.seed_id == "kept" and [r.text for r in good.responses] == [ANSWER]
    assert good.language == "en"
    assert json.loads(good.lineage[-1].params_json) == {"dropped": {"1": "truncated"}}
    assert sorted((r.seed_id, r.reject_reason) for r in rejected) == sorted((name, name) for name in cases)
    details = {r.seed_id: r.reject_detail for r in rejected}
    assert details["truncated"] == ("response 0: truncated (finish_reason=length: hit max_tokens); "
                                    "response 1: truncated (finish_reason=length: hit max_tokens)")
    assert details["instruction_too_short"] == "instruction: 4 chars < 12"
    # 40 words, 37 4-grams, 1 distinct
    assert details["repetition"] == "response 0: repetition (repeated 4-gram ratio 0.97 > 0.30)"
    assert all(r.reject_stage == "rules" for r in rejected)
    assert counters["in"] == 10 and counters["kept"] == 1 and counters["out"] == 1
    rejected_counts = {k: v for k, v in counters.items() if k.startswith("rejected:")}
    assert rejected_counts == {f"rejected:{name}": 1 for name in cases}


def test_truncated_kept_when_allowed():
    out = apply_rules(record(INSTRUCTION, ANSWER, finish="length"), RulesConfig(reject_truncated=False))
    assert out.status == KEPT and len(out.responses) == 1


# -- properties -------------------------------------------------------------------------------
texts = st.text(max_size=300) | st.sampled_from([ANSWER, "```json\n{}\n```", "你好世界" * 20, "Ã©" * 10,
                                                 "word " * 30, "Return it as JSON."])


@settings(max_examples=200, deadline=None)
@given(texts, texts, st.sampled_from(["stop", "length", ""]))
def test_checks_never_crash_and_give_known_reasons(instruction, text, finish):
    found = instruction_finding(instruction, CFG)
    assert found is None or (found.reason in INSTRUCTION_REASONS and found.detail)
    found = response_finding(Response(text, finish_reason=finish), instruction, CFG)
    assert found is None or (found.reason in RESPONSE_REASONS and found.detail)


@settings(max_examples=100, deadline=None)
@given(texts, st.lists(st.tuples(texts, st.sampled_from(["stop", "length"])), max_size=4))
def test_apply_rules_always_keeps_or_gives_a_reason(instruction, answers):
    responses = [Response(t, finish_reason=f) for t, f in answers]
    rec = Record(seed_id="s", instruction=instruction, responses=responses)
    out = apply_rules(rec, CFG)
    if out.status == KEPT:
        assert 1 <= len(out.responses) <= len(answers)
        assert all(response_finding(r, instruction, CFG) is None for r in out.responses)
    else:
        assert out.reject_reason in INSTRUCTION_REASONS | set(RESPONSE_REASONS) | {"no_responses"}
