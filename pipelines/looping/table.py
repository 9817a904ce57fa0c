"""The loop's closing table: every policy against the start, from the evals' results.json and
items.jsonl, as README-ready markdown (`DIR/results.md`), JSON (`DIR/results.json`) and charts
(`DIR/charts/*.png`), plus the wall time and machine load of every step."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipelines.evaluation import stats  # noqa: E402
from pipelines.looping.steps import Step, format_seconds  # noqa: E402

NA = "—"


def pct(est: dict | None, signed: bool = False) -> str:
    """'31.7% [26.7, 37.1]' or '+4.3 pts [1.0, 7.7]' from an estimate dict."""
    if not est or est.get("value") is None:
        return NA
    if signed:
        return f"{est['value'] * 100:+.1f} pts [{est['low'] * 100:+.1f}, {est['high'] * 100:+.1f}]"
    return f"{est['value'] * 100:.1f}% [{est['low'] * 100:.1f}, {est['high'] * 100:.1f}]"


def load_eval(directory: Path) -> tuple[dict, list[dict]]:
    results = json.loads((directory / "results.json").read_text(encoding="utf-8"))
    with open(directory / "items.jsonl", encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    return results, items


def math_outcomes(items: list[dict], side: str = "model") -> dict[str, float]:
    return {row["id"]: row[f"correct_{side}"] for row in items if row["task"] == "math"}


def policy_rows(evals: dict[str, Path], bootstrap: int = 2000) -> dict[str, dict[str, Any]]:
    """Per policy: math, Δ math vs start, Δ vs SFT, judge win rates, code; from each policy's eval."""
    rows: dict[str, dict[str, Any]] = {}
    loaded = {name: load_eval(path) for name, path in evals.items() if (path / "results.json").is_file()}
    sft_math = math_outcomes(loaded["sft"][1]) if "sft" in loaded else {}
    for name, (results, items) in loaded.items():
        tasks = results["tasks"]
        if not rows.get("start"):
            rows["start"] = {"math": tasks.get("math", {}).get("baseline"), "code": tasks.get("code", {}).get("baseline"),
                             "math_by_level": tasks.get("math", {}).get("baseline_by_level", {})}
        row = {"math": tasks.get("math", {}).get("model"), "math_vs_start": tasks.get("math", {}).get("difference"),
               "math_by_level": tasks.get("math", {}).get("model_by_level", {}),
               "code": tasks.get("code", {}).get("model"), "code_vs_start": tasks.get("code", {}).get("difference")}
        if "judge" in tasks:
            judge = tasks["judge"]
            row.update(win_rate=judge["win_rate"], lc_win_rate=judge["length_controlled_win_rate"],
                       judge=judge["judge"], position_bias=judge["position_bias"],
                       order_consistency=judge["order_consistency"])
        mine = math_outcomes(items)
        if name != "sft" and sft_math and mine and set(mine) == set(sft_math):
            ids = sorted(mine)
            row["math_vs_sft"] = stats.paired_difference([mine[i] for i in ids], [sft_math[i] for i in ids],
                                                         samples=bootstrap).to_dict()
        rows[name] = row
    return rows


def markdown(rows: dict[str, dict], steps: list[Step], command: str, meta: dict) -> str:
    judge = next((r["judge"] for r in rows.values() if r.get("judge")), "")
    has_code = any(r.get("code") for r in rows.values())
    head = ["policy", "math (n={})".format(meta.get("math_n", "?")), "Δ math vs start", "Δ math vs SFT",
            f"judge win rate vs start ({judge})" if judge else "judge win rate", "length-controlled"]
    head += ["code pass@1", "Δ code vs start"] if has_code else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name, pct(row.get("math")), pct(row.get("math_vs_start"), True), pct(row.get("math_vs_sft"), True),
                 pct(row.get("win_rate")), pct(row.get("lc_win_rate"))]
        cells += [pct(row.get("code")), pct(row.get("code_vs_start"), True)] if has_code else []
        lines.append("| " + " | ".join(cells) + " |")
    timing = ["| step | wall time | mean load (2 cores) | this run |", "|---|---|---|---|"]
    for step in steps:
        if step.always:
            continue
        timing.append(f"| {step.name} | {format_seconds(step.seconds)} | "
                      f"{'—' if step.load is None else f'{step.load:.1f}'} | {'skipped (done)' if step.skipped else 'ran'} |")
    total = sum(s.seconds for s in steps if not s.always)
    notes = [f"Command: `{command}`", "",
             "Intervals are 95%: Wilson for accuracies, paired bootstrap over items for differences, bootstrap over "
             "prompts (both orders together) for win rates. Every judged pair was judged in both orders.", ""]
    levels = by_level_table(rows)
    return "\n".join(["## Loop results", "", *notes, *lines, "", "Math accuracy by level:", "", *levels, "",
                      f"Wall time per step (total {format_seconds(total)}):", "", *timing, ""])


def by_level_table(rows: dict[str, dict]) -> list[str]:
    levels = sorted({k for r in rows.values() for k in (r.get("math_by_level") or {})})
    if not levels:
        return []
    lines = ["| policy | " + " | ".join(f"level {k}" for k in levels) + " |", "|---|" + "---|" * len(levels)]
    for name, row in rows.items():
        per = row.get("math_by_level") or {}
        lines.append(f"| {name} | " + " | ".join(pct(per.get(k)) for k in levels) + " |")
    return lines


def chart(rows: dict[str, dict], path: Path) -> None:
    """Math accuracy per policy and win rate vs the start, each with its interval."""
    names = list(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(names) + 3), 3.6))
    for ax, key, title in ((left, "math", "math accuracy (%)"), (right, "win_rate", "judge win rate vs start (%)")):
        vals = [rows[n].get(key) for n in names]
        xs = [i for i, v in enumerate(vals) if v and v.get("value") is not None]
        ys = [vals[i]["value"] * 100 for i in xs]
        err = [[ys[k] - vals[i]["low"] * 100 for k, i in enumerate(xs)],
               [vals[i]["high"] * 100 - ys[k] for k, i in enumerate(xs)]]
        ax.bar(xs, ys, 0.6, yerr=err, capsize=4, color=["#b0b0b0" if names[i] == "start" else "#3b6fb6" for i in xs])
        for i, y in zip(xs, ys):
            ax.text(i, 2, f"{y:.1f}", ha="center", fontsize=8, color="white")
        if key == "win_rate":
            ax.axhline(50, color="#c0504d", lw=1, ls="--")
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 100)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_table(out: Path, evals: dict[str, Path], steps: list[Step], command: str) -> dict:
    rows = policy_rows(evals)
    if not rows:
        return {"policies": 0}
    math_n = next((r["math"]["n"] for r in rows.values() if r.get("math")), "?")
    text = markdown(rows, steps, command, {"math_n": math_n})
    (out / "results.md").write_text(text, encoding="utf-8")
    timing = {s.name: {"seconds": s.seconds, "load": s.load, "skipped": s.skipped} for s in steps if not s.always}
    (out / "results.json").write_text(json.dumps({"policies": rows, "steps": timing, "command": command}, indent=2,
                                                 default=str) + "\n", encoding="utf-8")
    chart(rows, out / "charts" / "policies.png")
    return {"policies": len(rows), "results": str(out / "results.md")}
