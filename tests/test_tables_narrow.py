"""Tables in a log file or a narrow terminal (issue 24, item 9): numbers are not cut ("[+0.1…
+0.46…"), names do not wrap mid-word ("quicksta/rt"); and what sweep / compare / export say."""

from __future__ import annotations

import io
import json

import pandas as pd
from rich.console import Console

from vseam_run import report
from vseam_run.cli import common
from vseam_run.cli.main import cli
from vseam_run.evaluate import CI
from vseam_run.store import RunStore


def _render(table, width: int) -> str:
    buf = io.StringIO()
    con = common._WholeConsole(file=buf, width=width, soft_wrap=True)
    con.print(table)
    return buf.getvalue()


def test_numbers_are_not_cut_in_a_narrow_log():
    rows = [{"category": "material", "n": 21, "baseline": 0.7619, "modulated": 0.8095, "Δ": 0.0476,
             "95% CI": CI(0.1, 0.4619, 0.3), "McNemar p": 0.0312}]
    table = report.summary_table(rows, "held-out test: baseline vs modulated")
    plain = Console(file=io.StringIO(), width=40)
    plain.print(table)  # the premise: rich alone cuts the interval at this width
    assert "[+0.100, +0.462]" not in plain.file.getvalue().replace("\n", "")
    out = _render(report.summary_table(rows, "held-out test"), 40)
    assert "[+0.100, +0.462]" in out and "…" not in out


def test_headers_of_number_columns_are_not_cut():
    """`vseam bench search` in a log read "recall@1… | recall@1…": a number column's header was cut
    with an ellipsis, so positive and negative could not be told apart. It wraps between words instead."""
    from rich.table import Table

    t = Table()
    t.add_column("strategy")
    for header in ("max |diff| vs ref", "recall@10 +", "recall@10 −", "score / exact +"):
        t.add_column(header, justify="right")
    t.add_row("attribution+verify", "7.1e-04", "1.00", "0.90", "0.96")
    out = _render(t, 60)
    assert "…" not in out, out
    for word in ("recall@10", "+", "−", "|diff|", "exact", "7.1e-04", "0.96"):
        assert word in out, out
    assert out.count("recall@10") == 2, out


