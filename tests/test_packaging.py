"""A non-editable install ships the registry entries and example specs (issue 9).

The package is built and installed the way `pip install .` does it, into a fresh venv (with
the system site-packages for torch & co, and no index: it must work offline), and then used
from a folder that is not the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "registry", "specs", "vseam_run"]


def _can_build_wheels() -> bool:
    """setuptools builds wheels itself from 70.1 on; older ones need the `wheel` package."""
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    if (major, minor) >= (70, 1):
        return True
    try:
        import wheel  # noqa: F401
    except ImportError:
        return False
    return True


def _nested_venv(venv: Path) -> Path:
    """A venv that sees the packages of the interpreter running the tests, not only the base's.

    `python -m venv --system-site-packages` from inside a venv links to the *base* interpreter
    (a pyenv one here: setuptools 65.5, no `wheel`), so building there checked one setuptools and
    built with another (issue 24: `invalid command 'bdist_wheel'`), and torch & co had to be in the
    base. A .pth line puts the running interpreter's site-packages right after the new venv's own,
    ahead of the base's: the build uses what `_can_build_wheels` checked.
    """
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    own = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    running = [p for p in dict.fromkeys(site.getsitepackages() + [sysconfig.get_paths()["purelib"]]) if Path(p).is_dir()]
    (Path(own) / "_running_interpreter.pth").write_text("".join(f"{p}\n" for p in running))
    return py


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(bin folder of a venv holding a non-editable vseam, environment to run it in)."""
    if not _can_build_wheels():
        pytest.skip("cannot build a wheel here: setuptools < 70.1 and no `wheel` package")
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    src.mkdir()
    # A copy, so the build leaves no build/ or egg-info in the repository.
    for name in SOURCES:
        p = REPO / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(p, src / name)
    venv = root / "venv"
    py = _nested_venv(venv)
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VSEAM_REGISTRY", "VSEAM_DB")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VSEAM_QUIET="1")
    return venv / "bin", env


def _vseam(installed, cwd: Path, *argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    bin_dir, env = installed
    return subprocess.run([str(bin_dir / "vseam"), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_installed_package_is_the_copy_not_the_repository(installed, tmp_path):
    bin_dir, env = installed
    out = subprocess.run([str(bin_dir / "python"), "-c", "import vseam_run; print(vseam_run.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    path = Path(out.stdout.strip())
    assert "site-packages" in path.parts and REPO not in path.parents, out


def test_models_and_specs_are_shipped(installed, tmp_path):
    proc = _vseam(installed, tmp_path, "models", "--json")
    assert proc.returncode == 0, proc.stderr
    names = {m["name"] for m in json.loads(proc.stdout)}
    assert names == {p.stem for p in (REPO / "registry").glob("*.yaml")}
    proc = _vseam(installed, tmp_path, "specs", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {s["name"] for s in json.loads(proc.stdout)} == {p.stem for p in (REPO / "specs").glob("*.yaml")}
    proc = _vseam(installed, tmp_path, "specs", "cp", "quickstart")
    assert proc.returncode == 0 and (tmp_path / "quickstart.yaml").read_text() == (REPO / "specs" / "quickstart.yaml").read_text()


def test_run_quickstart_by_name_from_any_folder(installed, tmp_path):
    """The shipped spec, its registry entry and the toy checkpoint all come from the install
    (cut to a baseline on 16 questions to stay fast)."""
    proc = _vseam(
        installed, tmp_path, "run", "quickstart", "--db", str(tmp_path / "runs.db"),
        "--set", "data.toyworld.images=24", "--set", "data.limit=16",
        *[x for section in ("edit", "search", "modulation", "evaluate") for x in ("--set", f"{section}=null")],
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "succeeded" in proc.stdout and "baseline.accuracy" in proc.stdout
    proc = _vseam(installed, tmp_path, "show", "latest", "--db", str(tmp_path / "runs.db"), "--json")
    shown = json.loads(proc.stdout)
    assert shown["name"] == "quickstart" and shown["model"] == "toy-llava" and shown["status"] == "succeeded"


def test_nested_venv_builds_with_the_running_interpreters_setuptools(tmp_path):
    """The check and the build see the same setuptools (and the same torch): the nested venv's
    imports resolve to the running interpreter's packages, not to the base interpreter's."""
    py = _nested_venv(tmp_path / "venv")
    probe = "import setuptools, pydantic; print(setuptools.__file__); print(pydantic.__file__)"
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import pydantic
    import setuptools
    assert out.stdout.split() == [setuptools.__file__, pydantic.__file__]
