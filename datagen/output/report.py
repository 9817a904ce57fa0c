"""What a person reads about a synth run: stats.json's summary, the dataset card, the HTML page.

No I/O here: `datagen.output.finalize` feeds a `Tally` with the rows it reads back, turns it into the
summary with `summarize` (that is stats.json), and writes what the render functions return
(card text, HTML; the PNG pictures come from datagen/output/charts.py).
"""
from __future__ import annotations

import html
import json
import re

import yaml

from datagen.filters import calibration

from datagen.output import quality
from datagen.record import CRITIQUE_ASPECTS

CONFIGS = (("default", "data", "kept records: instruction, chosen answer, every sampled answer with its "
                               "critique score, critique, consistency, evolution history, lineage"),
           ("rejects", "rejects", "every rejected record with `reject_stage`, `reject_reason`, "
                                  "`reject_detail`"),
           ("sft", "sft", "SFT view: `messages` (user instruction, assistant answer)"),
           ("dpo", "dpo", "DPO view: `prompt`/`chosen`/`rejected`; `pair_source` `verified` (a verified answer "
                          "over one verification proved wrong) or `critique` (best and worst by critique score, "
                          "`score_chosen`/`score_rejected`)"))
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|api_key)$", re.IGNORECASE)
_EMPTY = " — empty in this run (`datasets` cannot load an empty split)"


# ---------------------------------------------------------------- stats.json ----------------------
class Tally:
    """Counts gathered while streaming the shards back: domains, reasons, critique scores."""

    def __init__(self) -> None:
        self.domains: dict[str, dict[str, int]] = {}
        self.rejects: dict[str, dict[str, int]] = {}
        self.scores = {status: {a: {str(s): 0 for s in range(1, 5)} for a in CRITIQUE_ASPECTS}
                       for status in ("kept", "rejected")}
        self.kept = self.rejected = 0

    def add(self, status: str, row: dict) -> None:
        counts = self.domains.setdefault(row["domain"] or "unknown", {"kept": 0, "rejected": 0})
        counts[status] += 1
        if status == "kept":
            self.kept += 1
        else:
            self.rejected += 1
            by_reason = self.rejects.setdefault(row["reject_stage"] or "unknown", {})
            reason = row["reject_reason"] or "unspecified"
            by_reason[reason] = by_reason.get(reason, 0) + 1
        for aspect, score in ((row.get("critique") or {}).get("scores") or {}).items():
            histogram = self.scores[status].get(aspect)
            if histogram is not None and str(score) in histogram:
                histogram[str(score)] += 1

    def critique_summary(self) -> dict:
        summary = {}
        for status, aspects in self.scores.items():
            summary[status] = {}
            for aspect, histogram in aspects.items():
                n = sum(histogram.values())
                mean = sum(int(s) * c for s, c in histogram.items()) / n if n else None
                summary[status][aspect] = {"histogram": histogram, "n": n, "mean": mean}
        return summary


def summarize(stats: dict, tally: Tally, views: dict, wall_seconds: float) -> dict:
    """The content of stats.json: the caller's stage counters plus what the files say."""
    stages = _normalize_stages(stats)
    first = next(iter(stages.values()), None)
    return {
        "stages": stages,
        "totals": {"input": first["in"] if first else 0, "kept": tally.kept, "rejected": tally.rejected,
                   "balanced": all(s["balanced"] for s in stages.values())},
        "rejects": tally.rejects,  # from rejects/ itself: {stage: {reason: rows}}
        "domains": dict(sorted(tally.domains.items())),
        "critique": tally.critique_summary(),
        "views": views,
        "wall_seconds": round(float(wall_seconds), 3),
    }


def _normalize_stages(stats: dict) -> dict[str, dict]:
    """Check the caller's stage stats and add `balanced` (kept + rejected == in)."""
    stages = {}
    for stage, entry in stats.items():
        try:
            counts = {key: int(entry.get(key, 0)) for key in ("in", "kept", "out")}
            rejected = {str(reason): int(n) for reason, n in (entry.get("rejected") or {}).items()}
        except (AttributeError, TypeError, ValueError) as err:
            raise ValueError(f"stats[{stage!r}]: expected {{in, kept, out: int, rejected: {{reason: int}}}}, "
                             f"got {entry!r} ({err})") from None
        balanced = counts["kept"] + sum(rejected.values()) == counts["in"]
        stages[stage] = {**counts, "rejected": rejected, "balanced": balanced}
    return stages


