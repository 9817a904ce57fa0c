"""Seeds stage: every format, every bad record ends as a reject with its exact reason."""
from __future__ import annotations

import collections
import gzip
import io
import json
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen import SHIPPED_SEEDS

from datagen.readers import seed_readers
from datagen.record import KEPT, REJECTED
from datagen.readers.seed_readers import SeedFile, content_hash, iter_lines, read_jsonl, read_seed_file, seed_from_fields
from datagen.stages.seeds import SeedsConfig, SeedsStage, list_seed_files
from stage_harness import run_transform

REASONS = {"not_utf8", "invalid_json", "missing_text", "invalid_field", "empty_text", "too_short",
           "oversized", "unsupported_format", "unreadable"}
GOOD = "A seed document long enough to be kept as a seed."
OTHER = "Another seed document, about prime numbers and sieves."


def run_seeds(cfg: SeedsConfig):
    """Run the stage on the DirectRunner → (kept, rejected, counters)."""
    out = run_transform(None, SeedsStage(cfg), ["seeds"])
    return out.kept, out.rejected, out.counters["seeds"]


def assert_accounted(kept, rejected, counters):
    rejected_counts = {k: v for k, v in counters.items() if k.startswith("rejected:")}
    assert counters["in"] == counters.get("kept", 0) + sum(rejected_counts.values())
    assert counters.get("kept", 0) == len(kept) and sum(rejected_counts.values()) == len(rejected)
    assert rejected_counts == {f"rejected:{r}": n for r, n in
                               collections.Counter(r.reject_reason for r in rejected).items()}


def reasons_by_source(rejected):
    return sorted((r.source, r.reject_reason) for r in rejected)


def write_lines(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_jsonl_bad_records_become_rejects_with_exact_reasons(tmp_path):
    path = write_lines(tmp_path / "seeds.jsonl", [
        json.dumps({"text": f"  {GOOD}  ", "domain": " Math "}).encode(),
        b"\xff\xfe not utf-8",
        b'{"text": "broken json',
        b"",
        json.dumps({"text": "   "}).encode(),
        json.dumps({"title": "no text field"}).encode(),
        json.dumps({"text": 42}).encode(),
        json.dumps({"text": "short"}).encode(),
        json.dumps({"text": "x" * 101}).encode(),
        b"[1, 2, 3]",
        json.dumps({"text": OTHER, "domain": 7}).encode(),
        b'{"text": "lone surrogate \\ud800 in an otherwise fine text"}',
        json.dumps({"text": OTHER, "source": "wiki/primes"}).encode(),
    ])
    kept, rejected, counters = run_seeds(SeedsConfig(path=path, max_chars=100))

    assert sorted((r.seed_id, r.domain, r.source, r.seed_text) for r in kept) == sorted([
        (content_hash(GOOD), "math", f"{path}:1", GOOD),
        (content_hash(OTHER), "general", "wiki/primes", OTHER),
    ])
    assert reasons_by_source(rejected) == sorted([
        (f"{path}:2", "not_utf8"), (f"{path}:3", "invalid_json"), (f"{path}:4", "empty_text"),
        (f"{path}:5", "empty_text"), (f"{path}:6", "missing_text"), (f"{path}:7", "missing_text"),
        (f"{path}:8", "too_short"), (f"{path}:9", "oversized"), (f"{path}:10", "invalid_json"),
        (f"{path}:11", "invalid_field"), (f"{path}:12", "not_utf8"),
    ])
    by_line = {r.source.rsplit(":", 1)[1]: r for r in rejected}
    assert by_line["2"].seed_text == "\ufffd\ufffd not utf-8"
    assert by_line["7"].reject_detail == "'text' is int, expected a string"
    assert by_line["8"].reject_detail == "5 chars < min_chars 20"
    assert by_line["9"].reject_detail == "101 chars > max_chars 100" and by_line["9"].seed_text == "x" * 101
    assert by_line["11"].reject_detail == "'domain' is int, expected a string"
    assert all(r.reject_stage == "seeds" and r.status == REJECTED for r in rejected)
    assert len({r.id for r in rejected}) == len(rejected)  # rejects do not collapse on one id
    assert counters["in"] == 13 and counters["kept"] == 2
    assert_accounted(kept, rejected, counters)


def test_huge_line_is_oversized_without_parsing(tmp_path):
    cfg = SeedsConfig(max_chars=100)
    limit = seed_readers.line_byte_limit(cfg)
    path = write_lines(tmp_path / "big.jsonl", [b'{"text": "' + b"y" * limit + b'"}',
                                                json.dumps({"text": GOOD}).encode()])
    kept, rejected, counters = run_seeds(SeedsConfig(path=path, max_chars=100))
    assert [r.source for r in kept] == [f"{path}:2"]
    [big] = rejected
    assert (big.source, big.reject_reason) == (f"{path}:1", "oversized")
    assert big.reject_detail == f"line is {limit + 12:,} bytes, over the {limit:,}-byte limit"
    assert big.seed_text == '{"text": "' + "y" * 190
    assert_accounted(kept, rejected, counters)


def test_folder_of_every_format(tmp_path):
    import datasets

    folder = tmp_path / "corpus"
    (folder / "texts").mkdir(parents=True)
    write_lines(folder / "a.jsonl", [json.dumps({"text": GOOD, "domain": "code"}).encode()])
    with gzip.open(folder / "b.jsonl.gz", "wb") as f:
        f.write(json.dumps({"text": OTHER}).encode() + b"\n{oops\n")
    pq.write_table(pa.table({"text": [GOOD + " (parquet)", None], "domain": ["science", None]}),
                   folder / "c.parquet")
    (folder / "texts" / "d.txt").write_text("A plain text document of its own.\n", encoding="utf-8")
    (folder / "texts" / "e.md").write_bytes(b"# Title\n\xc3\x28 bad byte")
    (folder / "f.csv").write_text("text\nnot read\n")
    (folder / ".hidden.jsonl").write_text("ignored\n")
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": [GOOD + " (hf train)"], "domain": ["math"]}),
        "test": datasets.Dataset.from_dict({"text": ["tiny"], "domain": [None]}),
    }).save_to_disk(str(folder / "hf"))

    kept, rejected, counters = run_seeds(SeedsConfig(path=str(folder)))

    hf = folder / "hf"
    assert sorted((r.source, r.domain) for r in kept) == sorted([
        (f"{folder}/a.jsonl:1", "code"), (f"{folder}/b.jsonl.gz:1", "general"),
        (f"{folder}/c.parquet#0", "science"), (f"{folder}/texts/d.txt", "general"),
        (f"{hf}/train/data-00000-of-00001.arrow#0", "math"),
    ])
    assert reasons_by_source(rejected) == sorted([
        (f"{folder}/b.jsonl.gz:2", "invalid_json"), (f"{folder}/c.parquet#1", "missing_text"),
        (f"{folder}/texts/e.md", "not_utf8"), (f"{folder}/f.csv", "unsupported_format"),
        (f"{hf}/test/data-00000-of-00001.arrow#0", "too_short"),
    ])
    assert_accounted(kept, rejected, counters)


