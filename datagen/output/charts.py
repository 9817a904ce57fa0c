"""The pictures of a synth run's report: the funnel, critique scores and domains, as PNG bytes.

Each render function takes the stats.json summary (`datagen.output.report.summarize`) and returns PNG
bytes; `datagen.output.finalize` writes them into `report/`. matplotlib's object API on the Agg canvas:
no pyplot global state, no display needed.
"""
from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from datagen.record import CRITIQUE_ASPECTS

KEPT_COLOR, REJECTED_COLOR = "#2e7d32", "#c62828"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _label_nonzero(ax, bars, values: list[int], **kwargs) -> None:
    """Count labels on bars, left off where the count is 0 (they would only clutter)."""
    ax.bar_label(bars, labels=[str(v) if v else "" for v in values], **kwargs)


def _empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def render_funnel(summary: dict) -> bytes:
    """One bar per stage (top = first): kept in green, then rejects stacked by reason."""
    stages = summary["stages"]
    fig = Figure(figsize=(11, 1.0 + 0.6 * max(len(stages), 1)), layout="constrained")
    ax = fig.add_subplot()
    first = next(iter(stages), "the first stage")
    ax.set_title(f"Funnel: {summary['totals']['input']} records into {first} → {summary['totals']['kept']} kept")
    if not stages:
        _empty_note(ax, "no stage counters recorded")
        return _png(fig)
    reasons = list(dict.fromkeys(r for s in stages.values() for r in s["rejected"]))  # funnel order
    color = dict(zip(reasons, _reason_colors(len(reasons))))
    names = list(stages)[::-1]
    widest = max(s["in"] for s in stages.values()) or 1
    for y, stage in enumerate(names):
        s = stages[stage]
        ax.barh(y, s["kept"], color=KEPT_COLOR, label="kept" if y == 0 else None)
        left = s["kept"]
        for reason in reasons:
            n = s["rejected"].get(reason, 0)
            if n:
                ax.barh(y, n, left=left, color=color[reason])
                left += n
        note = f"in {s['in']} · kept {s['kept']} · rejected {sum(s['rejected'].values())}"
        note += f" · out {s['out']}" if s["out"] != s["kept"] else ""
        ax.text(left + widest * 0.01, y, note, va="center", fontsize=9)
    for reason in reasons:
        ax.barh(0, 0, color=color[reason], label=f"rejected: {reason}")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, widest * 1.45)
    ax.set_xlabel("records entering the stage")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    return _png(fig)


def _reason_colors(n: int) -> list:
    """Distinct colours for reject reasons, leaving out the greens that mean `kept`."""
    from matplotlib import colormaps
    name, greens = ("tab10", {2}) if n <= 9 else ("tab20", {4, 5})
    cmap = colormaps[name]
    palette = [cmap(i) for i in range(cmap.N) if i not in greens]
    return [palette[i % len(palette)] for i in range(n)]


def render_critique(summary: dict) -> bytes:
    """Per aspect, counts of scores 1..4 for kept and rejected records side by side."""
    fig = Figure(figsize=(3.2 * len(CRITIQUE_ASPECTS), 3.8), layout="constrained")
    scored = sum(summary["critique"][s][a]["n"] for s in ("kept", "rejected") for a in CRITIQUE_ASPECTS)
    fig.suptitle("Critique scores per aspect (1 = poor … 4 = excellent)"
                 + ("" if scored else ": no scores recorded"))
    axes = fig.subplots(1, len(CRITIQUE_ASPECTS), sharey=True)
    for ax, aspect in zip(axes, CRITIQUE_ASPECTS):
        kept, rejected = (summary["critique"][s][aspect] for s in ("kept", "rejected"))
        xs = [1, 2, 3, 4]
        counts_k, counts_r = list(kept["histogram"].values()), list(rejected["histogram"].values())
        bars_k = ax.bar([x - 0.2 for x in xs], counts_k, 0.4, color=KEPT_COLOR, label="kept")
        bars_r = ax.bar([x + 0.2 for x in xs], counts_r, 0.4, color=REJECTED_COLOR, label="rejected")
        _label_nonzero(ax, bars_k, counts_k, fontsize=8)
        _label_nonzero(ax, bars_r, counts_r, fontsize=8)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        mean = f"kept mean {kept['mean']:.2f}" if kept["mean"] is not None else "no kept scores"
        ax.set_title(f"{aspect}\n{mean}", fontsize=10)
        ax.set_xticks(xs)
        ax.set_xlabel("score")
    axes[0].set_ylim(bottom=0, top=None if scored else 1)
    axes[0].set_ylabel("records")
    axes[0].legend(fontsize=8)
    return _png(fig)


def render_domains(summary: dict) -> bytes:
    domains = summary["domains"]
    fig = Figure(figsize=(8, 1.2 + 0.5 * max(len(domains), 1)), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(f"Records per domain ({summary['totals']['kept']} kept)")
    if not domains:
        _empty_note(ax, "no records")
        return _png(fig)
    names = list(domains)[::-1]
    ys = range(len(names))
    counts_k, counts_r = [domains[d]["kept"] for d in names], [domains[d]["rejected"] for d in names]
    bars_k = ax.barh([y + 0.2 for y in ys], counts_k, 0.4, color=KEPT_COLOR, label="kept")
    bars_r = ax.barh([y - 0.2 for y in ys], counts_r, 0.4, color=REJECTED_COLOR, label="rejected")
    _label_nonzero(ax, bars_k, counts_k, padding=2, fontsize=9)
    _label_nonzero(ax, bars_r, counts_r, padding=2, fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_yticks(list(ys), names)
    ax.set_xlabel("records")
    ax.margins(x=0.12)
    ax.legend(fontsize=9)
    return _png(fig)
