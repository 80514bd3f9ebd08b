"""Missing artifacts rebuilt from the registry on resume, only byte for byte (issue 25, item 5)."""

from __future__ import annotations

import json

from vseam_run.rebuild import rebuild_missing
from vseam_run.store import RunStore


def _run_with_manifest(tmp_path, manifest):
    store = RunStore(str(tmp_path / "runs.db"))
    rid = store.create_run(name="r", spec_yaml="name: r\n", spec_hash="h")
    path = tmp_path / "wd" / "edits.json"
    path.parent.mkdir()
    path.write_text(json.dumps(manifest, indent=1))  # as the edit stage writes it
    store.add_artifact(rid, "edits.manifest", path)
    store.put_document(rid, "edits", manifest)
    return store, rid, path


MANIFEST = [{"qid": "q1", "text": "red → green", "boxes": [[0.5, 1.25, 3.0, 4.0]], "passed": True}]


def test_a_deleted_manifest_is_written_back_with_its_registered_hash(tmp_path):
    store, rid, path = _run_with_manifest(tmp_path, MANIFEST)
    original = path.read_bytes()
    path.unlink()
    path.parent.rmdir()  # the whole workdir went
    assert rebuild_missing(store, rid) == [str(path.resolve())]
    assert path.read_bytes() == original
    assert rebuild_missing(store, rid) == []  # present now: nothing to do
    store.close()


def test_a_manifest_the_registry_cannot_reproduce_is_left_missing(tmp_path):
    store, rid, path = _run_with_manifest(tmp_path, MANIFEST)
    path.unlink()
    store.put_document(rid, "edits", [{**MANIFEST[0], "text": "red → blue"}])  # no longer what was registered
    assert rebuild_missing(store, rid) == [] and not path.exists()
    store.close()


def test_a_changed_file_is_not_overwritten(tmp_path):
    store, rid, path = _run_with_manifest(tmp_path, MANIFEST)
    path.write_text("edited by hand")
    assert rebuild_missing(store, rid) == [] and path.read_text() == "edited by hand"
    store.close()
