"""Training math problems for the online DPO rounds: exact answers a verifier can check, held apart from
the eval set.

The held-out eval set (`datagen/data/eval/math.jsonl`, scripts/make_math_eval.py) and these problems
cover the same skills at the same four levels, but **no template is shared**: every question here is
worded its own way ("Calculate 17 × 6.", "A baker fills 4 trays with 9 rolls each ...") and the
numbers are drawn from another seed. `disjoint_from_eval` then drops any problem whose text, once
normalised, equals an eval question or shares an 8-word run with one (the eval sets' contamination
unit), and counts what it dropped. So a gain on the eval set measures transfer to problems the
policy never saw worded that way, not memorised templates.

Rows: `prompt` (the question as the user turn, as the eval asks it), `reference` (the exact answer:
integer, short decimal or reduced fraction), `level`, `kind`, `lang`.
"""
from __future__ import annotations

import random
import re
import unicodedata
from fractions import Fraction
from typing import Callable

NAMES = ["Ada", "Bruno", "Carla", "Dev", "Elif", "Femi", "Gita", "Hugo", "Ines", "Jun", "Kofi", "Lena",
         "Marco", "Nia", "Omar", "Pia", "Ravi", "Sofia", "Tomas", "Uma"]
NAMES_ZH = ["小李", "小王", "小张", "小陈", "小林", "小周"]
ITEMS = ["apples", "books", "toy cars", "buttons", "crayons", "eggs", "leaves", "ribbons"]
ITEMS_ZH = {"apples": "个苹果", "books": "本书", "toy cars": "辆玩具车", "buttons": "颗纽扣", "crayons": "支蜡笔",
            "eggs": "个鸡蛋", "leaves": "片树叶", "ribbons": "条丝带"}
Problem = tuple[str, str, str, Fraction]  # kind, lang, question, exact value


def fmt(value: Fraction) -> str:
    """An exact answer as text: integer, short decimal, or reduced fraction (as the eval set writes it)."""
    if value.denominator == 1:
        return str(value.numerator)
    if 10 ** 4 % value.denominator == 0:
        return f"{float(value):g}"
    return f"{value.numerator}/{value.denominator}"


def _arith(r: random.Random, a: int, b: int, op: str) -> Problem:
    verb = r.choice(["Calculate", "Compute", "Work out"])
    value = {"+": a + b, "-": a - b, "×": a * b, "÷": Fraction(a, b)}[op]
    return "arithmetic", "en", f"{verb} {a} {op} {b}.", Fraction(value)


def level1(r: random.Random) -> Problem:
    if r.random() < 0.5:
        op = r.choice(["+", "-", "×"])
        a, b = (r.randint(2, 5), r.randint(2, 5)) if op == "×" else (r.randint(1, 9), r.randint(1, 9))
        return _arith(r, max(a, b), min(a, b), op) if op == "-" else _arith(r, a, b, op)
    name, thing, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(1, 6), r.randint(1, 4)
    if r.random() < 0.5:
        return "word_add", "en", f"There are {a} {thing} in a bag. {name} puts in {b} more. " \
                                 f"How many {thing} are in the bag?", Fraction(a + b)
    return "word_sub", "en", f"A basket holds {a + b} {thing}. {name} takes out {b}. " \
                             f"How many {thing} stay in the basket?", Fraction(a)


def level2(r: random.Random) -> Problem:
    if r.random() < 0.5:
        op = r.choice(["+", "-", "×"])
        a, b = r.randint(2, 19), r.randint(2, 9)
        return _arith(r, max(a, b) + r.randint(1, 9), min(a, b), op) if op == "-" else _arith(r, a, b, op)
    name, thing, a, b = r.choice(NAMES), r.choice(ITEMS), r.randint(3, 12), r.randint(2, 9)
    if r.random() < 0.5:
        return "word_add", "en", f"{name} collected {a} {thing} on Monday and {b} on Tuesday. " \
                                 f"How many {thing} did {name} collect in all?", Fraction(a + b)
    return "word_sub", "en", f"{name} had {a + b} {thing}, then lost {b} of them. " \
                             f"How many {thing} does {name} still have?", Fraction(a)


def level3(r: random.Random) -> Problem:
    roll = r.random()
    if roll < 0.5:
        op = r.choice(["+", "-", "×", "÷"])
        if op == "÷":
            b, q = r.randint(3, 9), r.randint(4, 15)
            return _arith(r, b * q, b, op)
        if op == "×":
            return _arith(r, r.randint(12, 49), r.randint(3, 9), op)
        a, b = r.randint(25, 99), r.randint(11, 79)
        return _arith(r, max(a, b) + 10, min(a, b), op) if op == "-" else _arith(r, a, b, op)
    if roll < 2 / 3:
        name, thing, k, each = r.choice(NAMES_ZH), r.choice(ITEMS), r.randint(3, 6), r.randint(4, 12)
        return "word_group", "zh", f"{name}把{k * each}{ITEMS_ZH[thing]}平均放进{k}个盒子里。每个盒子里有多少" \
                                   f"{ITEMS_ZH[thing]}？", Fraction(each)
    rows, per_row = r.randint(3, 9), r.randint(4, 15)
    return "word_rows", "en", f"A hall has {rows} rows of chairs with {per_row} chairs in each row. " \
                              "How many chairs are there?", Fraction(rows * per_row)


def level4(r: random.Random) -> Problem:
    return r.choice(LEVEL4)(r)


def _two_ops(r: random.Random) -> Problem:
    a, b, c = r.randint(3, 12), r.randint(3, 12), r.randint(2, 30)
    if r.random() < 0.5 and a * b > c:
        return "two_ops", "en", f"Calculate {a} × {b} − {c}.", Fraction(a * b - c)
    return "two_ops", "en", f"Compute {c} + {a} × {b}.", Fraction(c + a * b)


