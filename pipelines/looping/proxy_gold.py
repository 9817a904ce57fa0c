"""Proxy reward against gold, round by round, for every DPO step that logged both (Gao et al. 2023,
"Scaling Laws for Reward Model Overoptimization").

A DPO step whose online samples are scored by a reward model (the proxy) and, with `online.gold`, also
by math-verify against each prompt's reference (the gold, never trained on) writes both per round in
the first line of `rounds/round-NNN.jsonl`. Over-optimisation is the proxy still rising while gold
stops rising or falls. Per policy this gives:

- curves against round (`charts/proxy_vs_gold.png`, one line per DPO step): proxy reward (mean of the
  samples), gold accuracy of the samples, the pairs' gold edge (gold accuracy of the chosen answers
  minus that of the rejected: how often the proxy still picks the right answer over a wrong one) and
  the mean answer length. All variants sample the same prompts in the same order (same seed), so
  their curves are paired round by round; the level of gold moves with each round's prompts;
- the EMAs it ran with, read from its step's `loop-config.yaml` (policy-weight EMA export, TR-DPO's
  moving reference, the normalised reward margin, the reward-model EMA refresh);
- its held-out math accuracy, with the paired difference against the policy that ran none of them;
- first and last figures as means over the first and the last 3 rounds (one round is ~80 samples,
  ±10 pts; the KL estimate uses 8 of them and can come out below 0), and the drop of gold from the
  peak of its 3-round moving mean to its end.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SMOOTH = 3  # rounds in the moving mean behind the peak-to-final drop


def round_stats(directory: Path) -> list[dict]:
    """The stats line of each round of a DPO step, in round order."""
    rows = []
    for path in sorted((directory / "rounds").glob("round-*.jsonl")):
        with open(path, encoding="utf-8") as f:
            first = f.readline()
        if first.strip():
            row = json.loads(first)
            if row.get("kind") == "stats":
                rows.append(row)
    return rows


def curves(directory: Path) -> dict[str, list[float]] | None:
    """Per round: proxy (mean reward of the samples), gold (their accuracy, and the chosen and rejected
    answers'), KL, mean answer length; None when the step logged no gold."""
    stats = round_stats(directory)
    if not stats or not any("gold/accuracy" in s for s in stats):
        return None
    def column(key: str) -> list[float]:
        return [float(s.get(key, math.nan)) for s in stats]
    return {"round": column("online/round"), "proxy": column("reward/mean"), "gold": column("gold/accuracy"),
            "gold_chosen": column("gold/chosen_accuracy"), "gold_rejected": column("gold/rejected_accuracy"),
            "kl": column("online/kl_to_reference"), "chars": column("online/answer_chars_mean")}


def moving_mean(values: list[float], width: int = SMOOTH) -> list[float]:
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - width + 1):i + 1] if math.isfinite(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


def peak_to_final(values: list[float]) -> float:
    """Peak minus last of the moving mean (≥ 0; 0 when the last is the peak)."""
    smooth = [v for v in moving_mean(values) if math.isfinite(v)]
    return max(smooth) - smooth[-1] if smooth else math.nan


def mean_of(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def ends(values: list[float], width: int = SMOOTH) -> tuple[float, float]:
    """Means over the first and the last `width` rounds."""
    return mean_of(values[:width]), mean_of(values[-width:])


def edge(curve: dict[str, list[float]]) -> list[float]:
    """Per round: gold accuracy of the chosen answers minus that of the rejected."""
    return [c - r for c, r in zip(curve["gold_chosen"], curve["gold_rejected"])]


def emas_of(step_config: dict, raw: bool) -> list[str]:
    """The EMA readings a DPO step ran with (a raw checkpoint is read without the export)."""
    ema, online, refresh = (step_config.get(k) or {} for k in ("ema", "online", "rm_refresh"))
    found = []
    if ema.get("enabled") and ema.get("export", True) and not raw:
        found.append("weight EMA export")
    if step_config.get("sync_ref_model"):
        found.append("TR-DPO reference")
    if float(online.get("margin", 0.5) or 0) > 0:
        found.append(f"normalised margin {float(online['margin']):g}")
    if refresh.get("enabled"):
        found.append("RM EMA refresh")
    return found


def summarize(policies: dict[str, dict], outcomes: dict[str, dict[str, float]], compare) -> dict[str, dict]:
    """One row per policy with curves; the paired math difference against the policy with no EMA."""
    baseline = next((name for name, p in policies.items() if not p["emas"]), None)
    rows = {}
    for name, p in policies.items():
        c = p["curves"]
        row = {"emas": p["emas"], "step": p["step"], "rounds": len(c["round"]), "math": p.get("math"),
               "gold_peak_to_final": peak_to_final(c["gold"])}
        for key, values in (("proxy", c["proxy"]), ("gold", c["gold"]), ("edge", edge(c)), ("kl", c["kl"]),
                            ("chars", c["chars"])):
            row[f"{key}_first"], row[f"{key}_last"] = ends(values)
        if baseline and name != baseline and name in outcomes and baseline in outcomes:
            found = compare(outcomes[name], outcomes[baseline])
            if found:
                row["math_vs_baseline"], row["math_vs_baseline_detectable"] = found
        rows[name] = row
    return {"baseline": baseline, "rows": rows}


def chart(policies: dict[str, dict], path: Path) -> None:
    """Proxy reward and gold accuracy of the samples against round, one line per DPO step."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    (proxy, gold), (gap, length) = axes
    drawn = set()
    for name, p in policies.items():
        if p["step"] in drawn:  # a raw checkpoint samples as its step does: one line
            continue
        drawn.add(p["step"])
        c, label = p["curves"], p["step"]
        proxy.plot(c["round"], c["proxy"], marker="o", ms=3, label=label)
        gold.plot(c["round"], [g * 100 for g in moving_mean(c["gold"])], marker="o", ms=3, label=label)
        gap.plot(c["round"], [g * 100 for g in moving_mean(edge(c))], marker="o", ms=3, label=label)
        length.plot(c["round"], c["chars"], marker="o", ms=3, label=label)
    proxy.set_title("proxy reward (reward model, mean of the round's samples)", fontsize=9)
    gold.set_title(f"gold: math-verify accuracy of the samples (%, {SMOOTH}-round mean)", fontsize=9)
    gap.set_title(f"gold edge of the pairs: chosen − rejected accuracy (pts, {SMOOTH}-round mean)", fontsize=9)
    length.set_title("mean answer length (characters)", fontsize=9)
    gap.axhline(0, color="#888", lw=0.8)
    for ax in axes.flat:
        ax.set_xlabel("online round")
        ax.grid(alpha=0.3)
    gold.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(summary: dict, pct) -> list[str]:
    if not summary["rows"]:
        return []
    base = summary["baseline"] or "—"
    lines = ["", "## Proxy reward against gold (reward-model DPO)", "",
             f"Each DPO step below trained on online pairs ranked by the reward model alone; gold (math-verify) "
             f"was logged, never trained on. Paired differences are against `{base}` (no EMA). First → last: means "
             f"over the first and the last {SMOOTH} rounds (one round ≈ 80 samples); gold edge: gold accuracy of "
             f"the chosen minus the rejected answers; a raw policy shares its step's rounds.", "",
             "| policy | EMAs | held-out math | Δ vs no-EMA | rounds | proxy first → last | gold first → last "
             "| gold peak − last | gold edge first → last | KL last | length first → last (chars) |", "|" + "---|" * 11]
    for name, r in summary["rows"].items():
        lines.append(
            f"| {name} | {', '.join(r['emas']) or 'none'} | {pct(r.get('math'))} | {pct(r.get('math_vs_baseline'), True)} "
            f"| {r['rounds']} | {r['proxy_first']:.2f} → {r['proxy_last']:.2f} "
            f"| {r['gold_first'] * 100:.0f}% → {r['gold_last'] * 100:.0f}% | {r['gold_peak_to_final'] * 100:.1f} pts "
            f"| {r['edge_first'] * 100:+.0f} → {r['edge_last'] * 100:+.0f} pts | {r['kl_last']:.2f} "
            f"| {r['chars_first']:.0f} → {r['chars_last']:.0f} |")
    return lines + ["", "![proxy against gold](charts/proxy_vs_gold.png)"]


def collect(evals: dict[str, Path], rows: dict[str, dict], policy_directory, step_config) -> dict[str, dict[str, Any]]:
    """The policies whose DPO step logged gold: their curves, EMAs and held-out math."""
    found = {}
    for name, eval_dir in evals.items():
        directory = policy_directory(eval_dir)
        if directory is None:
            continue
        c = curves(directory)
        if c is None:
            continue
        model = (step_config(eval_dir).get("models", {}).get("policy") or {}).get("model") or ""
        raw = Path(model).name.startswith("checkpoint-")  # the step's last raw weights, not its export
        found[name] = {"step": directory.name, "curves": c, "emas": emas_of(step_config(directory), raw),
                       "math": (rows.get(name) or {}).get("math")}
    return found
