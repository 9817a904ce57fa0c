"""After the pipeline: the training views, stats.json, the dataset card and the picture report.

`finalize` (plain Python, no Beam) reads back what `datagen.output.writer.WriteRecords` wrote to `data/`
and `rejects/` and writes the `sft/` view (messages; an objective item only with a verified answer)
and the `dpo/` view (prompt / chosen / rejected, and `pair_source`: `verified` when the rejected
answer is one verification proved wrong and the chosen one is verified, else `critique` for the best
and worst answer by critique score), `stats.json` (with the judge check and the data-quality
section, datagen/output/quality.py), `README.md` and `report/`. `collect_stage_stats` turns a finished run's `synthpost.<stage>` counters into the
per-stage funnel it needs. All file I/O goes through Beam's FileSystems, so gs:// works.
"""
from __future__ import annotations

import json
import logging
import math

import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from datagen.output import charts, quality, report
from datagen.cache import CACHE_NAMESPACE
from datagen.output.writer import (DATA, DPO, OUTPUT_NAMESPACE, REJECTS, REPORT, SFT, SPLIT, match_files, parquet_bytes,
                            read_shards, shard_name, write_bytes)
from datagen.stage import CALLS_NAMESPACE, STATS_NAMESPACE_PREFIX

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- stats from Beam counters -----
def collect_stage_stats(pipeline_result, stages: list[str]) -> dict[str, dict]:
    """The `synthpost.<stage>` counters of a finished run as {stage: {in, kept, out, rejected}},
    stages in the given (pipeline) order; a counter reported by several steps is summed."""
    stats = {stage: _empty_stage() for stage in stages}
    for counter in pipeline_result.metrics().query(MetricsFilter())["counters"]:
        namespace, name = counter.key.metric.namespace, counter.key.metric.name
        if not namespace.startswith(STATS_NAMESPACE_PREFIX) or namespace in _NOT_STAGES:
            continue
        entry = stats.setdefault(namespace[len(STATS_NAMESPACE_PREFIX):], _empty_stage())
        value = counter.committed if counter.committed is not None else counter.attempted
        if name.startswith("rejected:"):
            reason = name[len("rejected:"):]
            entry["rejected"][reason] = entry["rejected"].get(reason, 0) + int(value)
        elif name in ("in", "kept", "out"):
            entry[name] += int(value)
    return stats


_NOT_STAGES = {OUTPUT_NAMESPACE, CACHE_NAMESPACE, CALLS_NAMESPACE}


def _empty_stage() -> dict:
    return {"in": 0, "kept": 0, "out": 0, "rejected": {}}


# ---------------------------------------------------------------- training views ----------------
_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
SFT_SCHEMA = pa.schema([("id", pa.string()), ("domain", pa.string()), ("messages", _MESSAGES)])
DPO_SCHEMA = pa.schema([("id", pa.string()), ("domain", pa.string()), ("prompt", _MESSAGES),
                        ("chosen", _MESSAGES), ("rejected", _MESSAGES),
                        ("score_chosen", pa.float64()), ("score_rejected", pa.float64()),
                        ("pair_source", pa.string())])
_DATA_COLUMNS = ["id", "domain", "instruction", "response", "responses", "critique", "consistency", "objective",
                 "tests", "seed_text"]
_REJECT_COLUMNS = ["id", "domain", "reject_stage", "reject_reason", "reject_detail", "critique", "consistency",
                   "responses"]
VERIFIED_PAIR, CRITIQUE_PAIR = "verified", "critique"


def _verified_item(row: dict) -> bool:
    return (row.get("consistency") or {}).get("outcome") == "verified"


def _referenced(row: dict) -> bool:
    return (row.get("consistency") or {}).get("method") == "reference" or (
        bool(row.get("tests")) and row.get("instruction") == row.get("seed_text"))


def _distinct(responses: list[dict], verdict: str, limit: int) -> list[dict]:
    """Up to `limit` responses with `verdict`, each text once, in sampling order."""
    seen, out = set(), []
    for r in responses:
        if r.get("verdict") == verdict and r.get("text") and r["text"] not in seen and len(out) < limit:
            seen.add(r["text"])
            out.append(r)
    return out


