"""`vseam report`: a self-contained page, opened in headless Chromium to check that every image
loads and every section is there; and the figure/console helpers it relies on."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vseam_run import fmt, report
from vseam_run.cli.main import cli
from vseam_run.html_report import SECTIONS, build_report
from vseam_run.progress import LineProgress, progress, silence_libraries
from vseam_run.search.scoring import score
from vseam_run.search.uncertainty import head_uncertainty
from vseam_run.store import RunStore


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _run_with_figures(tmp_path: Path) -> tuple[str, str]:
    db = str(tmp_path / "runs.db")
    rng = np.random.default_rng(0)
    effects = rng.normal(0, 0.05, (30, 3, 4))
    correct = np.arange(30) % 3 != 0
    m = score(effects, correct, "subset", 3)
    u = head_uncertainty(effects, correct, "subset", 3, n_boot=50)
    art = tmp_path / "art"
    with RunStore(db) as store:
        rid = store.create_run(name="rep <b>", spec_yaml="name: rep\nseed: 3\nsearch: {top_k: 3}\n", spec_hash="h",
                               model_name="toy-llava", seed=3, versions={"torch": "2.13.0"})
        store.put_document(rid, "heads", {**m.to_json(), "strategy": "exact", "scoring": "subset"})
        store.put_document(rid, "heads.uncertainty", u.to_json())
        store.put_document(rid, "eval.test.summary", [{"dataset": "test", "category": "all", "n": 20, "baseline": 0.5,
                                                       "modulated": 0.55, "95% CI": [0.0, 0.1, 0.05], "McNemar p": 0.5}])
        store.put_document(rid, "lambda_selection", [{"lam": 0.0, "val_accuracy": 0.5}, {"lam": 1.0, "val_accuracy": 0.6}])
        store.log_metrics(rid, {"baseline.accuracy": 0.5, "noise": -2.22e-17})
        store.add_artifact(rid, "heatmap.positive", report.head_heatmap(m.positive, art / "pos.png", title="p", cbar_label="c",
                                                                         top=m.top_positive, significant=u.excludes_zero("positive")))
        store.add_artifact(rid, "lambda_curve", report.lambda_curve([(0.0, 0.5), (1.0, 0.6), (8.0, 0.55)], art / "lam.png", n=20))
        Image.new("RGB", (40, 20), "red").save(art / "sheet.png")
        store.add_artifact(rid, "edits.contact_sheet", art / "sheet.png")
        store.set_status(rid, "succeeded")
    return db, rid


def test_report_is_self_contained(tmp_path: Path, capsys) -> None:
    db, rid = _run_with_figures(tmp_path)
    out = tmp_path / "r" / "report.html"
    assert cli(["report", rid, "-o", str(out), "--db", db]) == 0
    page = out.read_text()
    for sid in SECTIONS:
        assert f"id='{sid}'" in page
    srcs = re.findall(r"<img src='([^']*)'", page)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "rep &lt;b&gt;" in page and "<b>" not in page.split("<body")[1].split("<h1>")[1][:40]  # escaped name
    assert "L" in page and "top positive heads" in page and "McNemar p" in page


def test_report_opens_in_headless_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed in CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    db, rid = _run_with_figures(tmp_path)
    out = tmp_path / "report.html"
    with RunStore(db) as store:
        out.write_text(build_report(store, rid))
    # An image that cannot decode must be caught: a broken copy of the page is checked as well.
    broken = tmp_path / "broken.html"
    broken.write_text(out.read_text().replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    results = {}
    for page in (out, broken):
        proc = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'chrome-profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
        found = re.search(r"VSEAM-CHECK (\{.*?\})<", proc.stdout)
        assert found, f"no check result in the DOM; stderr: {proc.stderr[-2000:]}"
        results[page.name] = json.loads(found.group(1))
    good = results["report.html"]
    assert good["ok"] and good["images"] == 3 and good["missing"] == [] and good["sections"] == len(SECTIONS)
    assert not results["broken.html"]["ok"] and len(results["broken.html"]["broken"]) == 1


# --- figures -------------------------------------------------------------------------------------


def test_vector_copies_on_request(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(report.FIGURE_FORMATS_ENV, "svg,pdf")
    out = report.head_heatmap(np.eye(3), tmp_path / "h.png", title="t", cbar_label="c", top=[(0, 0, 1.0)])
    assert out.suffix == ".png" and {p.suffix for p in report.companions(out)} == {".svg", ".pdf"}
    assert (tmp_path / "h.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "h.pdf").read_bytes()[:4] == b"%PDF"
    monkeypatch.setenv(report.FIGURE_FORMATS_ENV, "tiff")
    from vseam_run.errors import VseamError

    with pytest.raises(VseamError, match="tiff"):
        report.head_heatmap(np.eye(3), tmp_path / "x.png", title="t", cbar_label="c")


def test_shared_colour_scale_and_grid(tmp_path: Path) -> None:
    a, b = np.full((2, 3), 0.1), np.full((2, 3), 0.4)
    assert report.colour_limits([a, b], center=False) == (0.1, 0.4)
    assert report.colour_limits([a, -b], center=True) == (-0.4, 0.4)
    out = report.heatmap_grid([("positive", [a, b], False), ("signed", [a, -b], True)], ["run 1", "run 2"],
                              tmp_path / "g.png", title="grid", tops=[[[(0, 1)], []], [[], []]])
    with Image.open(out) as im:
        assert im.size[0] > 300 and im.info.get("dpi", (report.DPI,))[0] == pytest.approx(report.DPI, abs=1)


def test_wilson_interval() -> None:
    lo, hi = report.wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and 0.69 < lo < 0.73  # 10/10 still leaves room below
    lo, hi = report.wilson_interval(5, 10)
    assert lo == pytest.approx(1 - hi) and 0.23 < lo < 0.24


# --- console ---------------------------------------------------------------------------------------


def test_numbers_for_people() -> None:
    assert fmt.num(-2.22e-17) == "0" and fmt.num(0.048123) == "0.0481" and fmt.num(3.0) == "3"
    assert fmt.num(None) == "—" and fmt.num(float("nan")) == "—" and fmt.num(1234.5) == "1234"
    assert fmt.heads([(3, 4, 0.04812), (1, 0, 0.5)]) == "L3.H4 0.048, L1.H0 0.50"
    assert fmt.heads([]) == "none"


def test_line_progress_in_a_log_file() -> None:
    now = [0.0]
    buf = io.StringIO()
    p = LineProgress("search", 100, buf, every=30.0, clock=lambda: now[0])
    for _ in range(10):  # 10 steps, 10 s each
        now[0] += 10.0
        p.advance(10)
    p.close()
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("search: 0/100 (0%)")
    # A line at least every 30 s, each with an ETA; the last says done.
    assert len(lines) >= 1 + 100 // 30
    assert "30/100 (30%), 30s elapsed, eta 1m 10s" in lines[1]
    assert lines[-1].startswith("search: 100/100 (100%)")


def test_progress_quiet_and_non_tty(monkeypatch) -> None:
    buf = io.StringIO()
    monkeypatch.setenv("VSEAM_QUIET", "1")
    with progress("x", 5, stream=buf) as advance:
        advance(5)
    assert buf.getvalue() == ""
    silence_libraries()
    from transformers.utils import logging as hf_logging

    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    monkeypatch.delenv("VSEAM_QUIET")
    with progress("x", 5, stream=buf) as advance:
        advance(5)
    assert "x: 0/5" in buf.getvalue() and "x: 5/5 (100%)" in buf.getvalue()


# --- issue 24, item 8: the finding first, titles not clipped, heatmap scales ------------------------


def _texts_outside(fig) -> list[str]:
    """Texts of a figure that reach beyond its edges once drawn (a clipped title)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    out = []
    for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent")):
        if not t.get_text().strip() or not t.get_visible():
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - 1 or e.x1 > box.x1 + 1 or e.y0 < box.y0 - 1 or e.y1 > box.y1 + 1:
            out.append(t.get_text())
    return out


