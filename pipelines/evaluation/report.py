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


def _fmt(est: dict, kind: str) -> tuple[str, str]:
    """(value, interval) as text. kind: percent (shares), points (differences of shares, signed),
    signed (bias, reward differences), number (rewards)."""
    if est.get("value") is None:
        return "n/a", ""
    scale = 100 if kind in ("percent", "points") else 1
    sign = "+" if kind in ("points", "signed") else ""
    digits = 1 if scale == 100 else 3
    unit = {"percent": "%", "points": " pts"}.get(kind, "")
    value = f"{est['value'] * scale:{sign}.{digits}f}{unit}"
    return value, f"[{est['low'] * scale:.{digits}f}, {est['high'] * scale:.{digits}f}]"


def _kind(task: str, name: str) -> str:
    if "position bias" in name:
        return "signed"
    if task == "reward":
        return "percent" if "win rate" in name else "signed" if "difference" in name else "number"
    return "points" if "difference" in name else "percent"


def render_html(results: dict, pictures: list[str]) -> str:
    esc = html.escape
    roles = " · ".join(f"<b>{esc(k)}</b>: {esc(str(v))}" for k, v in results["roles"].items())
    table = "".join(
        f"<tr><td>{esc(task)}</td><td>{esc(name)}</td><td>{v}</td><td>{ci}</td><td>{est.get('n', 0)} "
        f"{esc(est.get('unit', ''))}</td><td>{esc(est.get('method', ''))}</td></tr>"
        for task, name, est in figures(results) for v, ci in [_fmt(est, _kind(task, name))])
    notes = []
    if "judge" in results["tasks"]:
        v = results["tasks"]["judge"]["verdicts"]
        notes.append(f"Judge: {v['judged']} verdicts (every pair in both orders), {v['unreadable']} unreadable "
                     "(left out, not guessed). Intervals resample prompts, both orders of a prompt together.")
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
<p>{'<br>'.join(esc(n) for n in notes)}</p>
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
            parts.append(f"{label} {value} {ci} n={est['n']}")
    if "judge" in tasks:
        j = tasks["judge"]
        value, ci = _fmt(j["win_rate"], "percent")
        lc, _ = _fmt(j["length_controlled_win_rate"], "percent")
        bias = j["position_bias"]["value"]
        parts.append(f"judge win rate {value} {ci} (LC {lc}, position bias "
                     f"{'n/a' if bias is None else f'{bias:+.2f}'}, {j['verdicts']['unreadable']} unreadable "
                     f"of {j['verdicts']['judged']})")
    if "reward" in tasks:
        value, ci = _fmt(tasks["reward"]["model_mean"], "number")
        parts.append(f"reward {value} {ci}")
    against = f" vs {results['roles']['baseline']}" if "baseline" in results["roles"] else ""
    return f"eval {results['roles']['model']}{against}: " + " · ".join(parts) + f" → {output}"
