"""The README describes the report and compare options as the code has them (issue 24, items 8-9)."""

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
