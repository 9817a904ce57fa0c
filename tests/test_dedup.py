"""Near-duplicate removal: LSH banding finds twins, the lowest-ranked twin survives, in any order."""
from __future__ import annotations

import json

import apache_beam as beam
import pytest

from datagen.stages.dedup import (BandKeys, DedupConfig, DedupStage, estimated_jaccard, lsh_bands, rank_key,
                           shingles)
from datagen.record import Record
from stage_harness import run_transform

BASE = ("Write a Python function that returns the n-th Fibonacci number using an iterative loop, "
        "and explain why the loop runs in linear time while the naive recursion is exponential.")
TWIN = BASE.replace("is exponential.", "is exponentially slow.")  # Jaccard 27/30 on 3-word shingles
COUSIN = BASE.replace("iterative loop", "memoized recursion").replace("the loop", "it")  # ~0.6
OTHER = "Prove that there are infinitely many prime numbers, in the style of Euclid."


def run_dedup(records, cfg=DedupConfig(), reshuffle=False):
    stage = beam.Reshuffle() | DedupStage(cfg) if reshuffle else DedupStage(cfg)
    out = run_transform(records, stage, ["dedup"])
    return out.kept, out.rejected, out.counters["dedup"]


def signature(text, cfg=DedupConfig()):
    fn = BandKeys(cfg)
    fn.setup()
    return fn.signature(text)


def test_shingles_and_bands():
    assert shingles("The cat, the CAT!", 3) == {"the cat the", "cat the cat"}
    assert shingles("Two words", 3) == {"two words"}
    assert shingles("?!", 3) == set()
    assert lsh_bands(0.8, 128) == (9, 13)  # datasketch's optimum for this threshold


def test_signatures_estimate_jaccard():
    true = len(shingles(BASE, 3) & shingles(TWIN, 3)) / len(shingles(BASE, 3) | shingles(TWIN, 3))
    estimate = estimated_jaccard(signature(BASE), signature(TWIN))
    assert true == 27 / 30 and estimate == pytest.approx(true, abs=0.1)
    assert estimated_jaccard(signature(BASE), signature(OTHER)) < 0.2
    assert signature(BASE) == signature(BASE.upper())  # normalized words
    assert signature("...") is None


def make(instruction, seed):
    return Record(seed_id=seed, domain="code", instruction=instruction)


def test_lowest_ranked_twin_survives_in_any_order():
    base, twin, cousin, other = make(BASE, "s1"), make(TWIN, "s2"), make(COUSIN, "s3"), make(OTHER, "s4")
    copy = make(BASE, "s1")  # an exact copy: same id and content
    empty_a, empty_b = make("", "e1"), make("", "e2")  # no words: never twins
    inputs = [base, twin, cousin, other, copy, empty_a, empty_b]
    winner, loser = sorted([base, twin], key=rank_key)

    kept, rejected, counters = run_dedup(inputs)
    assert sorted(r.id for r in kept) == sorted([winner.id, cousin.id, other.id, empty_a.id, empty_b.id])
    details = sorted(r.reject_detail for r in rejected)
    assert [r.reject_reason for r in rejected] == ["near_duplicate", "near_duplicate"]
    jaccard = estimated_jaccard(signature(BASE), signature(TWIN))
    if winner is base:  # the twin goes; the copy goes as an exact copy of base
        expected = [f"twin of {base.id}, jaccard≈{jaccard:.2f}",
                    f"twin of {base.id}, jaccard≈1.00 (exact copy)"]
    else:  # base and its copy both go: their twin ranks lower
        expected = [f"twin of {twin.id}, jaccard≈{jaccard:.2f}"] * 2
    assert details == expected
    assert counters == {"in": 7, "kept": 5, "out": 5, "rejected:near_duplicate": 2}
    params = json.loads(kept[0].lineage[-1].params_json)
    assert params == {"threshold": 0.8, "num_perm": 128, "bands": 9, "rows": 13, "shingle_words": 3}

    again, _, _ = run_dedup(list(reversed(inputs)), reshuffle=True)
    assert sorted(r.id for r in again) == sorted(r.id for r in kept)


def test_threshold_decides():
    pair = [make(BASE, "s1"), make(COUSIN, "s3")]
    kept, rejected, _ = run_dedup(pair, DedupConfig(threshold=0.3))
    assert len(kept) == 1 and kept[0].id == min(r.id for r in pair)
    assert rejected[0].reject_detail.startswith(f"twin of {kept[0].id}, jaccard≈")


def test_bad_threshold_is_an_error():
    with pytest.raises(ValueError, match="dedup.threshold"):
        DedupStage(DedupConfig(threshold=0))
