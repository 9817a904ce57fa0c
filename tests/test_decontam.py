"""Decontamination: exact n-grams against benchmark files; bad benchmark files fail at construction.
(Coverage, paraphrases and the eval sets as default benchmarks: test_decontam_practised.py.)"""
from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.stages.decontam import DecontamConfig, DecontamStage, NgramIndex, load_benchmark
from datagen.record import Record, Response
from stage_harness import run_transform

GSM = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
       "How many clips did Natalia sell altogether in April and May?")
SHORT = "What is the capital city of the state of Texas?"  # 10 words: matched whole


def run_decontam(records, cfg):
    out = run_transform(records, DecontamStage(cfg), ["decontam"])
    return out.kept, out.rejected, out.counters["decontam"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_contaminated_records_name_the_benchmark_and_the_ngram(tmp_path):
    gsm = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": GSM}, {"question": "Too short."}])
    with gzip.open(tmp_path / "trivia.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"question": SHORT}) + "\n")
    trivia = str(tmp_path / "trivia.jsonl.gz")
    cfg = DecontamConfig(eval_sets=[], benchmarks=[gsm, trivia], text_field="question")
    records = [
        Record(seed_id="copied", instruction="NATALIA sold clips to 48 of her friends in April -- and "
                                             "then she sold half as many; how much is that?"),
        Record(seed_id="in_answer", instruction="Solve a word problem about selling clips.",
               responses=[Response("Sure."), Response(f"Recall: {GSM}")]),
        Record(seed_id="short", instruction="Quiz: what is the capital city of the state of Texas? Explain."),
        Record(seed_id="clean", instruction="Natalia sold clips to friends. How many did she sell?"),
    ]
    kept, rejected, counters = run_decontam(records, cfg)

    assert [r.seed_id for r in kept] == ["clean"]
    assert json.loads(kept[0].lineage[-1].params_json) == {"eval_sets": [], "benchmarks": [gsm, trivia], "ngram": 13}
    details = {r.seed_id: (r.reject_reason, r.reject_detail) for r in rejected}
    assert details == {
        "copied": ("contaminated", f"{gsm} line 1: instruction shares the 13-gram "
                                   "'natalia sold clips to 48 of her friends in april and then she'"),
        "in_answer": ("contaminated", f"{gsm} line 1: response 1 shares the 13-gram "
                                      "'natalia sold clips to 48 of her friends in april and then she'"),
        "short": ("contaminated", f"{trivia} line 1: instruction shares the 10-gram "
                                  "'what is the capital city of the state of texas'"),
    }
    assert counters == {"in": 4, "kept": 1, "out": 1, "rejected:contaminated": 3}


def test_clean_records_pass_the_default_eval_sets():
    records = [Record(seed_id="a", instruction="Anything at all.")]
    kept, rejected, counters = run_decontam(records, DecontamConfig())
    assert len(kept) == 1 and not rejected and counters["in"] == 1


@pytest.mark.parametrize("content, message", [
    (None, "decontam benchmark file not found: {path}"),
    (b"\xff\xfe\n", "decontam benchmark file {path}: not UTF-8 (byte 0)"),
    (b'{"text": "ok"}\n{"text": \n', "decontam benchmark file {path}:2: invalid JSON"),
    (b'{"text": "ok"}\n{"question": "x"}\n', "decontam benchmark file {path}:2: no string field 'text'"),
    (b"\n\n", "decontam benchmark file {path}: no items"),
])
def test_bad_benchmark_files_fail_at_construction(tmp_path, content, message):
    path = tmp_path / "bench.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        DecontamStage(DecontamConfig(benchmarks=[str(path)]))
    assert str(err.value).startswith(message.format(path=path))


def test_bad_ngram_config():
    with pytest.raises(ValueError, match="min_ngram <= ngram"):
        DecontamStage(DecontamConfig(ngram=5, min_ngram=8))


def test_index_matches_normalized_text():
    index = NgramIndex(n=4, min_n=3)
    index.add("The Quick brown fox jumps", "b.jsonl")
    index.add("Tiny", "b.jsonl")  # under min_n: ignored
    assert index.find("...the QUICK, brown fox!") == ("b.jsonl", "the quick brown fox")
    assert index.find("quick brown cat") is None
    assert index.find("tiny") is None


def test_load_benchmark_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "b.jsonl", [{"text": "one"}, {"text": "two", "answer": 2}])
    (tmp_path / "b.jsonl").write_text((tmp_path / "b.jsonl").read_text() + "\n  \n")
    assert load_benchmark(path, "text") == ["one", "two"]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=120), st.text(max_size=60))
def test_an_item_always_finds_itself_inside_other_text(item, around):
    index = NgramIndex(n=5, min_n=2)
    index.add(item, "b")
    found = index.find(f"{around} {item} {around}")
    assert (found is None) == (len(index.grams) == 0)