# ---------------------------------------------------------------- dataset card ------------------
def render_card(summary: dict, config: dict) -> str:
    """README.md: YAML front matter (configs, license, tags) for the hub, then the run's story."""
    totals = summary["totals"]
    output = config.get("output") or {}
    repo = output.get("push_to_hub") or "path/to/this/directory"
    rows = {"default": totals["kept"], "rejects": totals["rejected"], **summary["views"]}
    # `datasets` cannot load a split with no rows, so an empty config is left out of the list;
    # `default` always stays, or load_dataset(DIR) would guess configs from every file it finds.
    listed = [(name, folder) for name, folder, _ in CONFIGS if name == "default" or rows.get(name, 0)]
    front = {
        "license": output.get("license") or "apache-2.0",
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "instruction-tuning", "sft", "dpo", "hunyuan-large", "synthpost"],
        "size_categories": [_size_category(totals["kept"])],
        "pretty_name": "synthpost synthetic instructions",
        "configs": [{"config_name": name, **({"default": True} if name == "default" else {}),
                     "data_files": [{"split": "train", "path": f"{folder}/train-*.parquet"}]}
                    for name, folder in listed],
    }
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n",
        "# synthpost synthetic instructions\n",
        "Instruction data made by the four-step synthesis of the Hunyuan-Large report (Tencent, 2024): "
        "instructions generated from seed documents, evolved (clearer, low-resource expansion, harder), "
        "answered by routed models, then filtered by rules, self-consistency on objective items, a "
        "critique model (four-tier scores), near-duplicate removal and benchmark decontamination. "
        "Built with synthpost on Apache Beam.\n",
        "## Configs\n",
        _table(["config", "folder", "rows", "what"],
               [[f"`{name}`", f"`{folder}/`", rows.get(name, 0), what + ("" if rows.get(name, 0) else _EMPTY)]
                for name, folder, what in CONFIGS]),
        *([f"> **{calibration.warning_line(summary.get('judge_check'))}**\n"]
          if calibration.warning_line(summary.get("judge_check")) else []),
        "## Funnel\n",
        f"{totals['input']} inputs → **{totals['kept']} kept**, {totals['rejected']} rejected "
        f"({_balance_note(summary)}). Wall time {summary['wall_seconds']:.0f} s.\n",
        _funnel_table(summary),
        "## Domains\n",
        _table(["domain", "kept", "rejected"],
               [[d, c["kept"], c["rejected"]] for d, c in summary["domains"].items()]) or "No records.\n",
        "## Data quality\n",
        _table(["figure", "value"], quality.markdown_rows(summary["quality"])) if summary.get("quality") else "–\n",
        "## Judge check\n",
        _judge_text(summary.get("judge_check")),
        "## Critique scores of kept records\n",
        "The digits the judge wrote" + (" (the grade itself is the expected score from its token probabilities)"
                                        if (summary.get("judge_check") or {}).get("grading") == "logprobs" else "")
        + ".\n",
        _critique_table(summary, "kept"),
        "## How to load\n",
        "```python\nfrom datasets import load_dataset\n\n"
        f'kept = load_dataset("{repo}", split="train")\n'
        f'rejects = load_dataset("{repo}", "rejects", split="train")\n'
        f'sft = load_dataset("{repo}", "sft", split="train")  # TRL SFTTrainer\n'
        f'dpo = load_dataset("{repo}", "dpo", split="train")  # TRL DPOTrainer\n```\n',
        "## Lineage\n",
        "Every record carries `lineage`: one entry per model call or rule stage with the model, the "
        "prompt template id and version, and the sampling parameters (JSON). `evolution` keeps each "
        "evolution step (before/after, accepted or why not). Ids are content hashes of "
        "(seed_id, domain, instruction); each id appears once per config. `stats.json` holds the "
        "numbers above; `report/index.html` the pictures.\n",
        "![funnel](report/funnel.png)\n",
        "## Config used\n",
        "```yaml\n" + yaml.safe_dump(redact(_plain(config)), sort_keys=False) + "```\n",
    ]
    return "\n".join(parts)


