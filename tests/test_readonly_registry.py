"""A writable registry in a read-only folder (issue 25, item 16): reading commands work (SQLite
could not open the file at all, "unable to open database file", since WAL mode needs -shm / -wal
files beside it); writing commands say the folder is read-only, exit 2, no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vseam_run.cli.main import cli
from vseam_run.store import RunStore, readonly


def _registry(path: Path) -> str:
    with RunStore(str(path)) as store:
        rid = store.create_run(name="quickstart", spec_yaml="name: quickstart\nseed: 0\n", spec_hash="h",
                               model_name="toy-instructblip", seed=0)
        store.log_metrics(rid, {"baseline.accuracy": 0.9})
        store.set_status(rid, "succeeded")
    for extra in ("-wal", "-shm"):  # a closed registry leaves none; make sure
        Path(f"{path}{extra}").unlink(missing_ok=True)
    return rid


def test_reading_commands_work_when_the_folder_looks_read_only(tmp_path, capsys, monkeypatch):
    """Wiring, on any machine (root included): the folder is made to look read-only to vseam."""
    db = tmp_path / "reg" / "runs.db"
    db.parent.mkdir()
    rid = _registry(db)
    folder = db.resolve().parent
    real = os.access
    monkeypatch.setattr(readonly.os, "access", lambda p, mode: False if Path(p) == folder else real(p, mode))
    capsys.readouterr()
    assert cli(["runs", "--db", str(db)]) == 0
    assert rid in capsys.readouterr().out
    assert cli(["show", rid, "--db", str(db)]) == 0
    assert "0.9000" in capsys.readouterr().out
    assert cli(["tag", rid, "paper", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert "its folder is read-only" in err and "Traceback" not in err, err
    assert not Path(f"{db}-wal").exists() and not Path(f"{db}-shm").exists()  # nothing written beside it
    from vseam_run.errors import VseamError

    with pytest.raises(VseamError, match="its folder is read-only"):  # a writer (vseam run) is told before it starts
        RunStore(str(db))


_PROBE = """
import sys
from vseam_run.cli.main import cli
sys.exit(cli(sys.argv[1:]))
"""


def _as_read_only_folder(folder: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run vseam with `folder` read-only but its runs.db writable: chmod for a normal user; as
    root (who ignores modes) a read-only bind mount with the file bound writable on top."""
    cmd = [sys.executable, "-c", _PROBE, *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        finally:
            folder.chmod(0o755)
    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare: no way to make a folder read-only for root")
    rw = folder.parent / "rw.db"
    shutil.copy(folder / "runs.db", rw)
    script = ('set -e; mount --bind "$1" "$1"; mount -o remount,bind,ro "$1"; mount --bind "$2" "$1/runs.db"; '
              'shift 2; exec "$@"')
    r = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(folder), str(rw), *cmd],
                       capture_output=True, text=True, env=env, timeout=120)
    if "mount" in r.stderr and r.returncode != 0 and "vseam" not in r.stderr:
        pytest.skip(f"running as root and cannot make a read-only mount here: {r.stderr.strip()[:200]}")
    return r


def test_runs_and_show_in_a_really_read_only_folder(tmp_path):
    folder = tmp_path / "reg"
    folder.mkdir()
    rid = _registry(folder / "runs.db")
    db = str(folder / "runs.db")
    r = _as_read_only_folder(folder, ["runs", "--db", db])
    assert r.returncode == 0 and rid in r.stdout, r.stdout + r.stderr
    r = _as_read_only_folder(folder, ["show", rid, "--db", db])
    assert r.returncode == 0 and "0.9000" in r.stdout, r.stdout + r.stderr
    r = _as_read_only_folder(folder, ["note", rid, "hello", "--db", db])
    assert r.returncode == 2 and "its folder is read-only" in r.stderr and "Traceback" not in r.stderr, r.stderr