def _equation(r: random.Random) -> Problem:
    a, x, b = r.randint(2, 9), r.randint(2, 15), r.randint(1, 20)
    if a * x > b:
        return "equation", "en", f"Find x if {a}x − {b} = {a * x - b}.", Fraction(x)
    return "equation", "en", f"Find x if {b} + {a}x = {a * x + b}.", Fraction(x)


def _percent(r: random.Random) -> Problem:
    pct, base = r.choice([5, 10, 20, 25, 50, 60, 80]), 10 * r.randint(2, 40)
    return "percent", "en", f"A jacket costs {base} dollars. How many dollars is {pct} percent of that price?", \
        Fraction(pct * base, 100)


def _fraction(r: random.Random) -> Problem:
    b, d = r.sample([2, 3, 4, 5, 6, 8], 2)
    a, c = r.randint(1, b - 1), r.randint(1, d - 1)
    first, second = sorted([Fraction(a, b), Fraction(c, d)], reverse=True)
    if first == second:
        return "fractions", "en", f"Add {a}/{b} and {c}/{d}. Write the result as a reduced fraction.", first + second
    return "fractions", "en", f"Subtract {second.numerator}/{second.denominator} from {first.numerator}/" \
                              f"{first.denominator}. Write the result as a reduced fraction.", first - second


def _mean(r: random.Random) -> Problem:
    values = [r.randint(4, 50) for _ in range(3)]
    values[-1] += (-sum(values)) % 3
    return "average", "en", f"Three tests gave the scores {values[0]}, {values[1]} and {values[2]}. " \
                            "What is the mean score?", Fraction(sum(values), 3)


def _speed(r: random.Random) -> Problem:
    speed, hours = 4 * r.randint(3, 12), r.choice([2, 3, 4, 5])
    return "rate", "en", f"A cyclist rides {speed * hours} km in {hours} hours at a steady pace. " \
                         "What is the speed in km per hour?", Fraction(speed)


def _change_zh(r: random.Random) -> Problem:
    name, count, price = r.choice(NAMES_ZH), r.randint(2, 6), r.randint(3, 9)
    paid = 10 * ((count * price) // 10 + 1 + r.randint(0, 2))
    return "word_change", "zh", f"{name}买{count}支钢笔，一支{price}元，给了店员{paid}元。店员要找给{name}几元？", \
        Fraction(paid - count * price)


def _bakery(r: random.Random) -> Problem:
    trays, per_tray, sold, bags = r.randint(3, 8), r.randint(6, 12), r.randint(2, 9), r.randint(2, 5)
    left = trays * per_tray - sold
    left -= left % bags
    sold = trays * per_tray - left
    return "word_three_step", "en", f"A baker fills {trays} trays with {per_tray} rolls each, sells {sold} rolls, " \
                                    f"and packs the others into {bags} bags with the same number of rolls. " \
                                    "How many rolls go into each bag?", Fraction(left // bags)


LEVEL4 = [_two_ops, _equation, _percent, _fraction, _mean, _speed, _change_zh, _bakery]
LEVELS: dict[int, Callable[[random.Random], Problem]] = {1: level1, 2: level2, 3: level3, 4: level4}


def normalized_words(text: str) -> list[str]:
    """Words as the eval sets' contamination check reads them (NFKC, casefolded, CJK per character)."""
    return re.findall(r"[\u4e00-\u9fff]|[^\W_]+", unicodedata.normalize("NFKC", text).casefold())


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = normalized_words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def make_problems(count: int, seed: int) -> list[dict]:
    """`count` distinct problems, levels interleaved (1, 2, 3, 4, 1, ...), deterministic for a seed."""
    r, seen, rows = random.Random(seed), set(), []
    attempts = 0
    while len(rows) < count:
        attempts += 1
        if attempts > 50 * count + 1000:
            raise ValueError(f"could not draw {count} distinct math problems (got {len(rows)}); ask for fewer")
        level = len(rows) % 4 + 1
        kind, lang, question, value = LEVELS[level](r)
        if question in seen:
            continue
        seen.add(question)
        rows.append({"prompt": question, "reference": fmt(value), "level": level, "kind": kind, "lang": lang})
    return rows


def as_seed(row: dict) -> dict:
    """A problem as a referenced seed for pipelines.synth: the question as written, its exact answer as
    the reference (checked against the answers, never shown to a model)."""
    return {"instruction": row["prompt"], "reference": row["reference"], "domain": "math",
            "source": f"math_train:level{row['level']}:{row['kind']}"}


def disjoint_from_eval(rows: list[dict], eval_questions: list[str], n: int = 8) -> tuple[list[dict], dict]:
    """Rows sharing no normalised question, no `n`-word run and no restated short question with an eval
    question ("Compute 5 + 2." states what "What is 5 + 2?" asks: the decontam stage's `short_key`);
    counts of drops."""
    from datagen.filters.overlap import short_key

    whole = {tuple(normalized_words(q)) for q in eval_questions}
    grams = set().union(*(ngrams(q, n) for q in eval_questions)) if eval_questions else set()
    stated = {key for key in map(short_key, eval_questions) if len(key) >= 2}
    kept, dropped = [], {"same_question": 0, "shared_ngram": 0, "restated_question": 0}
    for row in rows:
        words = tuple(normalized_words(row["prompt"]))
        if words in whole:
            dropped["same_question"] += 1
        elif len(words) >= n and ngrams(row["prompt"], n) & grams:
            dropped["shared_ngram"] += 1
        elif short_key(row["prompt"]) in stated:
            dropped["restated_question"] += 1
        else:
            kept.append(row)
    return kept, dropped
