"""Proxy reward against gold, round by round, for every DPO step that logged both (Gao et al. 2023,
"Scaling Laws for Reward Model Overoptimization").

A DPO step whose online samples are scored by a reward model (the proxy) and, with `online.gold`, also
by math-verify against each prompt's reference (the gold, never trained on) writes both per round in
the first line of `rounds/round-NNN.jsonl`. Over-optimisation is the proxy still rising while gold
stops rising or falls. Per policy this gives:

- curves: proxy reward (mean of the samples) and gold accuracy of the samples, against round
  (`charts/proxy_vs_gold.png`, one line per DPO step);
- the EMAs it ran with, read from its step's `loop-config.yaml` (policy-weight EMA export, TR-DPO's
  moving reference, the normalised reward margin, the reward-model EMA refresh);
- its held-out math accuracy, with the paired difference against the policy that ran none of them;
- the drop of gold from its peak to its last round (each point a 3-round moving mean: one round is
  ~80 samples, ±10 pts), the last round's KL to the reference and mean answer length.
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
    """Per round: proxy (mean reward of the samples), gold (their accuracy), KL, mean answer length;
    None when the step logged no gold."""
    stats = round_stats(directory)
    if not stats or not any("gold/accuracy" in s for s in stats):
        return None
    def column(key: str) -> list[float]:
        return [float(s.get(key, math.nan)) for s in stats]
    return {"round": column("online/round"), "proxy": column("reward/mean"), "proxy_chosen": column("reward/chosen_mean"),
            "gold": column("gold/accuracy"), "gold_chosen": column("gold/chosen_accuracy"),
            "kl": column("online/kl_to_reference"), "chars": column("online/answer_chars_mean"),
            "skipped_share": column("online/skipped_share")}


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


def last_finite(values: list[float]) -> float:
    return next((v for v in reversed(values) if math.isfinite(v)), math.nan)


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
               "gold_first": c["gold"][0] if c["gold"] else math.nan,
               "gold_peak_to_final": peak_to_final(c["gold"]), "proxy_first": c["proxy"][0] if c["proxy"] else math.nan,
               "proxy_last": last_finite(c["proxy"]), "gold_last": last_finite(moving_mean(c["gold"])),
               "kl_last": last_finite(c["kl"]), "chars_last": last_finite(c["chars"])}
        if baseline and name != baseline and name in outcomes and baseline in outcomes:
            found = compare(outcomes[name], outcomes[baseline])
            if found:
                row["math_vs_baseline"], row["math_vs_baseline_detectable"] = found
        rows[name] = row
    return {"baseline": baseline, "rows": rows}


def chart(policies: dict[str, dict], path: Path) -> None:
    """Proxy reward and gold accuracy of the samples against round, one line per DPO step."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = set()
    for name, p in policies.items():
        if p["step"] in drawn:  # a raw checkpoint samples as its step does: one line
            continue
        drawn.add(p["step"])
        c, label = p["curves"], p["step"]
        left.plot(c["round"], c["proxy"], marker="o", ms=3, label=label)
        right.plot(c["round"], [g * 100 for g in moving_mean(c["gold"])], marker="o", ms=3, label=label)
    left.set_title("proxy reward (reward model, mean of the round's samples)", fontsize=9)
    right.set_title(f"gold: math-verify accuracy of the samples (%, {SMOOTH}-round mean)", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("online round")
        ax.grid(alpha=0.3)
    right.legend(fontsize=7)
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
             f"was logged, never trained on. Paired differences are against `{base}` (no EMA). Gold per round is "
             f"a {SMOOTH}-round moving mean (one round ≈ 80 samples).", "",
             "| policy | EMAs | held-out math | Δ vs no-EMA | rounds | proxy first → last | gold first → last "
             "| gold peak − last | KL last | length last (chars) |", "|" + "---|" * 10]
    for name, r in summary["rows"].items():
        lines.append(
            f"| {name} | {', '.join(r['emas']) or 'none'} | {pct(r.get('math'))} | {pct(r.get('math_vs_baseline'), True)} "
            f"| {r['rounds']} | {r['proxy_first']:.2f} → {r['proxy_last']:.2f} "
            f"| {r['gold_first'] * 100:.0f}% → {r['gold_last'] * 100:.0f}% | {r['gold_peak_to_final'] * 100:.1f} pts "
            f"| {r['kl_last']:.3f} | {r['chars_last']:.0f} |")
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