def test_glob_and_corrupt_parquet(tmp_path):
    write_lines(tmp_path / "one.jsonl", [json.dumps({"text": GOOD}).encode()])
    write_lines(tmp_path / "two.jsonl", [json.dumps({"text": OTHER}).encode()])
    (tmp_path / "three.parquet").write_bytes(b"PAR1 this is not parquet")
    kept, rejected, counters = run_seeds(SeedsConfig(path=str(tmp_path / "t*")))
    assert sorted(r.source for r in kept) == [f"{tmp_path}/two.jsonl:1"]
    [bad] = rejected
    assert (bad.source, bad.reject_reason) == (f"{tmp_path}/three.parquet", "unreadable")
    assert bad.reject_detail.startswith("ArrowInvalid: ") and bad.reject_detail.endswith("(at the start)")
    assert_accounted(kept, rejected, counters)


def test_file_cut_mid_way_keeps_rows_before_the_break(tmp_path):
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, pa.schema([("text", pa.string())])) as writer:
        writer.write_batch(pa.record_batch([[GOOD, OTHER]], names=["text"]))
        writer.write_batch(pa.record_batch([[GOOD + " more" * 50]], names=["text"]))
    path = tmp_path / "cut.arrow"
    path.write_bytes(sink.getvalue()[:-100])
    out = list(read_seed_file(SeedFile(str(path), "arrow"), SeedsConfig()))
    assert [(row, r.status, r.seed_text) for row, r in out[:2]] == [(0, KEPT, GOOD), (1, KEPT, OTHER)]
    row, bad = out[2]
    assert (row, bad.source, bad.reject_reason) == (2, str(path), "unreadable")
    assert bad.reject_detail.endswith("(after row 1)")


