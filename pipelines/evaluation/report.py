"""An evaluation's outputs: results.json, items.jsonl, report.html with PNG charts, a summary line."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from pipelines.evaluation import charts


def _clean(value: Any) -> Any:
    """JSON without NaN (not valid JSON): NaN becomes null, recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_all(output: str, results: dict, rows: list[dict]) -> Path:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_clean(results), indent=2, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_clean(row), ensure_ascii=False) + "\n")
    pictures = draw(out, _clean(results), rows)
    (out / "report.html").write_text(render_html(_clean(results), pictures), encoding="utf-8")
    return out


def draw(out: Path, results: dict, rows: list[dict]) -> list[str]:
    tasks, roles, names = results["tasks"], results["roles"], []
    if "math" in tasks or "code" in tasks:
        charts.accuracy_chart(tasks, roles, out / "accuracy.png")
        names.append("accuracy.png")
    if "judge" in tasks:
        charts.judge_chart(tasks["judge"], roles, out / "judge.png")
        charts.lengths_chart(rows, roles, out / "lengths.png")
        names += ["judge.png", "lengths.png"]
    if "reward" in tasks:
        charts.reward_chart(tasks["reward"], rows, roles, out / "reward.png")
        names.append("reward.png")
    return names


def figures(results: dict) -> list[tuple[str, str, dict]]:
    """(task, figure, estimate) for every headline figure, in report order."""
    tasks, rows = results["tasks"], []
    for task, label in (("math", "accuracy"), ("code", "pass@1")):
        if task in tasks:
            for side in ("model", "baseline"):
                if side in tasks[task]:
                    rows.append((task, f"{label} ({side})", tasks[task][side]))
            if "difference" in tasks[task]:
                rows.append((task, f"{label} difference (model − baseline)", tasks[task]["difference"]))
            if "detectable" in tasks[task]:
                rows.append((task, f"{label} difference detectable at n", tasks[task]["detectable"]))
    if "judge" in tasks:
        j = tasks["judge"]
        rows += [("judge", "win rate", j["win_rate"]),
                 ("judge", "length-controlled win rate", j["length_controlled_win_rate"]),
                 ("judge", "position bias (first-position share − 0.5)", j["position_bias"]),
                 ("judge", "order consistency", j["order_consistency"])]
    if "reward" in tasks:
        r = tasks["reward"]
        rows += [("reward", f"{k.replace('_', ' ')}", r[k]) for k in
                 ("model_mean", "baseline_mean", "difference", "win_rate") if k in r]
    return rows


NO_SIGNAL = "no signal"
SIGNAL_FIGURES = ("win rate", "length-controlled win rate")


def no_signal(judge: dict) -> bool:
    """The judge's win rate carries no signal (results.json keeps the numbers, marked `signal: false`)."""
    return judge.get("signal") is False


def pts(share: float | None, signed: bool = False) -> str:
    return "n/a" if share is None else f"{share * 100:{'+' if signed else ''}.1f} pts"


def detectable_text(det: dict) -> str:
    """'±7.2 pts (power 80%, α 0.05): observed +1.7 pts does not clear it' and the items an expected gain needs."""
    if det.get("mde") is None:
        return f"n/a: no item where the two differ (n={det.get('n', 0)})"
    verdict = "clears it" if det["clears"] else "does not clear it"
    text = (f"±{det['mde'] * 100:.1f} pts (power {det['power'] * 100:.0f}%, α {det['alpha']:g}; discordant "
            f"{det['model_only']} + {det['baseline_only']} of {det['n']}): observed {pts(det['observed'], True)} {verdict}")
    if det.get("n_needed"):
        enough = "enough" if det["enough_items"] else "raise n"
        text += f"; a gain of {pts(det['expected_gain'], True)} needs n ≥ {det['n_needed']} ({enough})"
    return text


def _fmt(est: dict, kind: str) -> tuple[str, str]:
    """(value, interval) as text. kind: percent (shares), points (differences of shares, signed),
    signed (bias, reward differences), number (rewards), mde (a detectable difference)."""
    if kind == "mde":
        return (("n/a", "") if est.get("mde") is None else
                (f"±{est['mde'] * 100:.1f} pts", "observed clears it" if est["clears"] else "observed below it"))
    if est.get("value") is None:
        return "n/a", ""
    scale = 100 if kind in ("percent", "points") else 1
    sign = "+" if kind in ("points", "signed") else ""
    digits = 1 if scale == 100 else 3
    unit = {"percent": "%", "points": " pts"}.get(kind, "")
    value = f"{est['value'] * scale:{sign}.{digits}f}{unit}"
    return value, f"[{est['low'] * scale:.{digits}f}, {est['high'] * scale:.{digits}f}]"


def _kind(task: str, name: str) -> str:
    if "detectable" in name:
        return "mde"
    if "position bias" in name:
        return "signed"
    if task == "reward":
        return "percent" if "win rate" in name else "signed" if "difference" in name else "number"
    return "points" if "difference" in name else "percent"


def _cell(results: dict, task: str, name: str, est: dict) -> tuple[str, str]:
    if task == "judge" and name in SIGNAL_FIGURES and no_signal(results["tasks"]["judge"]):
        return NO_SIGNAL, ""
    return _fmt(est, _kind(task, name))


