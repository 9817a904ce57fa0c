"""Decontamination as practised: Tülu 3's n-gram coverage, paraphrases confirmed by a diff ratio over
content words, and the shipped eval sets (math, HumanEval, judge) as the default benchmarks."""
from __future__ import annotations

import json

from datagen import SHIPPED_SEEDS

from datagen.readers import eval_sets
from datagen.filters.calibration import load_pairs
from datagen.stages.decontam import DecontamConfig, DecontamStage, Indexes
from datagen.filters.overlap import OverlapIndex, ParaphraseIndex, content_words, task_statement
from datagen.record import Record
from stage_harness import run_transform

# What SmolLM2-135M wrote in the demo from a code seed about list comprehensions (HumanEval/64 in
# other words); the default 13-gram test alone passes it.
VOWELS = "Write a Python function that takes a string and returns the number of vowels in that string."
GENERIC = [
    "Write a Python function that takes a string and returns the number of words in that string.",
    "Write a Python function that takes a list of integers and returns the sum of the even numbers.",
    "Write a Python function that returns the largest number in a list.",
    "Write a function that checks whether a string is a palindrome.",
    "What is the area of a rectangle that is 6 cm long and 4 cm wide?",
    "Explain how photosynthesis turns sunlight into chemical energy.",
    "写一个Python函数，统计列表中每个元素出现的次数。",
]


def test_humaneval_64_in_other_words_is_caught_where_the_13_gram_test_passes_it():
    records = [Record(seed_id="vowels", instruction=VOWELS)] + [Record(seed_id=f"g{i}", instruction=t)
                                                                 for i, t in enumerate(GENERIC)]
    out = run_transform(records, DecontamStage(DecontamConfig()), ["decontam"])
    assert [(r.seed_id, r.reject_stage, r.reject_reason, r.reject_detail) for r in out.rejected] == [
        ("vowels", "decontam", "contaminated_paraphrase",
         "code HumanEval/64: instruction restates the item's task (89% of the content words in order: "
         "'write function take string return number vowel string')")]
    assert sorted(r.seed_id for r in out.kept) == [f"g{i}" for i in range(len(GENERIC))]
    assert out.counters["decontam"] == {"in": 8, "kept": 7, "out": 7, "rejected:contaminated_paraphrase": 1}
    only_13_grams = Indexes(DecontamConfig(overlap_threshold=0, paraphrase_ratio=0))
    assert only_13_grams.find(VOWELS, instruction=True) is None


def test_coverage_of_an_item_by_shared_8_grams(tmp_path):
    item = ("A farmer has 17 sheep in a field and buys 5 more at the market on Monday, then sells 8 of them "
            "to a neighbour on Friday. How many sheep does the farmer have left at the end of the week?")
    bench = tmp_path / "farm.jsonl"
    bench.write_text(json.dumps({"text": item}) + "\n", encoding="utf-8")
    # a word changed every dozen words: no 13-gram survives, most 8-grams do
    edited = ("A farmer has 17 sheep in a field and gets 5 more at the market on Monday, then sells 8 of them "
              "for a neighbour on Friday. How many sheep does the farmer have remaining at the end of the week?")
    one_phrase = "Our farmer has 17 sheep in a field and buys 5 more. Does that make him rich?"
    cfg = DecontamConfig(eval_sets=[], benchmarks=[str(bench)], paraphrase_ratio=0)
    out = run_transform([Record(seed_id="edited", instruction=edited), Record(seed_id="phrase", instruction=one_phrase)],
                        DecontamStage(cfg), ["decontam"])
    assert [(r.seed_id, r.reject_reason, r.reject_detail) for r in out.rejected] == [
        ("edited", "contaminated_overlap",
         f"{bench} line 1: instruction 78% of the item's words covered by shared 8-grams")]
    assert [r.seed_id for r in out.kept] == ["phrase"]


def test_overlap_index_measures_the_share_of_the_item():
    index = OverlapIndex(n=3, threshold=0.5)
    index.add("one two three four five six seven eight", "item")
    assert index.find("zero one two three four five nine") == ("item", 0.625)  # 5 of 8 words covered
    assert index.find("one two three x six seven eight") == ("item", 0.75)  # 3 + 3 of 8 words
    assert index.find("one two x four five y seven eight") is None  # no 3-gram in common
    assert index.find("one two three") is None  # 3 of 8: below the threshold


def test_paraphrases_keep_the_items_numbers_and_need_rare_words():
    index = ParaphraseIndex(ratio=0.75, min_words=6, rare_items=3)
    index.add("Quinn has 5 coins and gets 9 more. How many coins does Quinn have now?", "math math-0001")
    assert index.find("Quinn had 5 coins and got 9 more coins. How many coins does Quinn have now?")[0] == \
        "math math-0001"
    assert index.find("Quinn has 3 coins and gets 4 more. How many coins does Quinn have now?") is None
    assert content_words("Returns the number of vowels") == ["return", "number", "vowel"]
    assert task_statement('def f(s):\n    """Count the vowels in s.\n    >>> f("ab")\n    1\n    """\n') \
        .strip() == "Count the vowels in s."


def test_chinese_restatement_of_a_judge_item():
    found = Indexes(DecontamConfig()).find("一个长方形长8厘米，宽5厘米，它的周长是多少？", instruction=True)
    assert found[0] == "contaminated_paraphrase" and found[1].startswith("judge judge-005: ")


def test_shipped_seeds_and_calibration_pairs_are_disjoint_from_the_eval_sets():
    indexes = Indexes(DecontamConfig())
    texts = [json.loads(line)["text"] for line in SHIPPED_SEEDS.read_text(encoding="utf-8").splitlines() if line]
    texts += [t for p in load_pairs() for t in (p.question, p.good, p.bad)]
    assert [(t, indexes.find(t, instruction=True)) for t in texts if indexes.find(t, instruction=True)] == []
    assert {name: len(eval_sets.load(name)) for name in DecontamConfig().eval_sets} == \
        {"math": 600, "code": 164, "judge": 84}
