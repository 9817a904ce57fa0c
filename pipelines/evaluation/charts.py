"""PNG charts of an evaluation (matplotlib, Agg): accuracy, pairwise verdicts, answer lengths, rewards."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"model": "#3b6fb6", "baseline": "#b0b0b0"}
VERDICT_COLORS = {"win": "#3b8f5a", "tie": "#d8c15a", "loss": "#c0504d", "unreadable": "#9a9a9a"}


def _err(est: dict) -> tuple[float, float, float]:
    """(value, lower error, upper error) in percent; zeros when the estimate is empty."""
    if not est or est.get("value") is None:
        return 0.0, 0.0, 0.0
    v = est["value"] * 100
    return v, v - est["low"] * 100, est["high"] * 100 - v


def accuracy_chart(tasks: dict, roles: dict, path: Path) -> None:
    """Bars per math level, math overall and code pass@1; the baseline beside the model."""
    labels, groups = [], {"model": [], "baseline": []}
    math_r, code_r = tasks.get("math"), tasks.get("code")
    for side in groups:
        if math_r and side in math_r:
            groups[side] += [math_r[f"{side}_by_level"][k] for k in sorted(math_r[f"{side}_by_level"])]
            groups[side].append(math_r[side])
        if code_r and side in code_r:
            groups[side].append(code_r[side])
    if math_r:
        labels += [f"math L{k}" for k in sorted(math_r["model_by_level"])] + ["math (all)"]
    if code_r:
        labels.append("code pass@1")
    sides = [s for s in groups if groups[s]]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(labels) + 1), 3.6))
    width = 0.8 / len(sides)
    for k, side in enumerate(sides):
        vals = [_err(e) for e in groups[side]]
        xs = [i + (k - (len(sides) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [v[0] for v in vals], width, yerr=[[v[1] for v in vals], [v[2] for v in vals]], capsize=3,
               color=COLORS[side], label=f"{side}: {roles.get(side, '')}")
        for x, est, v in zip(xs, groups[side], vals):
            ax.text(x, v[0] + v[2] + 1.5, f"n={est['n']}", ha="center", fontsize=7, color="#555")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("% correct (95% interval)")
    ax.set_ylim(0, 110)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    _save(fig, path)


def judge_chart(judge: dict, roles: dict, path: Path) -> None:
    """Left: win rate and length-controlled win rate with intervals. Right: verdicts by M's position."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [1.1, 1]})
    names = ["win rate", "length-controlled"]
    ests = [judge["win_rate"], judge["length_controlled_win_rate"]]
    for i, est in enumerate(ests):
        v, lo, hi = _err(est)
        left.errorbar([v], [i], xerr=[[lo], [hi]], fmt="o", color=COLORS["model"], capsize=4)
        left.text(v, i + 0.18, f"{v:.1f}%  [{v - lo:.1f}, {v + hi:.1f}]", ha="center", fontsize=8)
    left.axvline(50, color="#888", ls="--", lw=1)
    left.set_yticks(range(len(names)), names)
    left.set_xlim(0, 100)
    left.set_ylim(-0.6, len(names) - 0.3)
    left.set_xlabel(f"% for {roles.get('model', 'model')} vs {roles.get('baseline', 'baseline')}")
    if judge.get("signal") is False:  # the numbers stay visible, greyed, under the verdict that they say nothing
        for line in left.lines + left.texts:
            line.set_alpha(0.35)
        left.set_title(f"judge: {judge['judge']} — NO SIGNAL\n{judge.get('no_signal_reason', '')}", fontsize=8,
                       color="#c0504d")
    else:
        left.set_title(f"judge: {judge['judge']}", fontsize=9)
    counts = {"first": judge["verdicts"]["model_first"], "second": judge["verdicts"]["model_second"]}
    bottoms = [0, 0]
    for outcome in ("win", "tie", "loss", "unreadable"):
        values = [counts["first"][outcome], counts["second"][outcome]]
        right.barh([0, 1], values, left=bottoms, color=VERDICT_COLORS[outcome], label=outcome)
        bottoms = [b + v for b, v in zip(bottoms, values)]
    right.set_yticks([0, 1], ["model shown first", "model shown second"])
    right.set_xlabel("verdicts (model's outcome)")
    bias = judge["position_bias"]["value"]
    right.set_title("position bias " + ("n/a" if bias is None else f"{bias:+.2f}") + ", order consistency "
                    + _pct(judge["order_consistency"]["value"]), fontsize=9)
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    _save(fig, path)


def lengths_chart(rows: list[dict], roles: dict, path: Path) -> None:
    """Answer lengths of both models on the judge instructions: the length-control term's input."""
    judge_rows = [r for r in rows if r["task"] == "judge"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    lengths = {side: [r[f"length_{side}"] for r in judge_rows] for side in ("model", "baseline")}
    top = max(max(v, default=0) for v in lengths.values()) or 1
    bins = [top * i / 20 for i in range(21)]
    for side, style in (("model", {"alpha": 0.7}), ("baseline", {"histtype": "step", "lw": 2})):
        ax.hist(lengths[side], bins=bins, color=COLORS[side] if side == "model" else "#555",
                label=f"{side}: {roles.get(side, '')}", **style)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("answer length (characters)")
    ax.set_ylabel("instructions")
    ax.legend(fontsize=8)
    ax.set_title("Answer lengths (judge task)")
    _save(fig, path)


def reward_chart(reward: dict, rows: list[dict], roles: dict, path: Path) -> None:
    """Each answer's reward (dots) and the mean with its interval, per side."""
    reward_rows = [r for r in rows if r["task"] == "reward"]
    sides = [s for s in ("model", "baseline") if f"{s}_mean" in reward]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, side in enumerate(sides):
        values = [r[f"reward_{side}"] for r in reward_rows if not math.isnan(r[f"reward_{side}"])]
        jitter = [i + 0.12 * ((k * 37 % 11) / 10 - 0.5) for k in range(len(values))]
        ax.scatter(jitter, values, s=8, alpha=0.5, color=COLORS[side])
        est = reward[f"{side}_mean"]
        if est["value"] is not None:
            ax.errorbar([i + 0.3], [est["value"]], yerr=[[est["value"] - est["low"]], [est["high"] - est["value"]]],
                        fmt="D", color="black", capsize=4)
    ax.set_xticks(range(len(sides)), [f"{s}\n{roles.get(s, '')}" for s in sides])
    ax.set_ylabel("reward")
    ax.set_title(f"Rewards ({reward['scorer']})", fontsize=9)
    _save(fig, path)


def _pct(value) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