def notes(results: dict) -> list[str]:
    """What the table's figures mean for the comparison: detectable differences, the judge's signal."""
    tasks, out = results["tasks"], []
    for task, label in (("math", "Math"), ("code", "Code")):
        if "detectable" in tasks.get(task, {}):
            out.append(f"{label}: difference detectable at n: {detectable_text(tasks[task]['detectable'])}.")
        if "planned" in tasks.get(task, {}):
            plan = tasks[task]["planned"]
            if plan.get("mde") is not None:
                out.append(f"{label}, planning: a comparison at n={plan['n']} would detect ±{plan['mde'] * 100:.1f} pts "
                           f"if {plan['assumption']}.")
    if "judge" in tasks:
        j = tasks["judge"]
        v = j["verdicts"]
        out.append(f"Judge: {v['judged']} verdicts (every pair in both orders), {v['unreadable']} unreadable "
                   "(left out, not guessed). Intervals resample prompts, both orders of a prompt together.")
        pairs = j.get("pairs", {})
        if pairs.get("left_out"):
            failed = pairs["failed_answers"]
            out.append(f"Judge: {pairs['left_out']} of {pairs['total']} pairs left out because an answer failed "
                       f"(model {failed['model']}, baseline {failed['baseline']}): a failed call is not a loss.")
        if no_signal(j):
            out.append(f"Judge: no signal in its win rate ({j.get('no_signal_reason', '')}): it cannot tell the "
                       "answers apart, so any two models score about 50% with it; the numbers are in results.json.")
    return out


def render_html(results: dict, pictures: list[str]) -> str:
    esc = html.escape
    roles = " · ".join(f"<b>{esc(k)}</b>: {esc(str(v))}" for k, v in results["roles"].items())
    table = "".join(
        f"<tr><td>{esc(task)}</td><td>{esc(name)}</td><td>{esc(v)}</td><td>{esc(ci)}</td><td>{est.get('n', 0)} "
        f"{esc(est.get('unit', 'items' if 'detectable' in name else ''))}</td><td>{esc(est.get('method', ''))}</td></tr>"
        for task, name, est in figures(results) for v, ci in [_cell(results, task, name, est)])
    images = "".join(f'<figure><img src="{esc(p)}" alt="{esc(p)}"></figure>' for p in pictures)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>synthpost eval</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:14px}}
th{{background:#f3f3f3}}img{{max-width:100%}}figure{{margin:1em 0}}</style></head><body>
<h1>Evaluation</h1><p>{roles}</p>
<p>Limit: {esc(str(results.get('limit') or 'none'))} · wall time {results.get('wall_seconds', 0):.0f} s ·
per-item answers, verdicts and scores: <a href="items.jsonl">items.jsonl</a> ·
all figures: <a href="results.json">results.json</a></p>
<table><tr><th>task</th><th>figure</th><th>value</th><th>95% interval</th><th>n</th><th>method</th></tr>
{table}</table>
<p>{'<br>'.join(esc(n) for n in notes(results))}</p>
{images}
</body></html>
"""


def summary_line(results: dict, output: str) -> str:
    """One line: the headline figure of each task with its interval and n."""
    tasks, parts = results["tasks"], []
    for task, label in (("math", "math"), ("code", "code pass@1")):
        if task in tasks:
            est = tasks[task]["model"]
            value, ci = _fmt(est, "percent")
            part = f"{label} {value} {ci} n={est['n']}"
            if "difference" in tasks[task]:
                diff, dci = _fmt(tasks[task]["difference"], "points")
                part += f", Δ {diff} {dci}"
            det = tasks[task].get("detectable")
            if det:
                part += (", detectable n/a" if det.get("mde") is None else
                         f", detectable ±{det['mde'] * 100:.1f} pts: "
                         + ("cleared" if det["clears"] else "not cleared"))
            parts.append(part)
    if "judge" in tasks:
        j = tasks["judge"]
        bias = j["position_bias"]["value"]
        left_out = j.get("pairs", {}).get("left_out", 0)
        tail = (f"position bias {'n/a' if bias is None else f'{bias:+.2f}'}, {j['verdicts']['unreadable']} "
                f"unreadable of {j['verdicts']['judged']}" + (f", {left_out} pairs left out (failed answers)"
                                                              if left_out else ""))
        if no_signal(j):
            parts.append(f"judge win rate {NO_SIGNAL} ({j.get('no_signal_reason', '')}; {tail})")
        else:
            value, ci = _fmt(j["win_rate"], "percent")
            lc, _ = _fmt(j["length_controlled_win_rate"], "percent")
            parts.append(f"judge win rate {value} {ci} (LC {lc}, {tail})")
    if "reward" in tasks:
        value, ci = _fmt(tasks["reward"]["model_mean"], "number")
        parts.append(f"reward {value} {ci}")
    against = f" vs {results['roles']['baseline']}" if "baseline" in results["roles"] else ""
    return f"eval {results['roles']['model']}{against}: " + " · ".join(parts) + f" → {output}"
