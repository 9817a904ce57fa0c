"""The loop's closing table: every policy against the start, from the evals' results.json and
items.jsonl, as README-ready markdown (`DIR/results.md`), JSON (`DIR/results.json`) and charts
(`DIR/charts/*.png`), plus the wall time and machine load of every step.

Beside each paired math difference: the difference the eval could detect at its n (power 80%,
two-sided 5%, from the observed discordance; `stats.minimum_detectable_difference`) and whether the
observed one clears it. A judge whose order consistency or position bias shows it cannot tell the
answers apart gets "no signal" instead of a win rate. The dose-response chart
(`charts/dose_response.png`) puts each policy's held-out math accuracy against the training rows it
was made with: SFT rows (`data_report.json` of each SFT step) plus DPO pairs (the distinct pairs of
the DPO step's `rounds/`, else its offline pairs), summed along the policy's lineage (each step's
`loop-config.yaml` names the model it started from)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipelines.evaluation import stats  # noqa: E402
from pipelines.looping import proxy_gold  # noqa: E402
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
    return {row["id"]: _score(row[f"correct_{side}"]) for row in items if row["task"] == "math"}


def _score(value) -> float:
    return float("nan") if value is None else float(value)  # items.jsonl writes a failed call's NaN as null


def judge_signal(judge: dict) -> tuple[bool, str]:
    """The eval's own verdict on its judge (`signal`), or the same rule on older results without it."""
    if "signal" in judge:
        return bool(judge["signal"]), judge.get("no_signal_reason", "")
    rule = judge.get("signal_rule", {})
    return stats.judge_signal(judge["order_consistency"].get("value"), judge["position_bias"].get("value"),
                              rule.get("min_order_consistency", 0.6), rule.get("max_position_bias", 0.3))


def compare(mine: dict[str, float], theirs: dict[str, float], bootstrap: int) -> tuple[dict, dict] | None:
    """(paired difference, detectable difference) over the items both evals scored, when they are the same items."""
    if not mine or set(mine) != set(theirs):
        return None
    ids = sorted(mine)
    a, b = [mine[i] for i in ids], [theirs[i] for i in ids]
    return stats.paired_difference(a, b, samples=bootstrap).to_dict(), stats.detectable_difference(a, b)


def policy_rows(evals: dict[str, Path], bootstrap: int = 2000) -> dict[str, dict[str, Any]]:
    """Per policy: math, Δ math vs start, Δ vs SFT (each with the difference detectable at n),
    judge win rates (or no signal), code; from each policy's eval."""
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
            signal, why = judge_signal(judge)
            row.update(win_rate=judge["win_rate"], lc_win_rate=judge["length_controlled_win_rate"],
                       judge=judge["judge"], position_bias=judge["position_bias"],
                       order_consistency=judge["order_consistency"], judge_signal=signal, no_signal_reason=why)
        mine = math_outcomes(items)
        vs_start = compare(mine, math_outcomes(items, "baseline"), bootstrap) if any(
            "correct_baseline" in r for r in items if r["task"] == "math") else None
        if vs_start:
            row["math_vs_start_detectable"] = vs_start[1]
        if name != "sft" and sft_math:
            vs_sft = compare(mine, sft_math, bootstrap)
            if vs_sft:
                row["math_vs_sft"], row["math_vs_sft_detectable"] = vs_sft
        rows[name] = row
    return rows


def detectable(det: dict | None) -> str:
    """'±7.2 pts: not cleared' — the difference detectable at n and whether the observed one clears it."""
    if not det:
        return NA
    if det.get("mde") is None:
        return "n/a (no discordant item)"
    return f"±{det['mde'] * 100:.1f} pts: {'cleared' if det['clears'] else 'not cleared'}"


def win_cell(row: dict, key: str) -> str:
    if row.get(key) and row.get("judge_signal") is False:
        return "no signal"
    return pct(row.get(key))


