"""Figures and tables for a run: head heatmaps, ablation bars, the λ curve, the summary.

Figures are drawn on a bare ``matplotlib.figure.Figure`` with the Agg canvas rather
than through ``pyplot``: that renders headless on any machine (no display, no Tk), does
not switch the process-wide backend of a user who imports vseam in a notebook, and
keeps no global figure registry that could leak memory across a long run.

Every figure function takes a destination path, creates its parent folder, writes a
PNG (or whatever the suffix says) and returns the path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table
from rich.text import Text

from vseam_run.evaluate import CI, ArmComparison

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ablation_bar_chart",
    "comparison_rows",
    "comparison_table",
    "colour_limits",
    "head_heatmap",
    "heatmap_grid",
    "lambda_curve",
    "wilson_interval",
    "summary_table",
]

# 150 dpi: sharp enough for a paper's column width; vector copies on request (below).
DPI = 150
# Extra vector formats written next to every PNG, e.g. VSEAM_FIGURE_FORMATS=svg,pdf.
FIGURE_FORMATS_ENV = "VSEAM_FIGURE_FORMATS"
#: How head heatmaps map scores to colours: linear (default), symlog (a symmetric log scale: the
#: weaker heads stay visible next to one or two strong ones) or row (each layer divided by its
#: largest |score|: where in each layer the effect sits).
HEATMAP_SCALE_ENV = "VSEAM_HEATMAP_SCALE"
HEATMAP_SCALES = ("linear", "symlog", "row")
_VECTOR_FORMATS = ("svg", "pdf")
# Up to this many layers/heads every index gets a tick label; beyond it labels would
# overlap, so a tick is put every few indices instead.
_MAX_LABELLED_TICKS = 32
# Order and colours of the usual ablation groups; any other group follows in the
# order given, in a neutral colour.
_GROUP_ORDER = ("positive", "negative", "random")
_GROUP_COLOURS = {"positive": "#2c7bb6", "negative": "#d7191c", "random": "#999999"}
_OTHER_COLOUR = "#7b3294"


# ---------------------------------------------------------------------------
# plumbing
# ---------------------------------------------------------------------------


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders with Agg
    return fig


def figure_formats() -> list[str]:
    """Vector formats asked for in VSEAM_FIGURE_FORMATS (comma-separated; png is always written)."""
    import os

    from vseam_run.errors import VseamError

    asked = [f.strip().lower().lstrip(".") for f in os.environ.get(FIGURE_FORMATS_ENV, "").split(",") if f.strip()]
    bad = [f for f in asked if f not in _VECTOR_FORMATS + ("png",)]
    if bad:
        raise VseamError(f"{FIGURE_FORMATS_ENV}: unknown figure format(s) {', '.join(bad)}",
                         hint=f"use a comma-separated list of {', '.join(_VECTOR_FORMATS)}")
    return [f for f in asked if f != "png"]


def heatmap_scale() -> str:
    """The colour scale asked for in VSEAM_HEATMAP_SCALE (linear when unset)."""
    import os

    from vseam_run.errors import VseamError

    scale = os.environ.get(HEATMAP_SCALE_ENV, "").strip().lower() or "linear"
    if scale not in HEATMAP_SCALES:
        raise VseamError(f"{HEATMAP_SCALE_ENV}: unknown heatmap scale '{scale}'", hint=f"use one of {', '.join(HEATMAP_SCALES)}")
    return scale


def companions(path: str | Path) -> list[Path]:
    """The vector copies `_save` wrote next to a figure (those that exist)."""
    p = Path(path)
    return [p.with_suffix(f".{f}") for f in _VECTOR_FORMATS if p.with_suffix(f".{f}").is_file() and p.suffix != f".{f}"]


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=DPI)
    for fmt in figure_formats():
        if out.suffix.lower() != f".{fmt}":
            fig.savefig(out.with_suffix(f".{fmt}"), dpi=DPI)
    return out


def _to_matrix(matrix: Any) -> np.ndarray:
    """A float numpy copy of a numpy array, torch tensor or nested list."""
    if hasattr(matrix, "detach"):  # torch.Tensor, without importing torch here
        matrix = matrix.detach().cpu().numpy()
    return np.array(matrix, dtype=np.float64)


def tick_positions(n: int) -> list[int]:
    """Tick indices for an axis of ``n`` layers or heads: all of them up to 32, else every k-th."""
    if n <= _MAX_LABELLED_TICKS:
        return list(range(n))
    step = math.ceil(n / _MAX_LABELLED_TICKS)
    return list(range(0, n, step))


# ---------------------------------------------------------------------------
# head heatmap
# ---------------------------------------------------------------------------


def head_heatmap(
    matrix: Any,
    path: str | Path,
    *,
    title: str,
    cbar_label: str,
    counts: str | None = None,
    cmap: str | None = None,
    center: bool = False,
    top: Iterable[Sequence[int]] | None = None,
    significant: Any = None,
    limits: tuple[float, float] | None = None,
    scale: str | None = None,
) -> Path:
    """Draw a ``[layers, heads]`` score matrix as a heatmap.

    Layer 0 is at the *bottom* (depth grows upward, as in a model diagram) and the y
    axis says so. ``counts`` is a subtitle naming what the scores average over, e.g.
    ``"n = 37 correct questions"``. ``center=True`` is for signed matrices: a diverging
    colour map with limits ±max|score|, so 0 is the neutral middle colour. NaN entries
    (heads not searched) are drawn grey. ``scale`` (default: VSEAM_HEATMAP_SCALE, else linear):
    ``symlog`` draws on a symmetric log scale (linear within 1 % of the largest |score|), so one or
    two strong heads do not wash out the rest; ``row`` divides each layer by its largest |score|.
    """
    m = _check_matrix(matrix)
    scale = scale or heatmap_scale()
    if scale not in HEATMAP_SCALES:
        raise ValueError(f"head_heatmap: scale must be one of {HEATMAP_SCALES}, got {scale!r}")
    norm, note = None, ""
    if scale == "row":
        peak = np.nanmax(np.abs(m), axis=1, keepdims=True) if np.isfinite(m).any() else np.ones((m.shape[0], 1))
        m = np.divide(m, peak, out=np.zeros_like(m), where=np.nan_to_num(peak) > 0) + np.where(np.isnan(m), np.nan, 0)
        note = "colour: each layer ÷ its largest |score|"
        limits = (-1.0, 1.0) if center else (0.0, 1.0)
    layers, heads = m.shape
    vmin, vmax = limits if limits is not None else colour_limits([m], center)
    if scale == "symlog":
        from matplotlib.colors import SymLogNorm

        bound = max(abs(vmin), abs(vmax))
        norm = SymLogNorm(linthresh=bound / 100 if bound > 0 else 1e-6, vmin=vmin, vmax=vmax, base=10)
        note = "colour: symmetric log scale"
    width = float(np.clip(3.0 + 0.3 * heads, 5.0, 16.0))
    fig = _new_figure(width, float(np.clip(2.0 + 0.25 * layers, 3.5, 12.0)))
    ax = fig.add_subplot()
    image = _draw_heads(ax, m, vmin, vmax, cmap or ("RdBu_r" if center else "viridis"), top, significant, norm=norm)
    fig.suptitle(_wrap(title, width, 10), fontsize=10)
    subtitle = "; ".join(x for x in (counts, note, _marks_legend(top, significant)) if x)
    if subtitle:
        ax.set_title(_wrap(subtitle, width, 8), fontsize=8, color="#444444")
    # Wrapped to the figure height: a long label ran off the bottom ("nean ReLU(...)").
    fig.colorbar(image, ax=ax, label=_wrap(cbar_label, float(fig.get_size_inches()[1]), 10))
    return _save(fig, path)


def _suptitle(fig: Figure, text: str, fontsize: float = 12) -> None:
    """A figure title wrapped to the figure's width: a title wider than the figure is clipped at
    both ends ("alidation accuracy vs λ"), since constrained layout does not shrink for it."""
    width = float(fig.get_size_inches()[0])
    fig.suptitle(_wrap(text, width, fontsize), fontsize=fontsize)


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """Break a title into lines that fit a figure `width_in` inches wide: ≈ 0.6 em per character
    (DejaVu Sans averages about 0.55; the margin keeps a wide line from losing its last letter),
    less a small margin on each side."""
    import textwrap

    chars = max(20, int((width_in - 0.3) * 72 / (0.62 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _check_matrix(matrix: Any) -> np.ndarray:
    m = _to_matrix(matrix)
    if m.ndim != 2:
        raise ValueError(f"head_heatmap needs a 2-D [layers, heads] matrix, got shape {m.shape}")
    if m.size == 0:
        raise ValueError(f"head_heatmap needs at least one layer and one head, got shape {m.shape}")
    return m


def colour_limits(matrices: Sequence[np.ndarray], center: bool) -> tuple[float, float]:
    """One colour range for all `matrices` (so figures that are compared share a scale).

    ``center=True`` gives ±max|score| (0 in the neutral middle colour)."""
    finite = np.concatenate([np.asarray(m, dtype=np.float64)[np.isfinite(m)] for m in matrices]) if matrices else np.array([])
    if center:
        bound = float(np.abs(finite).max()) if finite.size else 0.0
        bound = bound if bound > 0 else 1.0  # an all-zero matrix still needs a range
        return -bound, bound
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    return vmin, (vmax if vmax > vmin else vmin + 1.0)


def _marks_legend(top: Any, significant: Any) -> str:
    parts = []
    if top is not None:
        parts.append("□ top-k")
    if significant is not None:
        parts.append("• mean effect > 0 (95% bootstrap)")
    return "  ".join(parts)


def _draw_heads(ax: Any, m: np.ndarray, vmin: float, vmax: float, cmap: str, top: Any, significant: Any, norm: Any = None) -> Any:
    """One heatmap on `ax`: layer 0 at the bottom, top-k heads boxed, significant heads dotted."""
    import matplotlib as mpl
    from matplotlib.patches import Rectangle

    layers, heads = m.shape
    colours = mpl.colormaps[cmap].with_extremes(bad="#d9d9d9")
    limits = {"norm": norm} if norm is not None else {"vmin": vmin, "vmax": vmax}
    image = ax.imshow(np.ma.masked_invalid(m), cmap=colours, origin="lower", aspect="auto", interpolation="nearest", **limits)
    for l, h in (tuple(int(v) for v in t[:2]) for t in (top or [])):
        ax.add_patch(Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=1.6))
        ax.add_patch(Rectangle((h - 0.42, l - 0.42), 0.84, 0.84, fill=False, edgecolor="white", linewidth=0.8))
    if significant is not None:
        ls, hs = np.nonzero(np.asarray(significant, dtype=bool))
        ax.scatter(hs, ls, s=9, c="white", edgecolors="black", linewidths=0.5, zorder=3)
    small = {"fontsize": 7} if max(layers, heads) > 16 else {}
    ax.set_xticks(tick_positions(heads))
    ax.set_xticklabels([str(i) for i in tick_positions(heads)], **small)
    ax.set_yticks(tick_positions(layers))
    ax.set_yticklabels([str(i) for i in tick_positions(layers)], **small)
    ax.set_xlabel("head")
    ax.set_ylabel("layer (0 = bottom)")
    return image


def heatmap_grid(
    rows: Sequence[tuple[str, Sequence[Any], bool]],
    column_titles: Sequence[str],
    path: str | Path,
    *,
    title: str,
    tops: Sequence[Sequence[Any]] | None = None,
) -> Path:
    """Several runs' head matrices side by side: one row per score kind, one column per run,
    one colour scale per row (shared by every run, so equal colours mean equal scores).

    `rows` holds (label, matrices — one per column, center). `tops[row][col]` optionally
    lists the (layer, head) pairs to box."""
    if not rows or not column_titles:
        raise ValueError("heatmap_grid: nothing to draw")
    mats = [[_check_matrix(m) for m in ms] for _, ms, _ in rows]
    layers, heads = mats[0][0].shape
    ncol = len(column_titles)
    fig = _new_figure(float(np.clip(1.0 + ncol * (1.2 + 0.22 * heads), 5.0, 30.0)),
                      float(np.clip(len(rows) * (1.2 + 0.2 * layers), 3.0, 24.0)))
    axes = fig.subplots(len(rows), ncol, squeeze=False)
    for r, ((label, _, center), ms) in enumerate(zip(rows, mats)):
        vmin, vmax = colour_limits(ms, center)
        image = None
        for c, m in enumerate(ms):
            top = tops[r][c] if tops is not None else None
            image = _draw_heads(axes[r][c], m, vmin, vmax, "RdBu_r" if center else "viridis", top, None)
            if r == 0:
                axes[r][c].set_title(column_titles[c], fontsize=8)
            if c:
                axes[r][c].set_ylabel("")
        fig.colorbar(image, ax=list(axes[r]), label=label, shrink=0.9)
    _suptitle(fig, title + ("  (□ top-k)" if tops is not None else ""))
    return _save(fig, path)


# ---------------------------------------------------------------------------
# ablation bars
# ---------------------------------------------------------------------------


def _bar(name: str, value: Any, metric: str) -> tuple[float, float | None, int]:
    """(height, error bar or None, number of draws) for one group of ``results``.

    A number is one measurement; a sequence is several draws (random heads), drawn as
    mean ± 1 std; a mapping holds ``metric`` (either form) and optionally
    ``<metric>_std`` for a precomputed spread.
    """
    if isinstance(value, Mapping):
        if metric not in value:
            raise ValueError(f"ablation result {name!r} has no {metric!r}; it has {sorted(value)}")
        height, err, n = _bar(name, value[metric], metric)
        std = value.get(f"{metric}_std")
        return height, (float(std) if std is not None else err), n
    if isinstance(value, (int, float, np.number)):
        return float(value), None, 1
    draws = np.asarray(list(value), dtype=np.float64)
    if draws.size == 0:
        raise ValueError(f"ablation result {name!r} has no values")
    spread = float(draws.std(ddof=1)) if draws.size > 1 else 0.0
    return float(draws.mean()), spread, int(draws.size)


def ablation_bar_chart(
    results: Mapping[str, Any],
    path: str | Path,
    *,
    metric: str = "accuracy_drop",
    title: str | None = None,
) -> Path:
    """Bars of ``metric`` for ablating the positive, negative and random heads.

    ``results`` maps a group name to a number, a list of numbers (one per random draw;
    drawn as mean with a ±1 std error bar) or a dict holding ``metric`` (and optionally
    ``<metric>_std``). Groups ``positive``, ``negative``, ``random`` come first.
    """
    if not results:
        raise ValueError("ablation_bar_chart: no results to draw")
    names = [g for g in _GROUP_ORDER if g in results] + [g for g in results if g not in _GROUP_ORDER]
    bars = [_bar(g, results[g], metric) for g in names]
    label = metric.replace("_", " ")

    fig = _new_figure(max(4.5, 1.4 * len(names) + 2.0), 4.0)
    ax = fig.add_subplot()
    heights = [b[0] for b in bars]
    ax.bar(
        range(len(names)), heights,
        color=[_GROUP_COLOURS.get(g, _OTHER_COLOUR) for g in names], edgecolor="black", linewidth=0.6,
    )
    # Error bars only where there is a spread; a zero-length cap on a single
    # measurement would suggest a certainty that was never measured.
    with_err = [i for i, b in enumerate(bars) if b[1] is not None]
    if with_err:
        ax.errorbar(with_err, [heights[i] for i in with_err], yerr=[bars[i][1] for i in with_err],
                    fmt="none", ecolor="black", capsize=6, linewidth=1.2)
    for i, (height, err, _) in enumerate(bars):
        # Label beyond the end of the error bar so the two never overlap.
        reach = height + (err or 0.0) if height >= 0 else height - (err or 0.0)
        ax.annotate(f"{height:.3f}", (i, reach), xytext=(0, 3 if height >= 0 else -3), textcoords="offset points",
                    ha="center", va="bottom" if height >= 0 else "top", fontsize=8)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{g}\n(mean ± std, {n} draws)" if n > 1 else g for g, (_, _, n) in zip(names, bars)])
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("ablated heads")
    ax.set_ylabel(label)
    ax.margins(y=0.15)  # room for the value labels above the bars
    _suptitle(fig, title or f"Head ablation: {label}")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# λ curve
# ---------------------------------------------------------------------------


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (sensible at 0/n and n/n, unlike p ± z·se)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0/n and n/n a bound is 0 or 1 exactly; rounding would put it a hair inside.
    return (0.0 if correct <= 0 else max(0.0, centre - half), 1.0 if correct >= n else min(1.0, centre + half))


def lambda_curve(
    table: Iterable[tuple[float, float]] | Any,
    path: str | Path,
    *,
    best: float | None = None,
    n: int | None = None,
    title: str = "Validation accuracy vs λ",
) -> Path:
    """Validation accuracy against λ, with the chosen λ starred and λ = 0 as a reference line.

    ``table`` is ``(λ, accuracy)`` pairs or a :class:`~vseam_run.modulate.LambdaChoice`
    (whose ``best`` is then used unless ``best`` is given). The λ axis is categorical
    (the grid's values equally spaced), so a grid like 0, 0.5, …, 8 is not squeezed to the
    left. With ``n`` (validation questions) every point gets a 95% Wilson interval, and the
    y axis spans at least a few questions' worth, so one question is not drawn as a cliff.
    """
    if hasattr(table, "table") and hasattr(table, "best"):
        best = table.best if best is None else best
        table = table.table
    points = sorted((float(lam), float(acc)) for lam, acc in table)
    if not points:
        raise ValueError("lambda_curve: the table is empty")
    lams = [p[0] for p in points]
    accs = [p[1] for p in points]
    xs = list(range(len(points)))

    fig = _new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    label = "validation accuracy" + (f" (n = {n}, 95% Wilson interval)" if n else "")
    if n:
        bounds = [wilson_interval(round(a * n), n) for a in accs]
        # Clipped at 0: an accuracy that is not k/n exactly (rounded upstream) may sit a hair outside.
        yerr = [[max(0.0, a - lo) for a, (lo, _) in zip(accs, bounds)], [max(0.0, hi - a) for a, (_, hi) in zip(accs, bounds)]]
        ax.errorbar(xs, accs, yerr=yerr, fmt="o-", color="#2c7bb6", capsize=4, label=label)
        low = min(lo for lo, _ in bounds)
        high = max(hi for _, hi in bounds)
        ax.set_ylim(max(0.0, low - 0.05), min(1.0, high + 0.05) + 0.01)
    else:
        ax.plot(xs, accs, "o-", color="#2c7bb6", label=label)
    zero = [acc for lam, acc in points if lam == 0.0]
    if zero:
        ax.axhline(zero[0], color="#999999", linestyle="--", linewidth=1, label="λ = 0 (no modulation)")
    if best is not None:
        chosen = [(x, acc) for x, (lam, acc) in zip(xs, points) if lam == best]
        if chosen:
            ax.plot([chosen[0][0]], [chosen[0][1]], marker="*", markersize=16, color="#d7191c", linestyle="none",
                    label=f"chosen λ = {best:g}")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{lam:g}" for lam in lams])
    ax.set_xlabel("λ (modulation strength; grid values, equally spaced)")
    ax.set_ylabel("validation accuracy")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    _suptitle(fig, title)
    return _save(fig, path)


# ---------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------


def _cell(value: Any) -> Text:
    """Format one table cell; Text (not a str) so names like '[left]' are not read as markup."""
    if value is None:
        return Text("–")
    if isinstance(value, CI):
        return Text(f"[{value.low:+.3f}, {value.high:+.3f}]")
    if isinstance(value, (bool, np.bool_)):
        return Text("yes" if value else "no")
    if isinstance(value, (int, np.integer)):
        return Text(str(int(value)))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return Text("nan")
        # p-values and tiny effects would print as 0.000; show their magnitude instead.
        return Text(f"{v:.1e}" if v != 0 and abs(v) < 1e-3 else f"{v:.3f}")
    return Text(str(value))


def _is_numeric(value: Any) -> bool:
    return isinstance(value, (int, float, np.number, CI)) and not isinstance(value, bool)


def summary_table(
    rows: Sequence[Mapping[str, Any]],
    title: str,
    *,
    columns: Sequence[str] | None = None,
    emphasize: Iterable[int] = (),
) -> Table:
    """A rich table of ``rows`` (dicts of column → value), numbers right-aligned.

    Columns are ``columns`` or every key in first-seen order; a missing value shows as
    '–'. Floats print with 3 decimals (tiny ones in scientific notation), CIs as
    ``[low, high]``. Rows whose index is in ``emphasize`` are bold (e.g. the overall row).
    """
    cols = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=title, title_justify="left")
    for col in cols:
        numeric = any(_is_numeric(row.get(col)) for row in rows)
        table.add_column(col, justify="right" if numeric else "left")
    bold = set(emphasize)
    for i, row in enumerate(rows):
        table.add_row(*(_cell(row.get(col)) for col in cols), style="bold" if i in bold else None)
    return table


def comparison_rows(comparison: ArmComparison, *, context: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows of baseline vs modulated: one per category, then an ``all`` row.

    ``context`` columns (e.g. ``{"dataset": "gqa"}``) are put first, so rows of several
    comparisons can share one table.
    """
    ci_col = f"{100 * (1 - comparison.alpha):g}% CI"
    lead = dict(context or {})

    def row(name: str, n: int, base: float, mod: float, ci: CI, p: float) -> dict[str, Any]:
        return {**lead, "category": name, "n": n, "baseline": base, "modulated": mod, "Δ": mod - base,
                ci_col: ci, "McNemar p": p}

    rows = [
        row(name, c.n, c.accuracy_baseline, c.accuracy_modulated, c.diff_ci, c.mcnemar_p)
        for name, c in comparison.categories.items()
    ]
    rows.append(row("all", comparison.n, comparison.accuracy_baseline, comparison.accuracy_modulated,
                    comparison.diff_ci, comparison.mcnemar_p))
    return rows


def comparison_table(comparison: ArmComparison, title: str = "Accuracy: baseline vs modulated") -> Table:
    """The end-of-run table: accuracy per category and overall, with the paired CI and McNemar p."""
    rows = comparison_rows(comparison)
    return summary_table(rows, title, emphasize=[len(rows) - 1])


def edit_contact_sheet(rows: Sequence[tuple[Any, Any, Any, str]], path: str | Path, *, title: str, scale: int = 4) -> Path:
    """A grid of counterfactual edits: original | edited | mask, one row each, with the edit text.

    `rows` holds (original image path, edited image path, mask path, caption).
    """
    from PIL import Image as PILImage

    fig = _new_figure(3 * 1.6, 1.6 * max(len(rows), 1) + 0.4)
    axes = fig.subplots(max(len(rows), 1), 3, squeeze=False)
    for r, (orig, edited, mask, caption) in enumerate(rows):
        for c, (img_path, label) in enumerate(((orig, "original"), (edited, "edited"), (mask, "mask"))):
            ax = axes[r][c]
            with PILImage.open(img_path) as im:
                ax.imshow(np.asarray(im.convert("RGB")), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=9)
        axes[r][0].set_ylabel(caption, fontsize=7, rotation=0, ha="right", va="center")
    _suptitle(fig, title, fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------------
# causal tracing
# ---------------------------------------------------------------------------


def trace_heatmap(
    panels: Mapping[str, Any],
    groups: Sequence[str],
    path: str | Path,
    *,
    title: str,
    cbar_label: str = "normalised recovery",
    counts: str | None = None,
) -> Path:
    """Layer × position-group heatmaps, one panel per component, sharing one colour scale.

    ``panels`` maps a component name to a ``[layers, groups]`` matrix (NaN = no pair had that
    cell, drawn grey). The scale is diverging and centred at 0, with limits ±max|value| over
    all panels, so panels of one figure compare directly.
    """
    mats = {name: _to_matrix(m) for name, m in panels.items()}
    if not mats:
        raise ValueError("trace_heatmap: no panels to draw")
    for name, m in mats.items():
        if m.ndim != 2 or m.shape[1] != len(groups):
            raise ValueError(f"trace_heatmap: panel {name!r} has shape {m.shape}, expected [layers, {len(groups)}]")
    import matplotlib as mpl

    finite = np.concatenate([m[np.isfinite(m)] for m in mats.values()])
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    bound = bound if bound > 0 else 1.0
    colours = mpl.colormaps["RdBu_r"].with_extremes(bad="#d9d9d9")
    layers = next(iter(mats.values())).shape[0]
    fig = _new_figure(2.0 + (1.2 + 0.45 * len(groups)) * len(mats), float(np.clip(2.5 + 0.25 * layers, 3.5, 12.0)))
    axes = fig.subplots(1, len(mats), squeeze=False)[0]
    image = None
    for ax, (name, m) in zip(axes, mats.items()):
        image = ax.imshow(np.ma.masked_invalid(m), cmap=colours, vmin=-bound, vmax=bound, origin="lower", aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(list(groups), rotation=60, ha="right", fontsize=8)
        ax.set_yticks(tick_positions(layers))
        ax.set_yticklabels([str(i) for i in tick_positions(layers)])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("position group")
    axes[0].set_ylabel("layer (0 = bottom)")
    _suptitle(fig, title + (f"\n{counts}" if counts else ""), fontsize=10)
    fig.colorbar(image, ax=list(axes), label=cbar_label)
    return _save(fig, path)


def logit_lens_plot(curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *, title: str) -> Path:
    """Logit lens per layer: the answer's mean probability (left) and median rank (right, log scale).

    ``curves`` maps a label (e.g. "clean image, clean answer") to (mean prob per layer,
    median rank per layer).
    """
    if not curves:
        raise ValueError("logit_lens_plot: no curves to draw")
    fig = _new_figure(10.0, 4.0)
    ax_p, ax_r = fig.subplots(1, 2)
    styles = ["-", "--", "-.", ":"]
    for i, (label, (prob, rank)) in enumerate(curves.items()):
        x = np.arange(len(prob))
        ax_p.plot(x, prob, styles[i % 4], marker="o", markersize=3, label=label)
        ax_r.plot(x, rank, styles[i % 4], marker="o", markersize=3, label=label)
    ax_p.set_xlabel("layer")
    ax_p.set_ylabel("mean probability at the last position")
    ax_r.set_xlabel("layer")
    ax_r.set_ylabel("median rank (1 = top)")
    ax_r.set_yscale("log")
    for ax in (ax_p, ax_r):
        ax.grid(alpha=0.3)
    ax_p.legend(fontsize=7, loc="best")
    _suptitle(fig, title)
    return _save(fig, path)


# ---------------------------------------------------------------------------
# head sharing across runs
# ---------------------------------------------------------------------------


def overlap_figure(
    matrices: Mapping[str, Any],
    labels: Sequence[str],
    groups: Sequence[str],
    panels: Mapping[str, Mapping[str, Any]],
    path: str | Path,
    *,
    metric: str,
    title: str,
) -> Path:
    """Pairwise overlap matrices of the top positive and negative head sets (one colour scale for
    both), and a panel of within- vs across-group mean overlap with intervals against the
    random-set expectation. `panels[kind][within|across]` has observed, low, high, random."""
    kinds = list(matrices)
    r = len(labels)
    mats = [np.asarray(matrices[k], dtype=np.float64) for k in kinds]
    vmax = 1.0 if metric == "jaccard" else max(1.0, float(np.nanmax([np.nanmax(m) for m in mats])))
    side = float(np.clip(1.5 + 0.32 * r, 3.5, 9.0))
    fig = _new_figure(side * len(kinds) + 4.0, side + 0.8)
    axes = fig.subplots(1, len(kinds) + 1, gridspec_kw={"width_ratios": [side] * len(kinds) + [3.5]})
    image = None
    boundaries = [i + 0.5 for i in range(r - 1) if groups[i] != groups[i + 1]]
    for ax, kind, m in zip(axes, kinds, mats):
        image = ax.imshow(m, cmap="magma", vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_xticks(range(r))
        ax.set_yticks(range(r))
        ax.set_xticklabels(labels, rotation=90, fontsize=6)
        ax.set_yticklabels(labels, fontsize=6)
        for b in boundaries:
            ax.axhline(b, color="white", linewidth=1.2)
            ax.axvline(b, color="white", linewidth=1.2)
        if r <= 12:
            for i in range(r):
                for j in range(r):
                    if i != j and np.isfinite(m[i, j]):
                        ax.text(j, i, f"{m[i, j]:.2f}" if metric == "jaccard" else f"{m[i, j]:g}", ha="center",
                                va="center", fontsize=5, color="white" if m[i, j] < 0.6 * vmax else "black")
        ax.set_title(f"top {kind} heads ({metric})", fontsize=9)
    fig.colorbar(image, ax=list(axes[: len(kinds)]), label=f"{metric} overlap", shrink=0.8)
    ax = axes[-1]
    xs, ticks = [], []
    for ki, kind in enumerate(kinds):
        for gi, name in enumerate(("within", "across")):
            g = panels[kind][name]
            x = ki * 2.6 + gi
            xs.append(x)
            ticks.append(f"{kind}\n{name}")
            obs = g.observed if not isinstance(g, Mapping) else g["observed"]
            lo = g.low if not isinstance(g, Mapping) else g["low"]
            hi = g.high if not isinstance(g, Mapping) else g["high"]
            rnd = g.random if not isinstance(g, Mapping) else g["random"]
            colour = _GROUP_COLOURS["positive" if kind == "positive" else "negative"]
            if obs is not None:
                if lo is not None and hi is not None:  # drawn as given: an interval need not be centred on the point
                    ax.plot([x, x], [lo, hi], color=colour, linewidth=1.5)
                    ax.plot([x - 0.12, x + 0.12, None, x - 0.12, x + 0.12], [lo, lo, None, hi, hi], color=colour, linewidth=1.5)
                ax.plot([x], [obs], "o", color=colour)
            if rnd is not None:
                ax.plot([x - 0.3, x + 0.3], [rnd, rnd], color="#666666", linestyle="--", linewidth=1)
    ax.set_xticks(xs)
    ax.set_xticklabels(ticks, fontsize=7)
    ax.set_ylabel(f"mean pairwise {metric}")
    ax.set_title("within vs across (-- random sets)", fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3, axis="y")
    _suptitle(fig, title, fontsize=10)
    return _save(fig, path)