def test_figure_titles_are_not_clipped(tmp_path: Path, monkeypatch) -> None:
    figs = []
    real = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (figs.append(fig), real(fig, path))[1])
    label = "quickstart · 20261203-094144-fead33 · seed 0"
    report.lambda_curve([(0.0, 0.88), (1.0, 0.9), (8.0, 0.86)], tmp_path / "l.png", n=43, title=f"validation accuracy vs λ — {label}")
    m = np.zeros((6, 8))
    m[0, 0] = 0.5
    report.head_heatmap(m, tmp_path / "h.png", title=f"positive heads — {label}", cbar_label="mean ReLU(base − ablated), correct questions",
                        counts="exact, mean ablation; n = 113 correct / 17 wrong questions", top=[(0, 0)], significant=m > 0.1)
    report.ablation_bar_chart({"positive": 0.58, "negative": 0.46, "random": [0.0, 0.01]}, tmp_path / "a.png",
                              metric="accuracy_drop", title=f"zero-ablating 5 heads — {label}")
    assert len(figs) == 3
    for fig in figs:
        assert _texts_outside(fig) == []


def test_heatmap_scales_show_more_than_the_strongest_heads(tmp_path: Path, monkeypatch) -> None:
    """One strong head washes a linear scale out; symlog and per-row scales keep the others apart."""
    m = np.full((4, 4), 0.002)
    m[0, 0], m[2, 1], m[3, 2] = 0.5, 0.01, 0.004
    figs = []
    real = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path: (figs.append(fig), real(fig, path))[1])

    def colours(scale: str) -> np.ndarray:
        """The RGBA colour each head is drawn in."""
        report.head_heatmap(m, tmp_path / f"{scale}.png", title="t", cbar_label="c", scale=scale)
        image = figs[-1].axes[0].images[0]
        return image.to_rgba(image.get_array())
    lin, sym, row = (colours(s) for s in ("linear", "symlog", "row"))
    # The weak heads (0.01 and 0.004 against a 0.002 background) are told apart far more on
    # symlog / row than on linear, where the 0.5 head takes the whole range.
    def gap(c: np.ndarray) -> float:
        return float(np.abs(c[2, 1] - c[0, 3]).sum() + np.abs(c[3, 2] - c[0, 3]).sum())
    assert gap(sym) > 5 * gap(lin) and gap(row) > 5 * gap(lin)
    monkeypatch.setenv(report.HEATMAP_SCALE_ENV, "symlog")
    assert report.heatmap_scale() == "symlog"
    monkeypatch.setenv(report.HEATMAP_SCALE_ENV, "cubic")
    from vseam_run.errors import VseamError

    with pytest.raises(VseamError, match="cubic"):
        report.heatmap_scale()


