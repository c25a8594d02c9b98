"""The report's plots as inline SVG (matplotlib, text kept as text, no external reference).

Drawn from the report's own (already redacted) numbers and labels, so a plot can hold
nothing the tables do not. Text stays text (``svg.fonttype = none``): it is searchable,
and the page's tests read it. Ids are salted with a fixed string and no date is written,
so the same report draws the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
import io
import math
from typing import Any
import warnings

#: A plot's size in inches at 100 dpi.
SIZE = (6.4, 2.7)
#: The palette (colour-blind safe, Okabe–Ito).
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442",
           "#000000")  # fmt: skip


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.fonttype"] = "none"
    matplotlib.rcParams["svg.hashsalt"] = "labctl-report"
    fig = Figure(figsize=SIZE, dpi=100)
    return fig, fig.add_subplot(1, 1, 1)


def _svg(fig: Any) -> str:
    from matplotlib.backends.backend_svg import FigureCanvasSVG

    FigureCanvasSVG(fig)
    with warnings.catch_warnings():  # a long legend cannot always fit; it is drawn anyway
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # no XML declaration or DOCTYPE inline


def clip(text: str, n: int = 48) -> str:
    """A label cut to ``n`` characters (a legend or title must not crowd out the plot)."""
    return text if len(text) <= n else text[: n - 1] + "…"


def _style(ax: Any, title: str, ylabel: str, xlabel: str = "") -> None:
    ax.set_title(clip(title, 80), fontsize=10, loc="left")
    ax.set_ylabel(ylabel, fontsize=8)
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(True, alpha=0.3)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def over_time(
    title: str, unit: str, times: Sequence[float], series: Mapping[str, Sequence[float | None]]
) -> str:
    """Lines over wall-clock time (UTC); a None is a gap."""
    fig, ax = _figure()
    xs = [datetime.fromtimestamp(t, UTC) for t in times]
    for i, (label, ys) in enumerate(series.items()):
        vals = [math.nan if y is None else float(y) for y in ys]
        ax.plot(xs, vals, label=clip(label), color=COLOURS[i % len(COLOURS)], linewidth=1.2,
                marker="." if len(xs) < 30 else None)  # fmt: skip
    _style(ax, title, unit, "time (UTC)")
    fig.autofmt_xdate()
    _legend(ax)
    return _svg(fig)


def against(
    title: str, xlabel: str, unit: str, xs: Sequence[float], series: Mapping[str, Sequence[Any]]
) -> str:
    """Lines with markers against a swept parameter (an unlimited rate drawn at the right)."""
    fig, ax = _figure()
    finite = [float(x) for x in xs if isinstance(x, int | float) and math.isfinite(x)]
    right = max(finite, default=1.0) * 1.5
    pos = [float(x) if isinstance(x, int | float) and math.isfinite(x) else right for x in xs]
    for i, (label, ys) in enumerate(series.items()):
        vals = [float(y) if isinstance(y, int | float) else math.nan for y in ys]
        ax.plot(pos, vals, label=clip(label), color=COLOURS[i % len(COLOURS)], marker="o",
                linewidth=1.2)  # fmt: skip
    ax.set_xticks(pos, [f"{x:g}" if isinstance(x, int | float) and math.isfinite(x) else "inf"
                        for x in xs])  # fmt: skip
    _style(ax, title, unit, xlabel)
    _legend(ax)
    return _svg(fig)


def stacked_steps(title: str, labels: Sequence[str], steps: Sequence[Mapping[str, float]]) -> str:
    """One bar per deploy (oldest left), its steps' seconds stacked, the steps in the order
    they run."""
    fig, ax = _figure()
    names: list[str] = []
    for s in steps:
        names += [n for n in s if n not in names]
    bottoms = [0.0] * len(steps)
    for i, name in enumerate(names):
        heights = [float(s.get(name, 0.0)) for s in steps]
        ax.bar(range(len(steps)), heights, bottom=bottoms, label=clip(name),
               color=COLOURS[i % len(COLOURS)], width=0.8)  # fmt: skip
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    every = max(1, math.ceil(len(labels) / 20))
    ax.set_xticks(range(0, len(labels), every), [clip(x, 24) for x in labels[::every]],
                  rotation=60, ha="right")  # fmt: skip
    _style(ax, title, "seconds")
    _legend(ax)
    return _svg(fig)
