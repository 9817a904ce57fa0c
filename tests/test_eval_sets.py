"""The shipped eval sets: complete, reproducible, correct answers, and not contaminated.

Contamination is checked with 8-grams of normalized words (Tülu 3's unit). The sets written for this
project (math, judge) share no 8-gram with a shipped seed, nor with each other or HumanEval (the judge
instructions must not leak math problems or HumanEval tasks); items shorter than 8 words are compared
whole. HumanEval is not ours: for it we apply Tülu 3's rule (an item is contaminated when half its
8-grams occur in the seeds) — one HumanEval docstring lists the primes below 20, as a seed does.
"""
from __future__ import annotations

import importlib.util
import json
import re
import unicodedata
from fractions import Fraction
from pathlib import Path

import pytest

from datagen.readers import eval_sets

ROOT = Path(__file__).resolve().parents[1]
N = 8


def words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.findall(r"[\u4e00-\u9fff]|[^\W_]+", text)


def grams(text: str, n: int = N) -> set[tuple[str, ...]]:
    tokens = words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def contains(text: str, item: str) -> bool:
    """Does `text` contain `item` (an item shorter than N words) as a run of words?"""
    hay, needle = words(text), words(item)
    return any(hay[i:i + len(needle)] == needle for i in range(len(hay) - len(needle) + 1))


def overlaps(items: list[str], others: list[str]) -> list[tuple[str, str]]:
    index: dict[tuple, str] = {}
    for other in others:
        for g in grams(other):
            index.setdefault(g, other)
    hits = []
    for item in items:
        if len(words(item)) < N:
            hits += [(item, o) for o in others if contains(o, item)]
        else:
            hits += [(item, index[g]) for g in grams(item) if g in index][:1]
    return hits


@pytest.fixture(scope="module")
def seeds():
    return [json.loads(line)["text"] for line in (ROOT / "datagen/data/seeds.jsonl").read_text().splitlines()
            if line.strip()]


@pytest.fixture(scope="module")
def sets():
    return {name: eval_sets.load(name) for name in eval_sets.NAMES}


def test_sizes_and_coverage(sets, seeds):
    assert len(sets["math"]) == 600 and len(sets["code"]) == 164
    assert 60 <= len(sets["judge"]) <= 100
    levels = [item["level"] for item in sets["math"]]
    assert {level: levels.count(level) for level in set(levels)} == {1: 150, 2: 150, 3: 150, 4: 150}
    assert {item["level"] for item in sets["math"][300:304]} == {1, 2, 3, 4}  # the second block interleaved too
    assert {item["level"] for item in eval_sets.load("math", limit=4)} == {1, 2, 3, 4}
    seed_domains = {json.loads(line)["domain"] for line in (ROOT / "datagen/data/seeds.jsonl").read_text().splitlines()}
    assert {item["domain"] for item in sets["judge"]} == seed_domains
    assert {item["domain"] for item in eval_sets.load("judge", limit=5)} == seed_domains
    assert {item["lang"] for item in eval_sets.load("judge", limit=10)} == {"en", "zh"}
    for name, items in sets.items():
        assert len({item["id"] for item in items}) == len(items), f"{name}: duplicate ids"
        assert len({item["text"] for item in items}) == len(items), f"{name}: duplicate items"


def test_the_math_file_is_what_its_seeded_script_writes():
    spec = importlib.util.spec_from_file_location("make_math_eval", ROOT / "scripts/make_math_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped = (ROOT / "datagen/data/eval/math.jsonl").read_text(encoding="utf-8")
    assert module.render(module.make_items(20261201, 75, blocks=2)) == shipped
    assert shipped.startswith(module.render(module.make_items(20261201, 75)))  # growing the set kept the first 300


def test_arithmetic_answers_are_right(sets):
    checked = 0
    for item in sets["math"]:
        expr = re.fullmatch(r"What is ([\d\s+\-×÷()]+)\?", item["question"])
        if expr:
            value = eval(expr.group(1).replace("×", "*").replace("÷", "/"))  # noqa: S307 - digits and operators only
            assert Fraction(value).limit_denominator() == Fraction(item["answer"]), item
            checked += 1
        equation = re.fullmatch(r"Solve for x: (\d+)x \+ (\d+) = (\d+)\. What is x\?", item["question"])
        if equation:
            a, b, c = map(int, equation.groups())
            assert a * int(item["answer"]) + b == c, item
            checked += 1
    assert checked > 100


def test_every_math_answer_is_read_by_math_verify(sets):
    from rewards.math_verifier import check_answer

    for item in sets["math"]:
        assert check_answer(f"The answer is {item['answer']}.", item["answer"]).correct == 1.0, item


def coverage(item: str, others: list[str]) -> float:
    """Share of the item's 8-grams that occur in `others` (Tülu 3's decontamination measure)."""
    mine, theirs = grams(item), set().union(*(grams(o) for o in others))
    return len(mine & theirs) / len(mine) if mine else 0.0


@pytest.mark.parametrize("name", ["math", "judge"])
def test_our_sets_share_no_ngram_with_a_seed(sets, seeds, name):
    hits = overlaps([item["text"] for item in sets[name]], seeds)
    assert not hits, f"{name} item overlaps a seed: {hits[:3]}"


def test_humaneval_is_not_contaminated_by_the_seeds(sets, seeds):
    worst = max(sets["code"], key=lambda item: coverage(item["text"], seeds))
    assert coverage(worst["text"], seeds) < 0.5, worst["id"]


@pytest.mark.parametrize("a,b", [("judge", "math"), ("judge", "code"), ("math", "code")])
def test_the_sets_are_disjoint_from_each_other(sets, a, b):
    hits = overlaps([item["text"] for item in sets[a]], [item["text"] for item in sets[b]])
    assert not hits, f"{a} item overlaps {b}: {hits[:3]}"


def test_bad_set_requests_are_clear_errors():
    with pytest.raises(eval_sets.EvalSetError, match="unknown eval set"):
        eval_sets.load("trivia")
    with pytest.raises(eval_sets.EvalSetError, match="at least 1"):
        eval_sets.load("math", limit=0)
    assert len(eval_sets.benchmark_texts("judge")) == len(eval_sets.load("judge"))