def sft_rows(row: dict, per_prompt: int) -> list[dict]:
    """A referenced item gives up to `per_prompt` distinct right answers (rejection sampling); any other
    kept record its one chosen answer (`sft_row`)."""
    if not _referenced(row):
        return [r for r in [sft_row(row)] if r is not None]
    return [{"id": row["id"], "domain": row["domain"],
             "messages": [{"role": "user", "content": row["instruction"]},
                          {"role": "assistant", "content": r["text"]}]}
            for r in _distinct(row.get("responses") or [], "verified", per_prompt)]


def dpo_rows(row: dict, per_prompt: int, min_margin: float = 0.0) -> list[dict]:
    """A referenced item: up to `per_prompt` pairs of a distinct right and a distinct proven-wrong answer of
    the same prompt (`pair_source: verified`); any other record its one pair (`dpo_row`)."""
    if not _referenced(row):
        return [r for r in [dpo_row(row, min_margin)] if r is not None]
    responses = row.get("responses") or []
    right, wrong = _distinct(responses, "verified", per_prompt), _distinct(responses, "wrong", per_prompt)
    return [_pair(row, good, bad, VERIFIED_PAIR) for good, bad in zip(right, wrong)]


def sft_row(row: dict) -> dict | None:
    """A kept record as a chat exchange; None when it has no instruction or chosen answer, or when
    it is a verified objective item whose chosen answer is not a verified one."""
    if not row.get("instruction") or not row.get("response"):
        return None
    if _verified_item(row) and not any(r.get("verdict") == "verified" and r.get("text") == row["response"]
                                       for r in row.get("responses") or []):
        return None
    return {"id": row["id"], "domain": row["domain"],
            "messages": [{"role": "user", "content": row["instruction"]},
                         {"role": "assistant", "content": row["response"]}]}


def _score(response: dict) -> float | None:
    score = response.get("score")
    return None if score is None or math.isnan(score) else float(score)


def dpo_row(row: dict, min_margin: float = 0.0) -> dict | None:
    """A verified pair when the item is verified and an answer was proven wrong (chosen: the chosen,
    verified answer; rejected: the first wrong one); else the best vs the worst answer by critique
    score (ties: the earliest answer; never a proven-wrong answer as chosen) when the margin is above
    `min_margin` (the judge's own grade noise, measured by the judge check). None when neither exists."""
    if not row.get("instruction"):
        return None
    responses = [r for r in row.get("responses") or [] if r.get("text")]
    wrong = [r for r in responses if r.get("verdict") == "wrong"]
    chosen = next((r for r in responses if r["text"] == row.get("response") and r.get("verdict") == "verified"), None)
    if _verified_item(row) and wrong and chosen is not None:
        return _pair(row, chosen, wrong[0], VERIFIED_PAIR)
    scored = [(_score(r), i, r) for i, r in enumerate(responses) if _score(r) is not None]
    if len(scored) < 2:
        return None
    best = max(((s, i, r) for s, i, r in scored if r.get("verdict") != "wrong"), key=lambda t: (t[0], -t[1]),
               default=None)
    worst = min(scored, key=lambda t: (t[0], t[1]))
    if best is None or best[0] - worst[0] <= min_margin:
        return None
    return _pair(row, best[2], worst[2], CRITIQUE_PAIR)


def _pair(row: dict, chosen: dict, rejected: dict, source: str) -> dict:
    return {"id": row["id"], "domain": row["domain"],
            "prompt": [{"role": "user", "content": row["instruction"]}],
            "chosen": [{"role": "assistant", "content": chosen["text"]}],
            "rejected": [{"role": "assistant", "content": rejected["text"]}],
            "score_chosen": _score(chosen), "score_rejected": _score(rejected), "pair_source": source}


