"""Write the held-out math eval set: `python scripts/make_math_eval.py [--seed 20261201] [--per_level 75] [--blocks 2]`.

Deterministic: the same seed and size give the same file, byte for byte (a test regenerates it and
compares). Four difficulty levels, written for this project and checked against the shipped seeds
for contamination (tests/test_eval_sets.py):

  1  one operation on one-digit numbers; one-step word problems with totals up to 10
  2  one operation on numbers up to 28; one-step word problems with small numbers
  3  one operation on two-digit numbers (exact division included); one-step word problems
  4  several steps: two operations, linear equations, percentages, fractions, averages, rates,
     two- and three-step word problems

Sized for the embedded SmolLM2-135M-Instruct (greedy): it gets most of level 1 and almost none of
level 4 right, so a better or worse model moves the score (measured figures: README of the eval).

Items are interleaved level by level (1, 2, 3, 4, 1, ...), so the first N items of the file — what
`--limit N` takes — cover every level. About one word problem in six is in Chinese, as the seeds are.
Each row: id, level, kind, lang, question, answer (exact: an integer, a decimal or a reduced
fraction), and `text` (= question, the field datagen's decontamination reads).
"""
from __future__ import annotations

import argparse
import json
import random
from fractions import Fraction
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "datagen" / "data" / "eval" / "math.jsonl"
NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jonas", "Kira", "Liam",
         "Mina", "Noah", "Olga", "Priya", "Quinn", "Rosa", "Sami", "Tara"]
NAMES_ZH = ["小明", "小红", "小刚", "小丽", "小华", "小军"]
THINGS = ["marbles", "stickers", "pencils", "shells", "cards", "stamps", "beads", "coins"]
THINGS_ZH = {"marbles": "颗弹珠", "stickers": "张贴纸", "pencils": "支铅笔", "shells": "个贝壳", "cards": "张卡片",
             "stamps": "张邮票", "beads": "颗珠子", "coins": "枚硬币"}
GOODS = [("notebook", "notebooks"), ("sandwich", "sandwiches"), ("ticket", "tickets"), ("plant", "plants"),
         ("ball", "balls"), ("lamp", "lamps")]


def fmt(value: Fraction) -> str:
    """An exact answer as text: integer, short decimal, or reduced fraction."""
    if value.denominator == 1:
        return str(value.numerator)
    if 10 ** 4 % value.denominator == 0:
        return f"{float(value):g}"
    return f"{value.numerator}/{value.denominator}"


# -- level 1 -----------------------------------------------------------------------------------
def lv1_arith(r: random.Random):
    op = r.choice("+-*")
    a, b = r.randint(1, 9), r.randint(1, 9)
    if op == "-":
        a, b = max(a, b), min(a, b)
    if op == "*":
        a, b = r.randint(2, 5), r.randint(2, 5)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return "arithmetic", "en", f"What is {a} {op.replace('*', '×')} {b}?", value


def lv1_word(r: random.Random):
    name, thing = r.choice(NAMES), r.choice(THINGS)
    a, b = r.randint(1, 6), r.randint(1, 4)
    if r.random() < 0.5:
        return "word_add", "en", f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b
    a += b
    return "word_sub", "en", f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?", a - b


# -- level 2 -----------------------------------------------------------------------------------
def lv2_arith(r: random.Random):
    op = r.choice("+-*")
    a, b = r.randint(2, 19), r.randint(2, 9)
    if op == "-":
        a, b = max(a, b) + r.randint(1, 9), min(a, b)
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    return "arithmetic", "en", f"What is {a} {op.replace('*', '×')} {b}?", value


def lv2_word(r: random.Random):
    name, thing = r.choice(NAMES), r.choice(THINGS)
    a, b = r.randint(3, 12), r.randint(2, 9)
    if r.random() < 0.5:
        return "word_add", "en", f"{name} has {a} {thing} and gets {b} more. How many {thing} does {name} have now?", a + b
    a += b
    return "word_sub", "en", f"{name} had {a} {thing} and gave away {b}. How many {thing} are left?", a - b


# -- level 3 -----------------------------------------------------------------------------------
def lv3_arith(r: random.Random):
    op = r.choice("+-*/")
    if op == "/":
        b, q = r.randint(3, 9), r.randint(4, 15)
        return "arithmetic", "en", f"What is {b * q} ÷ {b}?", q
    if op == "*":
        a, b = r.randint(12, 49), r.randint(3, 9)
        return "arithmetic", "en", f"What is {a} × {b}?", a * b
    a, b = r.randint(25, 99), r.randint(11, 79)
    if op == "-":
        a, b = max(a, b) + 10, min(a, b)
    return "arithmetic", "en", f"What is {a} {op} {b}?", a + b if op == "+" else a - b


def lv3_word(r: random.Random):
    (one, many), count, price = r.choice(GOODS), r.randint(3, 9), r.randint(4, 15)
    if r.random() < 1 / 3:
        name, thing = r.choice(NAMES_ZH), r.choice(THINGS)
        k, each = r.randint(3, 6), r.randint(4, 12)
        return "word_share", "zh", f"{name}有{k * each}{THINGS_ZH[thing]}，平均分给{k}个朋友。每个朋友分到多少{THINGS_ZH[thing]}？", each
    if r.random() < 0.5:
        return "word_total", "en", f"One {one} costs {price} dollars. How many dollars do {count} {many} cost?", count * price
    name, k, each = r.choice(NAMES), r.randint(3, 8), r.randint(4, 12)
    thing = r.choice(THINGS)
    return ("word_share", "en", f"{name} shares {k * each} {thing} equally among {k} friends. "
            f"How many {thing} does each friend get?", each)


