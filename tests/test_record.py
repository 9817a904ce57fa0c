import pyarrow.parquet as pq

from datagen.record import (Consistency, Critique, EvolutionStep, Record, Response, from_arrow,
                            to_arrow)


def full_record() -> Record:
    rec = Record(seed_id="s1", domain="math", source="f.jsonl:3", seed_text="seed 种子", instruction="What is 2+2?",
                 objective=True, tests="assert f() == 4")
    rec.evolution.append(EvolutionStep(1, "harder", "What is 2+2?", "What is 2+2+2?", True, ""))
    rec.responses = [Response("4", "vllm:m", "stop", "4", 3.5), Response("5", "vllm:m", "length", "5", None)]
    rec.consistency = Consistency(["4", "4", "5"], "4", 2 / 3, "math")
    rec.critique = Critique({"accuracy": 4, "clarity": 3}, "fine", "vllm:judge", 3.5)
    rec = rec.with_lineage("generate", "vllm:m", "generate.math", "1", {"n": 1, "seed": 3})
    return rec.rejected("critique", "low_critique_score", "mean=1.5")


def test_id_is_a_stable_content_hash():
    a = Record(seed_id="s", domain="math", instruction="x")
    b = Record(seed_id="s", domain="math", instruction="x", response="different history")
    assert a.id == b.id and len(a.id) == 20
    assert a.id != Record(seed_id="s", domain="math", instruction="y").id


def test_rejected_keeps_everything_and_records_reason():
    rec = full_record()
    assert (rec.status, rec.reject_stage, rec.reject_reason, rec.reject_detail) == \
        ("rejected", "critique", "low_critique_score", "mean=1.5")
    assert rec.lineage[0].template_id == "generate.math"


def test_json_round_trip_is_lossless():
    rec = full_record()
    assert Record.from_json(rec.to_json()) == rec


def test_arrow_and_parquet_round_trip_is_lossless(tmp_path):
    records = [full_record(), Record(seed_id="s2")]
    table = to_arrow(records)
    pq.write_table(table, tmp_path / "x.parquet")
    assert from_arrow(pq.read_table(tmp_path / "x.parquet")) == records
