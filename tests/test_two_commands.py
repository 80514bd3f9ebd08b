"""The README's two commands work from a venv that is not activated (issue 24, item 1).

`make quickstart PY=venv/bin/python` used to install and then fail with `vseam: No such file
or directory`: the Makefile called a bare `vseam`, which is only on PATH in an activated venv.
Every command a target runs must go through the interpreter the user named.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = "/nowhere/venv/bin/python"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", ["quickstart", "test", "bench"])
def test_every_make_command_runs_through_PY(target):
    # Run as a top-level make: under `make test` (CI) the inherited MAKEFLAGS / MAKELEVEL would make
    # the child print "make[1]: Entering directory" lines, which are make's, not the target's.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", target, f"PY={PY}"],
        cwd=REPO, capture_output=True, text=True, timeout=60, env=env,
    )
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
    assert lines
    for line in lines:
        # Environment assignments (HF_HUB_OFFLINE=1) may come first; the program must be $(PY).
        program = re.sub(r"^(\w+=\S+\s+)*", "", line).split()[0]
        assert program == PY, f"`make {target}` runs {program!r}, not the PY it was given: {line}"


def test_readme_says_where_runs_land_and_how_long_tests_take():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    assert "PY=" in section and "venv" in section  # how to use a virtualenv without activating it
    assert "./runs.db" in section and "./.vseam/" in section  # where runs land
    assert re.search(r"\d+\s*min", section)  # how long the tests take
