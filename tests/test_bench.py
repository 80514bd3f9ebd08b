"""The benchmark's own bookkeeping (its timings are quoted from runs, not asserted)."""

from __future__ import annotations

import json

import numpy as np

from vseam_run.bench import BenchModel, recall, run_bench, spearman
from vseam_run.cli.main import cli


def test_spearman_and_recall_by_hand():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == 1.0
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == -1.0
    assert recall([(0, 1, 0.5), (1, 1, 0.2)], [(0, 1, 0.9), (2, 0, 0.1)]) == 0.5


def test_bench_json_shape_and_exactness():
    out = run_bench(BenchModel(layers=2, heads=4, hidden=32, image_tokens=16, text_tokens=6, questions=4))
    names = [s["name"] for s in out["strategies"]]
    assert names == ["reference", "exact", "attribution", "attribution+verify"]
    by = {s["name"]: s for s in out["strategies"]}
    assert by["exact"]["max_abs_diff_vs_reference"] <= 1e-5
    assert by["reference"]["speedup_vs_reference"] == 1.0
    for s in out["strategies"]:
        assert set(s) >= {"seconds", "speedup_vs_reference", "max_abs_diff_vs_reference", "spearman_vs_exact",
                          "recall_top10_positive", "recall_top10_negative"}
    assert out["model"]["layers"] == 2 and out["model"]["heads"] == 4


def test_bench_cli_json(capsys):
    rc = cli(["bench", "search", "--json", "--no-scaling", "--layers", "2", "--heads", "2", "--hidden", "32",
              "--questions", "2", "--image-tokens", "16", "--text-tokens", "5"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in data["strategies"]] == ["reference", "exact", "attribution", "attribution+verify"]


def test_trace_bench_exactness_and_agreement(capsys):
    rc = cli(["bench", "trace", "--json", "--layers", "2", "--heads", "2", "--hidden", "32", "--pairs", "2",
              "--reference-pairs", "1", "--image-tokens", "16", "--text-tokens", "5"])
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    by = {m["name"]: m for m in data["methods"]}
    assert set(by) == {"exact", "attribution", "reference (subset)", "exact (subset)"}
    assert by["reference (subset)"]["max_abs_diff_vs_exact"] <= 1e-5
    assert -1 <= by["attribution"]["spearman_cells_vs_exact"] <= 1 and 0 <= by["attribution"]["recall_top10_cells"] <= 1
    assert data["model"]["cells_per_pair"] == 2 * 2 * 3 * len(data["model"]["groups"])