def markdown(rows: dict[str, dict], steps: list[Step], command: str, meta: dict) -> str:
    judge = next((r["judge"] for r in rows.values() if r.get("judge")), "")
    has_code = any(r.get("code") for r in rows.values())
    head = ["policy", "math (n={})".format(meta.get("math_n", "?")), "Δ math vs start", "detectable at n",
            "Δ math vs SFT", "detectable at n (vs SFT)",
            f"judge win rate vs start ({judge})" if judge else "judge win rate", "length-controlled"]
    head += ["code pass@1", "Δ code vs start"] if has_code else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name, pct(row.get("math")), pct(row.get("math_vs_start"), True),
                 detectable(row.get("math_vs_start_detectable")), pct(row.get("math_vs_sft"), True),
                 detectable(row.get("math_vs_sft_detectable")), win_cell(row, "win_rate"), win_cell(row, "lc_win_rate")]
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
             "prompts (both orders together) for win rates. Every judged pair was judged in both orders.", "",
             "Detectable at n: the smallest true difference the eval finds with 80% power at a two-sided 5% level, "
             "from the observed discordance ψ (the share of items exactly one of the two policies gets right): "
             "(1.96 + 0.84)·√(ψ/n); \"cleared\" when the observed difference is at least that large. A difference "
             "can exclude zero without clearing it (the 5% threshold is 1.96·√(ψ/n)): it is significant, but at this n "
             "a true gain of its size would be missed more than one time in five.", ""]
    no_signal = {row["judge"]: row["no_signal_reason"] for row in rows.values() if row.get("judge_signal") is False}
    for name, why in no_signal.items():
        notes += [f"Judge {name}: no signal ({why}): it cannot tell the answers apart, so its win rates are not "
                  "reported (results.json keeps them).", ""]
    levels = by_level_table(rows)
    dose = meta.get("dose_response") or []
    dose_lines = (["Held-out math against the training rows each policy was made with (SFT rows + DPO pairs along its "
                   "lineage; charts/dose_response.png):", "", "| policy | lineage | SFT rows | DPO pairs | math |",
                   "|---|---|---|---|---|"]
                  + [f"| {p['policy']} | {' → '.join(['start'] + p['lineage'])} | {p['sft_rows']} | {p['dpo_pairs']} | "
                     f"{pct(p['math'])} |" for p in dose] + [""]) if dose else []
    return "\n".join(["## Loop results", "", *notes, *lines, "", *dose_lines, "Math accuracy by level:", "", *levels,
                      "", f"Wall time per step (total {format_seconds(total)}):", "", *timing, ""])


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
    """Math accuracy per policy and win rate vs the start, each with its interval; a panel only for what
    was measured (the CPU loop runs no judge task: an empty win-rate panel read as a missing result)."""
    names = list(rows)
    panels = [(key, title) for key, title in (("math", "math accuracy (%)"), ("win_rate", "judge win rate vs start (%)"))
              if any((rows[n].get(key) or {}).get("value") is not None for n in names)]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4, 0.8 * len(names) + 1.5) * len(panels), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        vals = [rows[n].get(key) for n in names]
        xs = [i for i, v in enumerate(vals) if v and v.get("value") is not None]
        ys = [vals[i]["value"] * 100 for i in xs]
        err = [[ys[k] - vals[i]["low"] * 100 for k, i in enumerate(xs)],
               [vals[i]["high"] * 100 - ys[k] for k, i in enumerate(xs)]]
        silent = [key == "win_rate" and rows[names[i]].get("judge_signal") is False for i in xs]
        ax.bar(xs, ys, 0.6, yerr=err, capsize=4,
               color=["#e4e4e4" if q else "#b0b0b0" if names[i] == "start" else "#3b6fb6" for i, q in zip(xs, silent)])
        for i, y, q in zip(xs, ys, silent):
            ax.text(i, 2, "no signal" if q else f"{y:.1f}", ha="center", fontsize=8, color="#c0504d" if q else "white")
        if key == "win_rate":
            ax.axhline(50, color="#c0504d", lw=1, ls="--")
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 100)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- dose-response

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _step_config(directory: Path) -> dict:
    try:
        return yaml.safe_load((directory / "loop-config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def policy_directory(eval_dir: Path) -> Path | None:
    """The training step directory of the policy an eval step evaluated (a raw checkpoint's step), or None."""
    model = (_step_config(eval_dir).get("models", {}).get("policy") or {}).get("model")
    if not model or not Path(model).is_dir():
        return None
    for directory in (Path(model), Path(model).parent):
        if (directory / "loop-config.yaml").is_file():
            return directory
    return None


def dpo_pairs(directory: Path) -> int:
    """Distinct (prompt, chosen, rejected) pairs a DPO step trained on, from its round logs; without
    rounds, its offline pairs (data_report.json)."""
    seen = set()
    for path in sorted((directory / "rounds").glob("round-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            if row.get("kind") == "train_row":
                seen.add(json.dumps([row.get("prompt"), row.get("chosen"), row.get("rejected")], sort_keys=True))
    if seen:
        return len(seen)
    return int(_read_json(directory / "data_report.json").get("train_rows") or 0)


def lineage(directory: Path) -> dict[str, Any]:
    """SFT rows and DPO pairs summed along a policy's lineage (each step's loop-config.yaml names the
    model it started from; a model that is not a loop step directory is the start: 0 rows)."""
    sft_rows, pairs, names, seen = 0, 0, [], set()
    current: Path | None = directory
    while current is not None and current.resolve() not in seen:
        seen.add(current.resolve())
        names.insert(0, current.name)
        if (current / "dpo_summary.json").is_file():
            pairs += dpo_pairs(current)
        else:
            sft_rows += int(_read_json(current / "data_report.json").get("train_rows") or 0)
        parent = (_step_config(current).get("model") or {}).get("name")
        current = Path(parent) if parent and (Path(parent) / "loop-config.yaml").is_file() else None
    return {"lineage": names, "sft_rows": sft_rows, "dpo_pairs": pairs, "training_rows": sft_rows + pairs}


def dose_response(rows: dict[str, dict], evals: dict[str, Path]) -> list[dict]:
    """One point per policy with math: its training rows (start = 0) and its accuracy."""
    points = []
    for name, row in rows.items():
        if not row.get("math") or row["math"].get("value") is None:
            continue
        if name == "start":
            used = {"lineage": [], "sft_rows": 0, "dpo_pairs": 0, "training_rows": 0}
        else:
            directory = policy_directory(evals[name]) if name in evals else None
            if directory is None:
                continue
            used = lineage(directory)
        points.append({"policy": name, **used, "math": row["math"]})
    return points


def dose_chart(points: list[dict], path: Path) -> None:
    """Held-out math accuracy (95% interval) against training rows used; lines follow each lineage."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    at = {}
    for p in points:
        x, est = p["training_rows"], p["math"]
        y = est["value"] * 100
        ax.errorbar([x], [y], yerr=[[y - est["low"] * 100], [est["high"] * 100 - y]], fmt="o", capsize=4,
                    color="#b0b0b0" if p["policy"] == "start" else "#3b6fb6")
        ax.annotate(p["policy"], (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        at[p["policy"]] = (x, y)
    for p in points:  # each policy joined to the policy (step) it was trained from
        chain = ["start"] + p["lineage"]
        if len(chain) > 1 and chain[-2] in at:
            (x0, y0), (x1, y1) = at[chain[-2]], at[p["policy"]]
            ax.plot([x0, x1], [y0, y1], color="#888", lw=1, ls=":")
    ax.set_xlabel("training rows used (SFT rows + DPO pairs, along the lineage)")
    ax.set_ylabel("held-out math accuracy (%, 95% interval)")
    n = points[0]["math"]["n"] if points else "?"
    ax.set_title(f"Dose-response: held-out math (n={n}) against training data", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def proxy_gold_section(rows: dict[str, dict], evals: dict[str, Path], bootstrap: int = 2000) -> dict:
    """The reward-model DPO steps that logged gold (pipelines/looping/proxy_gold.py), with each policy's
    paired held-out math difference against the one that ran no EMA."""
    policies = proxy_gold.collect(evals, rows, policy_directory, _step_config)
    outcomes = {name: math_outcomes(load_eval(evals[name])[1]) for name in policies
                if (evals[name] / "items.jsonl").is_file()}
    summary = proxy_gold.summarize(policies, outcomes, lambda a, b: compare(a, b, bootstrap))
    return {**summary, "policies": policies}


def write_table(out: Path, evals: dict[str, Path], steps: list[Step], command: str) -> dict:
    rows = policy_rows(evals)
    if not rows:
        return {"policies": 0}
    math_n = next((r["math"]["n"] for r in rows.values() if r.get("math")), "?")
    points = dose_response(rows, evals)
    overopt = proxy_gold_section(rows, evals)
    text = markdown(rows, steps, command, {"math_n": math_n, "dose_response": points})
    text = text.rstrip("\n") + "\n" + "\n".join(proxy_gold.markdown(overopt, pct)) + "\n" if overopt["rows"] else text
    (out / "results.md").write_text(text, encoding="utf-8")
    timing = {s.name: {"seconds": s.seconds, "load": s.load, "skipped": s.skipped} for s in steps if not s.always}
    (out / "results.json").write_text(json.dumps({"policies": rows, "dose_response": points, "proxy_vs_gold": overopt,
                                                  "steps": timing, "command": command}, indent=2, default=str) + "\n",
                                      encoding="utf-8")
    chart(rows, out / "charts" / "policies.png")
    if points:
        dose_chart(points, out / "charts" / "dose_response.png")
    if overopt["rows"]:
        proxy_gold.chart(overopt["policies"], out / "charts" / "proxy_vs_gold.png")
    return {"policies": len(rows), "results": str(out / "results.md")}
