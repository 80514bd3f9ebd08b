"""Issue 25: bad input, faults and interrupts a careful user tries, each one case.

Every case ends in one message naming the file / field / item and exit code 2 (no traceback),
or, for the silent ones (an input changed in place, a missing tensor, a live run removed),
in a refusal that names what changed. Each test says which item of the issue it covers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vseam_run.cli.main import cli

BASELINE_SPEC = """\
name: {name}
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 24}}, limit: 16}}
"""


def call(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_user_error(rc: int, out: str, err: str, *fragments: str) -> None:
    """Exit 2, the fragments in the message, no traceback."""
    assert rc == 2, (rc, out, err)
    text = out + err
    assert "Traceback" not in text and 'File "' not in text, text
    for f in fragments:
        assert f in text, (f, text)


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- 6, 11, 16: the spec file itself -------------------------------------------------------------


def test_duplicate_key_names_both_lines(capsys, here):
    (here / "s.yaml").write_text("name: x\nseed: 0\nmodel: toy-llava\ndata: {source: toyworld}\nseed: 5\n")
    for cmd in ("validate", "run"):
        rc, out, err = call(capsys, cmd, "s.yaml")
        assert_user_error(rc, out, err, "'seed' given twice", "line 2", "line 5")


def test_duplicate_key_in_a_nested_section(capsys, here):
    (here / "s.yaml").write_text("name: x\nmodel: toy-llava\ndata:\n  source: toyworld\n  limit: 3\n  limit: 4\n")
    rc, out, err = call(capsys, "validate", "s.yaml")
    assert_user_error(rc, out, err, "'limit' given twice", "line 5", "line 6")


def test_merge_keys_are_not_duplicates(capsys, here):
    from vseam_run.yamlio import parse_yaml

    doc = parse_yaml("a: &b {x: 1}\nc:\n  <<: *b\n  y: 2\n", "t")
    assert doc.data["c"] == {"x": 1, "y": 2}


@pytest.mark.parametrize("raw, fragment", [
    (b"name: x\nmodel: toy-llava\n# \xff\n", "byte 0xff on line 3"),
    ("name: x\n# café latin-1\nmodel: toy-llava\n".encode("latin-1"), "byte 0xe9 on line 2"),
    ("name: x\nmodel: toy-llava\n".encode("utf-16"), "UTF-16"),
])  # fmt: skip
def test_spec_not_utf8(capsys, here, raw, fragment):
    (here / "s.yaml").write_bytes(raw)
    for cmd in ("validate", "run"):
        rc, out, err = call(capsys, cmd, "s.yaml")
        assert_user_error(rc, out, err, "s.yaml", fragment, "UTF-8")


def test_utf8_bom_is_fine(here):
    from vseam_run.yamlio import load_yaml

    (here / "s.yaml").write_bytes("\ufeffname: x\n".encode("utf-8"))
    assert load_yaml(here / "s.yaml").data == {"name": "x"}


@pytest.mark.parametrize("target, fragment", [(".", "is a folder"), ("/dev/null", "not a regular file")])
def test_spec_path_is_a_folder_or_device(capsys, here, target, fragment):
    for cmd in ("validate", "run"):
        rc, out, err = call(capsys, cmd, target)
        assert_user_error(rc, out, err, fragment)
        assert "file not found" not in out + err


# --- 3: vseam rm of a live run -------------------------------------------------------------------


def test_rm_refuses_a_live_run_unless_forced(capsys, here):
    from datetime import datetime, timedelta, timezone

    from vseam_run.store import RunStore
    from vseam_run.store.records import STALE_AFTER_S

    with RunStore(here / "r.db") as store:
        live = store.create_run(name="live", spec_yaml="name: live\n", spec_hash="h")  # this process, fresh beat
        lost = store.create_run(name="lost", spec_yaml="name: lost\n", spec_hash="h")
        store.heartbeat(lost, at=datetime.now(timezone.utc) - timedelta(seconds=STALE_AFTER_S + 60))
    rc, out, err = call(capsys, "rm", live, lost, "--db", "r.db")
    assert_user_error(rc, out, err, f"run {live} is still running", "--force")
    with RunStore(here / "r.db") as store:
        assert {r.id for r in store.list_runs()} == {live, lost}  # nothing removed, the lost one neither
    rc, out, err = call(capsys, "rm", lost, "--db", "r.db")
    assert rc == 0 and f"removed run {lost}" in out, out + err
    rc, out, err = call(capsys, "rm", live, "--db", "r.db", "--force")
    assert rc == 0 and f"removed run {live}" in out, out + err
    with RunStore(here / "r.db") as store:
        assert store.list_runs() == []