def _judge_text(check: dict | None) -> str:
    if not check:
        return "The critique judge was not checked in this run (critique.judge_check: false).\n"
    return calibration.describe(check) + "\n\n" + _table(["judge check", "AUC"], calibration.table_rows(check))


def redact(value):
    """Config without secret values (keys such as `token`, `api_key`); env var names stay."""
    if isinstance(value, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) and v else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _plain(config: dict) -> dict:
    return json.loads(json.dumps(config, default=str))  # tuples, paths, enums → YAML-safe


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "10M<n<100M"


def _balance_note(summary: dict) -> str:
    unbalanced = [s for s, v in summary["stages"].items() if not v["balanced"]]
    if not unbalanced:
        return "every stage accounts for every input: kept + rejected = in"
    return "kept + rejected ≠ in at: " + ", ".join(unbalanced)


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list]) -> str:
    if not rows:
        return ""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _reasons(rejected: dict[str, int]) -> str:
    most_first = sorted(rejected.items(), key=lambda kv: -kv[1])
    return ", ".join(f"{reason}: {n}" for reason, n in most_first) or "–"


def _funnel_table(summary: dict) -> str:
    rows = [[stage, s["in"], s["kept"], s["out"], sum(s["rejected"].values()), _reasons(s["rejected"])]
            for stage, s in summary["stages"].items()]
    return _table(["stage", "in", "kept", "out", "rejected", "rejected by reason"], rows) \
        or "No stage counters were recorded.\n"


def _critique_table(summary: dict, status: str) -> str:
    aspects = summary["critique"][status]
    if not any(a["n"] for a in aspects.values()):
        return "No critique scores.\n"
    rows = [[aspect, *a["histogram"].values(), f"{a['mean']:.2f}" if a["mean"] is not None else "–"]
            for aspect, a in aspects.items()]
    return _table(["aspect", "1", "2", "3", "4", "mean"], rows)


# ---------------------------------------------------------------- HTML page ---------------------
def render_index(summary: dict, images: list[str]) -> str:
    """report/index.html: the numbers as tables next to the pictures."""
    t = summary["totals"]
    funnel = [[stage, s["in"], s["kept"], s["out"], sum(s["rejected"].values()), _reasons(s["rejected"])]
              for stage, s in summary["stages"].items()]
    domains = [[d, c["kept"], c["rejected"]] for d, c in summary["domains"].items()]
    critique = [[a, *v["histogram"].values(), "–" if v["mean"] is None else f"{v['mean']:.2f}"]
                for a, v in summary["critique"]["kept"].items()]
    views = [[name, n] for name, n in summary["views"].items()]
    body = [
        "<h1>synthpost run report</h1>",
        f"<p>{t['input']} inputs → <b>{t['kept']} kept</b>, {t['rejected']} rejected "
        f"({html.escape(_balance_note(summary))}); wall time {summary['wall_seconds']:.0f} s.</p>",
        *([f"<p><b>{html.escape(calibration.warning_line(summary.get('judge_check')))}</b></p>"]
          if calibration.warning_line(summary.get("judge_check")) else []),
        "<h2>Funnel</h2>", _html_table(["stage", "in", "kept", "out", "rejected", "by reason"], funnel),
        *[f'<p><img src="{html.escape(name)}" alt="{html.escape(name)}"></p>' for name in images],
        "<h2>Data quality</h2>",
        _html_table(["figure", "value"], quality.markdown_rows(summary["quality"]) if summary.get("quality") else []),
        "<h2>Domains</h2>", _html_table(["domain", "kept", "rejected"], domains),
        "<h2>Critique scores (kept)</h2>", _html_table(["aspect", "1", "2", "3", "4", "mean"], critique),
        "<h2>Training views</h2>", _html_table(["view", "rows"], views),
    ]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:100%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>synthpost run report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_table(header: list[str], rows: list[list]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                    for row in rows)
    return f"<table><tr>{head}</tr>{cells}</table>"