# -- level 4 -----------------------------------------------------------------------------------
def lv4_two_ops(r: random.Random):
    a, b, c = r.randint(3, 12), r.randint(3, 12), r.randint(5, 40)
    if r.random() < 0.5:
        return "two_ops", "en", f"What is {a} × {b} + {c}?", a * b + c
    return "two_ops", "en", f"What is ({a} + {c}) × {b}?", (a + c) * b


def lv4_equation(r: random.Random):
    a, x, b = r.randint(2, 9), r.randint(2, 15), r.randint(1, 30)
    return "equation", "en", f"Solve for x: {a}x + {b} = {a * x + b}. What is x?", x


def lv4_change(r: random.Random):
    (one, many), count, price = r.choice(GOODS), r.randint(2, 6), r.randint(3, 9)
    paid = 10 * ((count * price) // 10 + 1 + r.randint(0, 2))
    if r.random() < 1 / 3:
        name = r.choice(NAMES_ZH)
        return ("word_change", "zh", f"{name}买了{count}本笔记本，每本{price}元，付了{paid}元。应该找回多少元？",
                paid - count * price)
    name = r.choice(NAMES)
    return ("word_change", "en", f"{name} buys {count} {many} at {price} dollars each and pays with {paid} dollars. "
            "How much change does " + name + " get, in dollars?", paid - count * price)


def lv4_percent(r: random.Random):
    pct, base = r.choice([10, 15, 20, 25, 30, 40, 75]), 20 * r.randint(2, 30)
    return "percent", "en", f"What is {pct}% of {base}?", Fraction(pct * base, 100)


def lv4_fraction(r: random.Random):
    b, d = r.sample([2, 3, 4, 5, 6, 8], 2)
    a, c = r.randint(1, b - 1), r.randint(1, d - 1)
    return "fractions", "en", f"What is {a}/{b} + {c}/{d}? Give the answer as a fraction in lowest terms.", \
        Fraction(a, b) + Fraction(c, d)


def lv4_average(r: random.Random):
    values = [r.randint(5, 60) for _ in range(4)]
    values[-1] += (-sum(values)) % 4  # the mean is a whole number
    return "average", "en", f"What is the average of {', '.join(map(str, values[:-1]))} and {values[-1]}?", \
        Fraction(sum(values), 4)


def lv4_rate(r: random.Random):
    speed, hours = 6 * r.randint(5, 15), r.choice([Fraction(3, 2), Fraction(5, 2), Fraction(7, 2)])
    return ("rate", "en", f"A train travels at {speed} km per hour for {float(hours):g} hours. "
            "How many kilometres does it travel?", speed * hours)


def lv4_three_steps(r: random.Random):
    name, thing = r.choice(NAMES), r.choice(THINGS)
    boxes, per_box, lost, friends = r.randint(3, 8), r.randint(6, 12), r.randint(2, 9), r.randint(2, 5)
    left = boxes * per_box - lost
    left -= left % friends
    lost = boxes * per_box - left
    return ("word_three_step", "en", f"{name} has {boxes} boxes with {per_box} {thing} in each box, loses {lost} "
            f"of them, and shares the rest equally among {friends} friends. How many {thing} does each friend get?",
            left // friends)


LEVELS = {1: [lv1_arith, lv1_word], 2: [lv2_arith, lv2_word], 3: [lv3_arith, lv3_word],
          4: [lv4_two_ops, lv4_equation, lv4_change, lv4_percent, lv4_fraction, lv4_average, lv4_rate, lv4_three_steps]}


def make_level(level: int, count: int, r: random.Random, seen: set[str]) -> list[dict]:
    items = []
    while len(items) < count:
        kind, lang, question, value = r.choice(LEVELS[level])(r)
        if question in seen:
            continue
        seen.add(question)
        items.append({"level": level, "kind": kind, "lang": lang, "question": question,
                      "answer": fmt(Fraction(value)), "text": question})
    return items


def make_items(seed: int, per_level: int, blocks: int = 1) -> list[dict]:
    """`blocks` blocks of `per_level` items per level, drawn one after the other from one generator: a file
    of more blocks starts with the file of fewer, byte for byte (ids and items kept when the set grows)."""
    r, seen, rows = random.Random(seed), set(), []
    for _ in range(blocks):
        levels = [make_level(level, per_level, r, seen) for level in sorted(LEVELS)]
        rows += [item for group in zip(*levels) for item in group]  # interleaved: any prefix covers every level
    return [{"id": f"math-{i:04d}", **row} for i, row in enumerate(rows)]


def render(items: list[dict]) -> str:
    return "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--per_level", type=int, default=75)
    parser.add_argument("--blocks", type=int, default=2, help="600 items; the first block is the 300-item set "
                                                              "of the figures measured before 2026-12-07")
    parser.add_argument("--output", default=str(OUT))
    args = parser.parse_args()
    items = make_items(args.seed, args.per_level, args.blocks)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(render(items), encoding="utf-8")
    print(f"wrote {len(items)} items to {args.output}")


if __name__ == "__main__":
    main()
