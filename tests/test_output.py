"""Output stage: id-keyed Parquet shards from the real DirectRunner, then finalize (views,
stats.json, card, picture report). The hub upload is tested against a stand-in hub in test_hub.py."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil

import apache_beam as beam
import datasets
import pyarrow.parquet as pq
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from datagen.output import report, writer as output
from datagen.output.finalize import collect_stage_stats, dpo_row, finalize, sft_row
from datagen.output.writer import WriteRecords
from readback import read_records
from datagen.record import Critique, Record, Response
from datagen.output.report import redact
from datagen.stage import RecordFn, run_stage

SCORES = {"accuracy": 4, "relevance": 3, "completeness": 3, "usefulness": 4, "clarity": 2}
CONFIG = {"output": {"dir": "x", "push_to_hub": "org/synth", "license": "cc-by-4.0"},
          "models": {"judge": {"backend": "openai", "api_key_env": "JUDGE_KEY", "api_key": "sk-secret"}}}


def item(i: int, domain: str, scores: tuple, instruction: str = "") -> Record:
    return Record(seed_id=f"s{i}", domain=domain, instruction=instruction or f"Question {i}?",
                  response=f"answer {i}.0",
                  responses=[Response(f"answer {i}.{k}", score=s) for k, s in enumerate(scores)],
                  critique=Critique(scores=dict(SCORES), mean=3.2))


# kept candidates: A0-A3 have a DPO pair, A4 has one scored answer, A5 a tie
KEPT = [item(0, "math", (3.5, 1.5, 2.0)), item(1, "math", (2.0, 4.0, 1.0)), item(2, "code", (1.0, 3.0)),
        item(3, "code", (4.0, 2.0, 2.0, 1.0)), item(4, "science", (3.0, None)), item(5, "math", (3.0, 3.0))]
TWIN = dataclasses.replace(KEPT[1], response="zzz a retried copy that differs")  # same id
FLAGGED = [item(10, "math", (), "please reject me"), item(11, "code", (), "reject this too")]
EARLIER = [item(20, "math", (1.0, 1.0)).rejected("critique", "low_critique_score", "mean=1.2")]
INPUTS = [*KEPT, KEPT[0], TWIN, *FLAGGED]


class Gate(RecordFn):
    """A rule stage for the test: rejects instructions that ask for it."""

    stage = "gate"

    def transform(self, record):
        return record.rejected(self.stage, "flagged", "asked") if "reject" in record.instruction else record


def run_pipeline(out_dir, records, rejected=(), shard_records=2, options=()):
    pipeline = beam.Pipeline(options=PipelineOptions(list(options)))
    gated = run_stage(pipeline | "In" >> beam.Create(records), "Gate", Gate())
    earlier = pipeline | "Earlier" >> beam.Create(list(rejected))
    gated.kept | "WriteData" >> WriteRecords(str(out_dir), "data", shard_records)
    rejects = (gated.rejected, earlier) | beam.Flatten()
    rejects | "WriteRejects" >> WriteRecords(str(out_dir), "rejects", shard_records)
    result = pipeline.run()
    result.wait_until_finish()
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = run_pipeline(out, INPUTS, EARLIER)
    stats = {"seeds": {"in": 7, "kept": 6, "out": 6, "rejected": {"empty": 1}},
             **collect_stage_stats(result, ["gate"])}
    summary = finalize(str(out), stats, CONFIG, wall_seconds=12.5)
    return out, stats, summary


def files(directory):
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------- WriteRecords ------------------
def test_one_row_per_id_and_the_smallest_json_survives(built):
    out, _, _ = built
    records = read_records(str(out / "data"))
    assert sorted(r.id for r in records) == sorted(r.id for r in KEPT)
    survivor = next(r for r in records if r.id == KEPT[1].id)
    assert survivor.to_json() == min(KEPT[1].to_json(), TWIN.to_json())
    assert survivor.critique.scores == SCORES  # the struct round-trips to the same dict
    assert next(r for r in records if r.id == KEPT[0].id) == KEPT[0]


def test_shards_have_deterministic_names_and_sorted_rows(built):
    out, _, _ = built
    assert files(out / "data") == [f"train-0000{i}-of-00003.parquet" for i in range(3)]  # 6 ids / 2
    assert files(out / "rejects") == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    for name in files(out / "data"):
        ids = pq.read_table(out / "data" / name, columns=["id"]).column("id").to_pylist()
        assert ids == sorted(ids)
        assert all(output.shard_of(i, 3) == int(name[6:11]) for i in ids)


def test_rerun_with_another_shard_count_leaves_only_the_new_shards(built, tmp_path):
    out, _, _ = built
    shutil.copytree(out / "data", tmp_path / "data")  # an earlier run's 3 shards
    (tmp_path / "data" / ".tmp-0123-train-00000-of-00003.parquet").write_bytes(b"crashed mid-write")
    run_pipeline(tmp_path, INPUTS, EARLIER, shard_records=100)
    assert files(tmp_path / "data") == ["train-00000-of-00001.parquet"]
    assert sorted(r.id for r in read_records(str(tmp_path / "data"))) == sorted(r.id for r in KEPT)


def test_multi_processing_runner_and_input_order_give_identical_bytes(built, tmp_path):
    out, _, _ = built
    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with beam.Pipeline(options=options) as pipeline:  # no Gate: worker processes cannot import tests
        records = list(reversed([*KEPT, KEPT[0], TWIN]))
        pipeline | beam.Create(records) | WriteRecords(str(tmp_path), "data", 2)
    assert files(tmp_path / "data") == files(out / "data")
    for name in files(out / "data"):
        assert (tmp_path / "data" / name).read_bytes() == (out / "data" / name).read_bytes()


def test_shard_records_must_be_positive():
    with pytest.raises(ValueError, match="shard_records must be >= 1"):
        WriteRecords("out", "data", 0)


# ---------------------------------------------------------------- loading the directory ---------
def test_load_dataset_default_and_named_configs(built):
    out, _, _ = built
    kept = datasets.load_dataset(str(out), split="train")
    assert kept.num_rows == 6
    assert {"id", "instruction", "responses", "critique", "lineage"} <= set(kept.column_names)
    assert kept[0]["critique"]["scores"] == SCORES
    rejects = datasets.load_dataset(str(out), "rejects", split="train")
    assert sorted(zip(rejects["reject_stage"], rejects["reject_reason"])) == \
        [("critique", "low_critique_score"), ("gate", "flagged"), ("gate", "flagged")]
    sft = datasets.load_dataset(str(out), "sft", split="train")
    assert sft.column_names == ["id", "domain", "messages"] and sft.num_rows == 6
    row = next(r for r in sft if r["id"] == KEPT[2].id)
    assert row["messages"] == [{"role": "user", "content": "Question 2?"},
                               {"role": "assistant", "content": "answer 2.0"}]
    dpo = datasets.load_dataset(str(out), "dpo", split="train")
    assert sorted(dpo["id"]) == sorted(r.id for r in KEPT[:4])
    pair = next(r for r in dpo if r["id"] == KEPT[1].id)
    assert pair["prompt"] == [{"role": "user", "content": "Question 1?"}]
    assert pair["chosen"] == [{"role": "assistant", "content": "answer 1.1"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "answer 1.2"}]
    assert (pair["score_chosen"], pair["score_rejected"]) == (4.0, 1.0)


# ---------------------------------------------------------------- views ---------------------------
def row_of(scores, instruction="Q?"):
    return {"id": "i", "domain": "d", "instruction": instruction, "response": "a",
            "responses": [{"text": f"t{k}", "score": s} for k, s in enumerate(scores)]}


def test_dpo_pair_is_argmax_and_argmin_with_earliest_on_ties():
    pair = dpo_row(row_of([2.0, 4.0, 1.0, 4.0, 1.0]))
    assert (pair["chosen"][0]["content"], pair["rejected"][0]["content"]) == ("t1", "t2")
    assert dpo_row(row_of([3.0, 3.0])) is None  # no preference
    assert dpo_row(row_of([3.0, None])) is None  # one scored answer
    assert dpo_row(row_of([math.nan, 2.0, 3.0]))["score_rejected"] == 2.0
    assert dpo_row(row_of([1.0, 2.0], instruction="")) is None


def test_sft_row_needs_instruction_and_answer():
    assert sft_row({**row_of([]), "response": ""}) is None
    assert sft_row(row_of([]))["messages"][1] == {"role": "assistant", "content": "a"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=False)), max_size=6))
def test_dpo_row_never_crashes_and_orders_scores(scores):
    pair = dpo_row(row_of(scores))
    valid = [s for s in scores if s is not None and not math.isnan(s)]
    if pair is None:
        assert len(valid) < 2 or max(valid) == min(valid)
    else:
        assert (pair["score_chosen"], pair["score_rejected"]) == (max(valid), min(valid))


# ---------------------------------------------------------------- stats.json ----------------------
def test_stats_json_has_stages_in_order_totals_domains_and_views(built):
    out, _, summary = built
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats["stages"]) == ["seeds", "gate"]
    assert stats["stages"]["gate"] == {"in": 10, "kept": 8, "out": 8, "rejected": {"flagged": 2},
                                       "balanced": True}
    assert stats["totals"] == {"input": 7, "kept": 6, "rejected": 3, "balanced": True}
    assert stats["rejects"] == {"gate": {"flagged": 2}, "critique": {"low_critique_score": 1}}
    assert stats["domains"] == {"code": {"kept": 2, "rejected": 1}, "math": {"kept": 3, "rejected": 2},
                                "science": {"kept": 1, "rejected": 0}}
    assert stats["critique"]["kept"]["clarity"] == {"histogram": {"1": 0, "2": 6, "3": 0, "4": 0}, "n": 6,
                                                     "mean": 2.0}
    assert stats["views"] == {"sft": 6, "dpo": 4} and stats["wall_seconds"] == 12.5
    assert (summary["kept"], summary["rejected"], summary["sft"], summary["dpo"]) == (6, 3, 6, 4)


def test_unbalanced_stage_is_flagged_and_bad_stats_are_named(tmp_path, built):
    out, _, _ = built
    summary = report.summarize({"a": {"in": 3, "kept": 1, "rejected": {"r": 1}}}, report.Tally(),
                               {"sft": 0, "dpo": 0}, 0)
    assert summary["stages"]["a"]["balanced"] is False and summary["totals"]["balanced"] is False
    with pytest.raises(ValueError, match=r"stats\['gate'\]"):
        report._normalize_stages({"gate": {"in": "many"}})
    with pytest.raises(FileNotFoundError, match="no Parquet shards"):
        finalize(str(tmp_path), {}, {}, 0)


# ---------------------------------------------------------------- card and report ---------------
def test_card_front_matter_funnel_domains_and_redacted_config(built):
    out, _, _ = built
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert [c["config_name"] for c in front["configs"]] == ["default", "rejects", "sft", "dpo"]
    assert front["configs"][0]["default"] is True and front["license"] == "cc-by-4.0"
    assert "| gate | 10 | 8 | 8 | 2 | flagged: 2 |" in card
    assert "| seeds | 7 | 6 | 6 | 1 | empty: 1 |" in card
    assert "| math | 3 | 2 |" in card and "| clarity | 0 | 6 | 0 | 0 | 2.00 |" in card
    assert 'load_dataset("org/synth", "dpo", split="train")' in card
    assert "sk-secret" not in card and "api_key: '***'" in card and "api_key_env: JUDGE_KEY" in card


def test_redact_reaches_nested_secrets_and_keeps_env_names():
    assert redact({"a": [{"hf_token": "t", "password": "p", "token_env": "HF_TOKEN", "n": 1}]}) == \
        {"a": [{"hf_token": "***", "password": "***", "token_env": "HF_TOKEN", "n": 1}]}


def test_picture_report_pngs_and_html(built):
    out, _, _ = built
    for name, min_width in (("funnel.png", 800), ("critique_scores.png", 1200), ("domains.png", 600)):
        path = out / "report" / name
        assert path.stat().st_size > 10_000
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= min_width
    page = (out / "report" / "index.html").read_text()
    assert all(f'<img src="{n}"' in page for n in ("funnel.png", "critique_scores.png", "domains.png"))
    assert "<td>gate</td><td>10</td><td>8</td><td>8</td><td>2</td><td>flagged: 2</td>" in page


def test_empty_kept_set_still_gives_views_card_and_report(tmp_path):
    run_pipeline(tmp_path, FLAGGED)
    stats = {"gate": {"in": 2, "kept": 0, "out": 0, "rejected": {"flagged": 2}}}
    summary = finalize(str(tmp_path), stats, {}, 1.0)
    assert (summary["kept"], summary["rejected"], summary["sft"], summary["dpo"]) == (0, 2, 0, 0)
    for view in ("data", "sft", "dpo"):
        assert pq.read_table(tmp_path / view / "train-00000-of-00001.parquet").num_rows == 0
    card = (tmp_path / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    # datasets cannot load an empty split: empty views are not listed, default always is
    assert [c["config_name"] for c in front["configs"]] == ["default", "rejects"]
    assert "| `sft` | `sft/` | 0 |" in card and "0 inputs" not in card and "2 inputs → **0 kept**" in card
    assert datasets.load_dataset(str(tmp_path), "rejects", split="train").num_rows == 2
    assert all((tmp_path / "report" / n).stat().st_size > 5_000 for n in ("funnel.png", "domains.png"))
