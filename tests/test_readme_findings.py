"""Issue 24 items 8-9, loose ends: the README describes the report and compare options as the code
has them, and a bad heatmap scale is found before a run."""

from __future__ import annotations

from pathlib import Path

from vseam_run import report

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_names_the_heatmap_scale_variable_and_its_values():
    section = README.split("## Findings across runs", 1)[1].split("\n## ", 1)[0]
    assert f"{report.HEATMAP_SCALE_ENV}=symlog" in section
    for scale in report.HEATMAP_SCALES:
        if scale != "linear":
            assert f"`{scale}`" in section or f"={scale}" in section, scale
    assert "no paired test" in section  # what compare says when it runs no McNemar test


def test_readme_test_time_is_a_measurement():
    section = README.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    assert "several minutes" not in section and "384.6 s" in section


def test_a_bad_heatmap_scale_stops_the_run_before_it_starts(tmp_path, monkeypatch, capsys):
    """A typo in VSEAM_HEATMAP_SCALE failed only when the heatmaps were drawn, after the search;
    now preflight names it (exit 2) and no run is recorded."""
    from vseam_run.cli.main import cli
    from vseam_run.store import RunStore

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(report.HEATMAP_SCALE_ENV, "symlg")
    spec = Path(__file__).resolve().parents[1] / "specs" / "quickstart.yaml"
    capsys.readouterr()
    assert cli(["run", str(spec), "--db", "runs.db"]) == 2
    err = capsys.readouterr().err
    assert "VSEAM_HEATMAP_SCALE: unknown heatmap scale 'symlg'" in err and "symlog" in err and "Traceback" not in err, err
    if (tmp_path / "runs.db").exists():
        with RunStore("runs.db") as store:
            assert store.list_runs() == []
    monkeypatch.setenv(report.HEATMAP_SCALE_ENV, "row")
    from vseam_run.checks import figure_setting_problems

    assert figure_setting_problems() == []