# ---------------------------------------------------------------- finalize ----------------------
def finalize(out_dir: str, stats: dict, config: dict, wall_seconds: float, judge_check: dict | None = None,
             sft_per_prompt: int = 4, pairs_per_prompt: int = 2) -> dict:
    """After the pipeline: views, stats.json, README.md and report/ from data/ and rejects/.

    `stats` is {stage: {"in", "kept", "out", "rejected": {reason: n}}} in pipeline order (see
    collect_stage_stats); `config` the run's config as a dict, shown in the card with secrets
    masked; `judge_check` what `datagen.stages.critique.judge_check` measured (None: not run). Returns
    counts and paths for the entry point to print.
    """
    data_dir, rejects_dir = FileSystems.join(out_dir, DATA), FileSystems.join(out_dir, REJECTS)
    if not match_files(data_dir, f"{SPLIT}-*-of-*.parquet"):
        raise FileNotFoundError(f"no Parquet shards in {data_dir}: did the pipeline's WriteRecords run?")
    tally, quality_tally = report.Tally(), quality.QualityTally()
    min_margin = (judge_check or {}).get("grade_noise") or 0.0  # a critique pair inside the judge's noise teaches nothing
    views, dpo_sources = {SFT: 0, DPO: 0}, {}
    for view in views:
        _clear(FileSystems.join(out_dir, view))
    for index, num_shards, table in read_shards(data_dir, _DATA_COLUMNS):
        rows = table.to_pylist()
        for row in rows:
            tally.add("kept", row)
            quality_tally.add_kept(row)
            quality_tally.add_referenced(row)
        for view, to_rows, schema in ((SFT, lambda r: sft_rows(r, sft_per_prompt), SFT_SCHEMA),
                                      (DPO, lambda r: dpo_rows(r, pairs_per_prompt, min_margin), DPO_SCHEMA)):
            view_rows = [v for row in rows for v in to_rows(row)]
            views[view] += len(view_rows)
            for v in view_rows if view == DPO else []:
                dpo_sources[v["pair_source"]] = dpo_sources.get(v["pair_source"], 0) + 1
                quality_tally.add_pair(v)
            path = FileSystems.join(out_dir, view, shard_name(index, num_shards))
            write_bytes(path, parquet_bytes(pa.Table.from_pylist(view_rows, schema=schema)))
    for _, _, table in read_shards(rejects_dir, _REJECT_COLUMNS):
        for row in table.to_pylist():
            tally.add("rejected", row)
            quality_tally.add_rejected(row)
            quality_tally.add_referenced(row)

    summary = report.summarize(stats, tally, views, wall_seconds)
    summary["judge_check"] = judge_check
    summary["quality"] = quality_tally.summary(summary["stages"], summary["domains"], judge_check, dpo_sources)
    write_bytes(FileSystems.join(out_dir, "stats.json"), json.dumps(summary, indent=2).encode("utf-8"))
    card = report.render_card(summary, config)
    write_bytes(FileSystems.join(out_dir, "README.md"), card.encode("utf-8"))
    images = {"funnel.png": charts.render_funnel(summary),
              "critique_scores.png": charts.render_critique(summary),
              "domains.png": charts.render_domains(summary)}
    for name, png in images.items():
        write_bytes(FileSystems.join(out_dir, REPORT, name), png)
    write_bytes(FileSystems.join(out_dir, REPORT, "index.html"),
                report.render_index(summary, list(images)).encode("utf-8"))
    log.info("dataset at %s: %d kept, %d rejected, %d SFT rows, %d DPO pairs",
             out_dir, tally.kept, tally.rejected, views[SFT], views[DPO])
    return {"out_dir": out_dir, "kept": tally.kept, "rejected": tally.rejected, "sft": views[SFT],
            "dpo": views[DPO], "judge_check": judge_check, "paths": {name: FileSystems.join(out_dir, name) for name in
                                         (DATA, REJECTS, SFT, DPO, "stats.json", "README.md", REPORT)}}


def _clear(directory: str) -> None:
    stale = [m.path for m in match_files(directory, "*.parquet")]
    if stale:
        FileSystems.delete(stale)