def test_names_do_not_wrap_mid_word(tmp_path, capsys, monkeypatch):
    db = tmp_path / "runs.db"
    with RunStore(str(db)) as store:
        rid = store.create_run(name="quickstart", spec_yaml="name: quickstart\n", spec_hash="h", model_name="toy-instructblip", seed=0)
        store.set_status(rid, "succeeded")
    monkeypatch.setenv("COLUMNS", "50")
    capsys.readouterr()
    assert cli(["runs", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "quickstart" in out and "toy-instructblip" in out, out


def test_export_writes_json_not_python_reprs(tmp_path):
    from vseam_run.api import _write

    df = pd.DataFrame([{"qid": "1", "boxes": [{"x": 1.0, "y": 2.0}], "text": "a → b", "n": 3}])
    path = _write(df, tmp_path / "edits.csv", "csv")
    back = pd.read_csv(path)
    assert json.loads(back.loc[0, "boxes"]) == [{"x": 1.0, "y": 2.0}]
    assert "'x'" not in path.read_text()


def test_compare_says_why_no_paired_test_and_lists_seed_once(tmp_path, capsys):
    db = str(tmp_path / "runs.db")
    ids = []
    with RunStore(db) as store:
        for seed, images in ((0, 24), (1, 30)):
            spec = f"name: c\nseed: {seed}\ndata: {{source: toyworld, toyworld: {{images: {images}}}}}\n"
            rid = store.create_run(name="c", spec_yaml=spec, spec_hash=f"h{seed}", model_name="toy-llava", seed=seed)
            store.log_metrics(rid, {"baseline.accuracy": 0.5 + seed / 10})
            store.set_status(rid, "succeeded")
            ids.append(rid)
    capsys.readouterr()
    assert cli(["compare", *ids, "--db", db]) == 0
    out = capsys.readouterr().out
    assert "no paired test A vs B: the runs share no questions" in out and "data.toyworld" in out, out
    assert "environment differences" not in out  # seed is a spec field: listed there, once
    assert sum(1 for line in out.splitlines() if line.strip("│ ").startswith("seed ")) == 1, out


def test_names_wrapped_mid_word_by_plain_rich(tmp_path, capsys, monkeypatch):
    """The premise of the test above: without the whole-keeping console, rich at 50 columns drops
    or cuts the name ("quicksta/rt"), so that test would catch a regression."""
    from rich.console import Console as Plain

    db = tmp_path / "runs.db"
    with RunStore(str(db)) as store:
        rid = store.create_run(name="quickstart", spec_yaml="name: quickstart\n", spec_hash="h", model_name="toy-instructblip", seed=0)
        store.set_status(rid, "succeeded")
    monkeypatch.setenv("COLUMNS", "50")
    monkeypatch.setattr(common._WholeConsole, "print", Plain.print)
    capsys.readouterr()
    assert cli(["runs", "--db", str(db)]) == 0
    assert "quickstart" not in capsys.readouterr().out


def test_sweep_ends_with_the_swept_metrics(tmp_path, capsys, monkeypatch):
    """The closing table of `vseam sweep` shows each point's headline numbers, not just its status.
    The pipeline is replaced by one that records a known accuracy per seed (the wiring is tested,
    not the model)."""
    from pathlib import Path

    from vseam_run import pipeline

    monkeypatch.setattr(pipeline, "preflight", lambda spec: None)

    def fake_run(spec, store, *, log, on_created, resume=None, **_options):  # e.g. reuse_search
        rid = store.create_run(name=spec.name, spec_yaml=f"name: {spec.name}\nseed: {spec.seed}\n",
                               spec_hash=f"h{spec.seed}", model_name="toy", seed=spec.seed)
        on_created(rid)
        store.log_metrics(rid, {"baseline.accuracy": 0.125 * (spec.seed + 1), "eval.test.accuracy.modulated": 0.75,
                                "not.a.headline": 9.0})
        store.set_status(rid, "succeeded")
        return rid

    monkeypatch.setattr(pipeline, "run", fake_run)
    spec = Path(__file__).resolve().parents[1] / "specs" / "quickstart.yaml"
    db = str(tmp_path / "runs.db")
    capsys.readouterr()
    assert cli(["sweep", str(spec), "--set", "seed=0,2", "--db", db]) == 0
    out = capsys.readouterr().out
    table = out[out.index("┏"):]  # the closing table
    assert "baseline.accuracy" in table and "eval.test.accuracy.modulated" in table, out
    assert "not.a.headline" not in table
    rows = [line for line in table.splitlines() if "succeeded" in line]
    assert len(rows) == 2 and "0.125" in rows[0] and "0.375" in rows[1] and all("0.750" in r for r in rows), out


def test_compare_says_when_a_run_has_no_results_to_pair(tmp_path, capsys):
    """Same questions, but one run never reached the held-out evaluation: the reason names it
    (in the table and in --md), not the data."""
    db = str(tmp_path / "runs.db")
    spec = "name: c\nseed: 0\ndata: {source: gqa, path: q.json}\n"
    with RunStore(db) as store:
        ids = [store.create_run(name="c", spec_yaml=spec, spec_hash="h", model_name="toy-llava", seed=0) for _ in range(2)]
        for rid in ids:
            store.log_metrics(rid, {"baseline.accuracy": 0.5})
            store.set_status(rid, "succeeded")
    capsys.readouterr()
    assert cli(["compare", *ids, "--db", db]) == 0
    out = capsys.readouterr().out
    assert f"no paired test A vs B: run {ids[0]} has no per-question results for eval.test.modulated" in out, out
    assert cli(["compare", *ids, "--db", db, "--md"]) == 0
    md = capsys.readouterr().out
    assert "## No paired test" in md and f"- A vs B: run {ids[0]} has no per-question results" in md, md