def test_report_opens_with_the_finding(tmp_path: Path) -> None:
    db, rid = _run_with_figures(tmp_path)
    with RunStore(db) as store:
        store.put_document(rid, "modulation", {"policy": "linear", "lambda": 1.0})
        store.put_document(rid, "ablation", {"results": {"positive": {"accuracy_drop": 0.4}, "random": {"accuracy_drop": [0.0, 0.02]}}})
        page = build_report(store, rid)
    body = page.split("<body", 1)[1]
    order = [body.index(f"id='{s}'") for s in SECTIONS]
    assert order == sorted(order) and SECTIONS[0] == "summary" and SECTIONS[-1] == "spec"
    finding = body.split("id='summary'")[1].split("<section")[0]
    assert re.search(r"0\.50* → 0\.550*", finding) and re.search(r"95% CI of the difference \[0, 0\.10*\]", finding), finding
    assert "lambda = 1" in finding and "strongest positive heads" in finding and "class='bar" in finding
    assert "<details>" in body.split("id='spec'")[1]  # the spec is collapsed, at the end
    assert "<p id='vseam-check' hidden>" in page  # the load check is not for readers
    assert ">eval.test.summary<" not in page and "Held-out test: baseline vs modulated" in page
    metrics = body.split("id='metrics'")[1].split("<section")[0]
    assert "<h3>Baseline</h3>" in metrics


def test_first_order_estimates_are_marked(tmp_path: Path, capsys) -> None:
    db, rid = _run_with_figures(tmp_path)
    with RunStore(db) as store:
        heads = store.documents(rid)["heads"]
        store.put_document(rid, "heads", {**heads, "strategy": "attribution"})
        page = build_report(store, rid)
    assert "first-order estimate" in page and "≈" in page.split("id='summary'")[1].split("<section")[0]
    assert cli(["show", rid, "--db", db]) == 0
    out = capsys.readouterr().out
    assert "first-order estimate" in out and "≈" in out
    with RunStore(db) as store:
        store.put_document(rid, "heads", {**heads, "strategy": "exact"})
        page = build_report(store, rid)
    assert "first-order" not in page


def test_show_of_an_interrupted_run_says_how_many_search_layers_are_stored(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "runs.db")
    with RunStore(db) as store:
        rid = store.create_run(name="cut", spec_yaml="name: cut\n", spec_hash="h", model_name="toy-llava", seed=0)
        for layer in (0, 1, 2):
            store.save_checkpoint(rid, "search@fp1", f"exact:{layer}", [[0.0]])
        store.save_checkpoint(rid, "ledger", "baseline", {"x": 1})
        store.set_status(rid, "interrupted")
    assert cli(["show", rid, "--db", db]) == 0
    out = capsys.readouterr().out
    assert "search: 3 layers (exact: 0, 1, 2) stored" in out and f"vseam run --resume {rid}" in out