def test_max_seeds_keeps_the_first_n_in_file_order(tmp_path):
    write_lines(tmp_path / "a.jsonl", [json.dumps({"text": f"{GOOD} a{i}"}).encode() for i in range(2)]
                + [b"not json", json.dumps({"text": f"{GOOD} a2"}).encode()])
    write_lines(tmp_path / "b.jsonl", [b"", json.dumps({"text": f"{GOOD} b0"}).encode()])
    kept, rejected, counters = run_seeds(SeedsConfig(path=str(tmp_path), max_seeds=3))
    assert sorted(r.seed_text for r in kept) == [f"{GOOD} a0", f"{GOOD} a1", f"{GOOD} a2"]
    # the bad line before the third seed is an input; b.jsonl comes after the cutoff: not read as input
    assert reasons_by_source(rejected) == [(f"{tmp_path}/a.jsonl:3", "invalid_json")]
    assert counters["in"] == 4
    assert_accounted(kept, rejected, counters)

    kept, rejected, counters = run_seeds(SeedsConfig(path=str(tmp_path), max_seeds=10))
    assert len(kept) == 4 and counters["in"] == 6  # fewer seeds than asked: everything is read


def test_listing_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="no seed files found"):
        SeedsStage(SeedsConfig(path=str(tmp_path / "missing")))
    (tmp_path / "seeds.csv").write_text("text\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        SeedsStage(SeedsConfig(path=str(tmp_path / "seeds.csv")))
    with pytest.raises(ValueError, match="max_seeds must be >= 1"):
        SeedsStage(SeedsConfig(path=str(tmp_path), max_seeds=0))


def test_default_path_is_the_shipped_corpus_and_every_seed_in_it_is_kept():
    """The corpus ships with the code: a missing or broken file fails here, it is never skipped."""
    assert str(SHIPPED_SEEDS).endswith("datagen/data/seeds.jsonl")
    files = SeedsStage(SeedsConfig()).files
    assert files == [SeedFile(str(SHIPPED_SEEDS), "jsonl")]
    records = [record for _, record in read_seed_file(files[0], SeedsConfig())]
    assert [(r.source, r.reject_reason) for r in records if r.status != KEPT] == []
    assert len(records) == 30 and {r.domain for r in records} == {"math", "code", "science", "humanities",
                                                                   "general"}


def test_hf_folder_reads_only_the_shards_state_json_lists(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"text": [GOOD]}).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "ds" / "cache-123.arrow").write_bytes(b"derived cache, not data")
    assert list_seed_files(str(tmp_path / "ds")) == [
        SeedFile(f"{tmp_path}/ds/data-00000-of-00001.arrow", "arrow")]


# -- property tests over the reader -----------------------------------------------------------
def read_bytes(data: bytes, cfg: SeedsConfig):
    return list(read_jsonl(io.BytesIO(data), "mem.jsonl", cfg))


def expected_lines(data: bytes) -> int:
    return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_and_every_line_is_accounted(data):
    out = read_bytes(data, SeedsConfig(min_chars=1, max_chars=40))
    assert [row for row, _ in out] == list(range(1, expected_lines(data) + 1))
    for _, record in out:
        assert record.status in (KEPT, REJECTED)
        assert record.status == KEPT or record.reject_reason in REASONS
        record.to_json().encode("utf-8")  # every output can be written


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["text", "domain", "source", "x"]), json_values, max_size=4)
                | json_values, max_size=8))
def test_random_json_lines_end_kept_or_rejected(values):
    data = "\n".join(json.dumps(v) for v in values).encode("utf-8")
    out = read_bytes(data, SeedsConfig(min_chars=3))
    assert len(out) == expected_lines(data)
    for (_, record), value in zip(out, values):
        text = value.get("text") if isinstance(value, dict) else None
        fields_ok = isinstance(value, dict) and all(isinstance(value.get(k), (str, type(None)))
                                                    for k in ("domain", "source"))
        is_seed = isinstance(text, str) and len(text.strip()) >= 3 and fields_ok
        assert (record.status == KEPT) == is_seed, (value, record.reject_reason)
        assert record.status == KEPT or record.reject_reason in REASONS


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=12).filter(lambda b: b"\n" not in b), max_size=12), st.integers(1, 7))
def test_iter_lines_splits_exactly_across_chunk_boundaries(lines, chunk):
    data = b"\n".join(lines)
    with mock.patch.object(seed_readers, "_CHUNK_BYTES", chunk):
        got = list(iter_lines(io.BytesIO(data), max_bytes=8))
    expected = data.split(b"\n")
    if expected[-1] == b"":  # a final newline ends the last line; it does not start another
        expected.pop()
    assert [g.size for g in got] == [len(e) for e in expected]
    assert [g.data for g in got] == [e if len(e) <= 8 else None for e in expected]


@given(st.dictionaries(st.sampled_from(["text", "domain", "source"]),
                       st.none() | st.integers() | st.binary(max_size=30) | st.text(max_size=30)))
def test_fields_of_any_type_give_a_seed_or_a_reason(fields):
    record = seed_from_fields(fields, "t#0", SeedsConfig(min_chars=1))
    assert record.status == KEPT or record.reject_reason in REASONS
