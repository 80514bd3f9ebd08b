"""Figures and tables: files are real PNGs of sensible size; tables show the numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from vseam_run.evaluate import compare_arms
from vseam_run.modulate import LambdaChoice, LambdaPoint
from vseam_run.report import (
    DPI,
    ablation_bar_chart,
    comparison_rows,
    comparison_table,
    head_heatmap,
    lambda_curve,
    summary_table,
    tick_positions,
)


def _png_size(path: Path) -> tuple[int, int]:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        # A real plot, not a blank canvas: many distinct colours.
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20
        return im.size


def _render(table) -> str:
    console = Console(record=True, width=140)
    console.print(table)
    return console.export_text()


# --- heatmap --------------------------------------------------------------------


def test_heatmap_writes_png_of_expected_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    out = head_heatmap(
        rng.random((4, 8)), tmp_path / "figs" / "positive.png",
        title="Positive heads", cbar_label="Δ p(gold)", counts="n = 37 correct questions",
    )
    assert out == tmp_path / "figs" / "positive.png"
    width, height = _png_size(out)
    assert (width, height) == (round(5.4 * DPI), round(3.5 * DPI))  # 5.4 x 3.5 inches


def test_heatmap_signed_large_nan_and_torch(tmp_path: Path) -> None:
    m = torch.randn(40, 32)
    m[0, 0] = float("nan")
    out = head_heatmap(m, tmp_path / "signed.png", title="Signed", cbar_label="base − ablated", center=True)
    width, height = _png_size(out)
    assert 8 * DPI <= width <= 16 * DPI and 8 * DPI <= height <= 12 * DPI
    zeros = head_heatmap(np.zeros((2, 2)), tmp_path / "z.png", title="z", cbar_label="s", center=True)
    assert _png_size(zeros)[0] >= 5 * DPI


def test_heatmap_rejects_bad_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"2-D \[layers, heads\] matrix, got shape \(5,\)"):
        head_heatmap(np.ones(5), tmp_path / "x.png", title="t", cbar_label="c")
    with pytest.raises(ValueError, match="2-D"):
        head_heatmap(np.ones((2, 3, 4)), tmp_path / "x.png", title="t", cbar_label="c")
    with pytest.raises(ValueError, match="at least one layer"):
        head_heatmap(np.ones((0, 3)), tmp_path / "x.png", title="t", cbar_label="c")
    assert not (tmp_path / "x.png").exists()


def test_tick_positions_every_index_up_to_32() -> None:
    assert tick_positions(32) == list(range(32))
    assert tick_positions(1) == [0]
    assert tick_positions(40) == list(range(0, 40, 2))
    assert tick_positions(100) == list(range(0, 100, 4))


# --- ablation bars and λ curve --------------------------------------------------------


def test_ablation_bar_chart_forms(tmp_path: Path) -> None:
    results = {
        "random": [0.02, 0.05, -0.01, 0.03],
        "negative": {"accuracy_drop": -0.08},
        "positive": 0.31,
    }
    out = ablation_bar_chart(results, tmp_path / "ablation.png")
    width, height = _png_size(out)
    assert 4.5 * DPI <= width <= 8 * DPI and height == 4 * DPI
    custom = ablation_bar_chart(
        {"positive": {"gold_prob_drop": 0.2}, "random": {"gold_prob_drop": 0.01, "gold_prob_drop_std": 0.004}},
        tmp_path / "gp.png", metric="gold_prob_drop", title="Gold prob drop",
    )
    _png_size(custom)


def test_ablation_bar_chart_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no results"):
        ablation_bar_chart({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="'positive' has no 'accuracy_drop'"):
        ablation_bar_chart({"positive": {"drop": 0.1}}, tmp_path / "a.png")


def test_lambda_curve_from_table_and_choice(tmp_path: Path) -> None:
    table = [(1.0, 0.61), (0.0, 0.55), (0.5, 0.58), (2.0, 0.57)]
    out = lambda_curve(table, tmp_path / "lam.png", best=1.0)
    assert _png_size(out) == (6 * DPI, 4 * DPI)
    choice = LambdaChoice(1.0, [LambdaPoint(lam, acc) for lam, acc in table])
    _png_size(lambda_curve(choice, tmp_path / "lam2.png"))
    with pytest.raises(ValueError, match="empty"):
        lambda_curve([], tmp_path / "lam3.png")


# --- tables -------------------------------------------------------------------------


def test_summary_table_formats_cells() -> None:
    rows = [
        {"category": "[left]", "n": 12, "accuracy": 0.5, "p": 0.00012},
        {"category": "all", "n": 30, "accuracy": 2 / 3, "p": None},
    ]
    table = summary_table(rows, "Results", emphasize=[1])
    text = _render(table)
    assert "Results" in text
    assert "[left]" in text  # not swallowed as rich markup
    assert "0.667" in text and "1.2e-04" in text and "–" in text
    assert [c.header for c in table.columns] == ["category", "n", "accuracy", "p"]
    assert [c.justify for c in table.columns] == ["left", "right", "right", "right"]


def test_comparison_table_shows_categories_ci_and_p() -> None:
    base = [{"qid": f"q{i}", "correct": i % 2 == 0, "gold_prob": 0.4, "category": "color" if i < 6 else "spatial"}
            for i in range(12)]
    mod = [{**r, "correct": True, "gold_prob": 0.7} for r in base]
    cmp = compare_arms(base, mod, n_boot=200, seed=0)
    rows = comparison_rows(cmp, context={"dataset": "gqa"})
    assert [r["category"] for r in rows] == ["color", "spatial", "all"]
    assert list(rows[0])[:2] == ["dataset", "category"]
    assert rows[-1]["Δ"] == pytest.approx(0.5)
    assert rows[-1]["McNemar p"] == pytest.approx(2 / 64)
    text = _render(comparison_table(cmp))
    assert "95% CI" in text and "McNemar p" in text
    assert "0.500" in text and "1.000" in text and "0.031" in text
    assert "spatial" in text


def test_lambda_curve_at_perfect_and_zero_accuracy(tmp_path: Path) -> None:
    """A validation split answered perfectly (or not at all) at some λ draws its interval to 1 (0)
    exactly: rounding once put the Wilson bound a hair inside and matplotlib refused the negative
    error bar, failing a whole run (toy_llava_relation, n = 50)."""
    from vseam_run.report import wilson_interval

    for n in (7, 50, 52, 101):
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
    _png_size(lambda_curve([(0.0, 1.0), (1.0, 0.0), (2.0, 1.0)], tmp_path / "perfect.png", n=50))
