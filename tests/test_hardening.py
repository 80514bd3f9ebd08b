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


# --- 1: inputs fingerprinted by content ---------------------------------------------------------

SEARCH_SPEC = BASELINE_SPEC + "search: {{strategy: exact, scoring: signed}}\n"


def _interrupt_after(mp, stage: str) -> None:
    from vseam_run.ledger import StageLedger

    real = StageLedger.mark

    def mark(self, name, fp, outputs=None):
        real(self, name, fp, outputs)
        if name == stage:
            raise KeyboardInterrupt

    mp.setattr(StageLedger, "mark", mark)


@pytest.fixture
def interrupted_run(capsys, here, tiny_llava_entry, monkeypatch) -> tuple[str, list[Path]]:
    """A run interrupted after its baseline; (run id, the toy images it read, sorted)."""
    from vseam_run.store import RunStore

    (here / "spec.yaml").write_text(SEARCH_SPEC.format(name="fp", model=tiny_llava_entry))
    with monkeypatch.context() as mp:
        _interrupt_after(mp, "baseline")
        rc, out, err = call(capsys, "run", "spec.yaml", "--db", "runs.db")
    assert rc == 130, out + err
    with RunStore(here / "runs.db") as store:
        (run,) = store.list_runs()
    images = sorted(here.rglob("toyworld-*/images/*.png"))
    assert len(images) == 24
    return run.id, images


def test_images_changed_in_place_refuse_the_resume(capsys, here, interrupted_run):
    from vseam_run.store import RunStore

    run_id, images = interrupted_run
    # Overwrite half the images with others (same file names, same folder: only the content differs).
    half = images[: len(images) // 2]
    others = [p.read_bytes() for p in images[len(images) // 2:]]
    for path, data in zip(half, others):
        path.write_bytes(data)
    rc, out, err = call(capsys, "run", "--resume", run_id, "--db", "runs.db")
    assert_user_error(rc, out, err, "stage 'data'", "content of input file", half[0].name, "new run")
    with RunStore(here / "runs.db") as store:
        rec = store.get_run(run_id)
        assert rec.status == "failed" and "stage 'data'" in rec.error_message
        assert "search" not in {r["stage"] for r in store.question_results(run_id)}  # nothing mixed in


def test_same_content_with_a_new_mtime_resumes(capsys, here, interrupted_run):
    """The size + mtime check is only a shortcut: a touched file of the same content still matches."""
    import os

    run_id, images = interrupted_run
    for p in images:
        st = p.stat()
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    rc, out, err = call(capsys, "run", "--resume", run_id, "--db", "runs.db")
    assert rc == 0, out + err


def test_file_stamps_are_cached_by_size_and_mtime(tmp_path):
    import os

    from vseam_run.filestamps import FileStamps, hash_file

    files = []
    for i in range(3):
        f = tmp_path / f"f{i}.bin"
        f.write_bytes(bytes([i]) * 1000)
        os.utime(f, (1_000_000, 1_000_000))  # old: not racy, so cached
        files.append(f)
    cache = tmp_path / "stamps.json"
    first = FileStamps(cache)
    stamps = first.stamps(files)
    first.save()
    assert first.hashed == 3 and stamps[str(files[1])] == hash_file(files[1])
    again = FileStamps(cache)
    assert again.stamps(files) == stamps and again.hashed == 0  # nothing read: the cache answered
    files[2].write_bytes(b"x" * 1000)  # same size, new mtime: read again
    third = FileStamps(cache)
    assert third.stamps(files)[str(files[2])] == hash_file(files[2]) != stamps[str(files[2])]
    assert third.hashed == 1


def test_a_just_written_file_is_not_cached(tmp_path):
    """Racy: written within the mtime tick of its hashing, it could change again unseen."""
    from vseam_run.filestamps import FileStamps

    f = tmp_path / "new.bin"
    f.write_bytes(b"a" * 10)
    s = FileStamps(tmp_path / "c.json")
    s.stamp(f)
    s.save()
    again = FileStamps(tmp_path / "c.json")
    again.stamp(f)
    assert again.hashed == 1


# --- 2: a checkpoint with a missing or unexpected tensor -----------------------------------------


def _damaged_copy(src_entry: Path, dst: Path, drop: str | None = None, add: str | None = None, **entry) -> Path:
    """A copy of a tiny checkpoint without tensor `drop` (or with an extra tensor `add`); its entry."""
    import shutil

    import torch
    import yaml
    from safetensors.torch import load_file, save_file

    shutil.copytree(src_entry.parent / "ckpt", dst / "ckpt")
    weights = load_file(dst / "ckpt" / "model.safetensors")
    if drop is not None:
        assert drop in weights, sorted(weights)[:20]
        del weights[drop]
    if add is not None:
        weights[add] = torch.ones(3)
    save_file(weights, dst / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    doc = yaml.safe_load(src_entry.read_text())
    doc.update(name="damaged", **entry)
    (dst / "damaged.yaml").write_text(yaml.safe_dump(doc))
    return dst / "damaged.yaml"


def _o_proj_of_layer_1(entry: Path) -> str:
    from safetensors import safe_open

    with safe_open(entry.parent / "ckpt" / "model.safetensors", "pt") as f:
        (name,) = [k for k in f.keys() if "layers.1." in k and k.endswith("o_proj.weight") and "language" in k]
    return name


def test_missing_tensor_is_found_by_validate_and_refused_at_load(capsys, here, tiny_llava_entry, monkeypatch):
    import torch

    from vseam_run import checks, weights_check
    from vseam_run.errors import VseamError
    from vseam_run.registry import load_entry_file
    from vseam_run.vlm import VLM

    name = _o_proj_of_layer_1(tiny_llava_entry)
    entry = _damaged_copy(tiny_llava_entry, here / "m", drop=name)
    (here / "spec.yaml").write_text(BASELINE_SPEC.format(name="dmg", model=entry))
    loads = []
    monkeypatch.setattr(VLM, "load", classmethod(lambda cls, *a: loads.append(a) or (_ for _ in ()).throw(AssertionError)))
    for cmd in ("validate", "run"):  # from the checkpoint's tensor list: nothing is loaded
        rc, out, err = call(capsys, cmd, "spec.yaml", "--db", "r.db") if cmd == "run" else call(capsys, cmd, "spec.yaml")
        assert_user_error(rc, out, err, name, "random")
    assert loads == []
    monkeypatch.undo()
    # At load, exactly (transformers' loading info), even where the tensor list cannot tell.
    monkeypatch.setattr(checks, "machine_problems", lambda spec, entry: [])
    with pytest.raises(VseamError, match="missing from the checkpoint") as e:
        VLM.load(load_entry_file(entry), torch.device("cpu"), torch.float32)
    # transformers names it as the model does (the checkpoint may use the older layout's names)
    assert "layers.1.self_attn.o_proj.weight" in str(e.value) and "allow_missing_weights" in str(e.value)
    assert weights_check.layer_gaps([name.replace("layers.1.", f"layers.{i}.") for i in (0, 2)]) == [name]


def test_an_entry_may_allow_a_named_missing_tensor(capsys, here, tiny_llava_entry):
    import torch

    from vseam_run.registry import load_entry_file
    from vseam_run.vlm import VLM

    name = _o_proj_of_layer_1(tiny_llava_entry)
    entry = _damaged_copy(tiny_llava_entry, here / "m", drop=name, allow_missing_weights=["*.layers.1.self_attn.o_proj.weight"])
    (here / "spec.yaml").write_text(BASELINE_SPEC.format(name="ok", model=entry))
    rc, out, err = call(capsys, "validate", "spec.yaml")
    assert rc == 0, out + err
    VLM.load(load_entry_file(entry), torch.device("cpu"), torch.float32)  # allowed: loads


def test_unexpected_tensor_is_refused_at_load(here, tiny_llava_entry):
    import torch

    from vseam_run.errors import VseamError
    from vseam_run.registry import load_entry_file
    from vseam_run.vlm import VLM

    entry = _damaged_copy(tiny_llava_entry, here / "m", add="model.stray_adapter.weight")
    with pytest.raises(VseamError, match="no place for") as e:
        VLM.load(load_entry_file(entry), torch.device("cpu"), torch.float32)
    assert "model.stray_adapter.weight" in str(e.value)


def test_layer_gaps_leave_every_other_layer_alone():
    """Q-Former's cross-attention sits in every other layer: half the stack, not a gap."""
    from vseam_run.weights_check import layer_gaps

    names = [f"q.layer.{i}.attn.weight" for i in range(12)] + [f"q.layer.{i}.cross.weight" for i in range(0, 12, 2)]
    assert layer_gaps(names) == []
    assert layer_gaps(names[:5] + names[6:]) == ["q.layer.5.attn.weight"]


def test_entries_without_allow_lists_hash_as_before(tiny_llava_entry):
    from vseam_run.registry import load_entry_file

    e = load_entry_file(tiny_llava_entry)
    assert "allow_missing_weights" not in e.to_yaml() and "allow_unexpected_weights" not in e.to_yaml()


# --- 4: an interrupted sweep is continued, not restarted -----------------------------------------

SWEEP_SPEC = """\
name: sw
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 8}}, limit: 8}}
search: {{strategy: exact, scoring: signed, top_k: 3, bootstrap: 20}}
"""


def _sweep_results(db: Path, sweep_id: str) -> dict[str, tuple]:
    """Seed → (status, metrics without timings, heads) of each run of a sweep."""
    import yaml

    from vseam_run.store import RunStore
    from vseam_run.store.labels import runs_with

    out = {}
    with RunStore(db) as store:
        for rid in runs_with(store, "sweep", sweep_id):
            rec = store.get_run(rid)
            seed = yaml.safe_load(rec.spec_yaml)["seed"]
            metrics = {k: v for k, v in rec.metrics.items() if not k.startswith(("time.", "search.seconds"))}
            out[seed] = (rec.status, metrics, store.get_document(rid, "heads"))
    return out


def test_interrupted_sweep_is_continued_with_the_same_numbers(capsys, here, tiny_llava_entry, monkeypatch):
    from vseam_run.ledger import StageLedger
    from vseam_run.store import RunStore

    (here / "spec.yaml").write_text(SWEEP_SPEC.format(model=tiny_llava_entry))
    grid = ["sweep", "spec.yaml", "--set", "seed=0,1,2"]
    rc, out, err = call(capsys, *grid, "--db", "full.db")
    assert rc == 0, out + err
    full_id = next(w.rstrip(":") for w in out.split() if w.startswith("sweep-"))
    full = _sweep_results(here / "full.db", full_id)
    assert sorted(full) == [0, 1, 2] and all(v[0] == "succeeded" for v in full.values())

    real, marks = StageLedger.mark, []

    def mark(self, name, fp, outputs=None):  # Ctrl-C in the second point, after its baseline
        real(self, name, fp, outputs)
        marks.append(name)
        if marks.count("baseline") == 2:
            raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(StageLedger, "mark", mark)
        rc, out, err = call(capsys, *grid, "--db", "r.db")
    assert rc == 130, out + err
    sweep_id = next(w.rstrip(":") for w in out.split() if w.startswith("sweep-"))
    assert f"sweep {sweep_id} interrupted" in out and f"--set seed=0,1,2 --resume {sweep_id} --db r.db" in out, out
    with RunStore(here / "r.db") as store:
        first = {r.id: r.status for r in store.list_runs()}
    assert sorted(first.values()) == ["interrupted", "succeeded"]

    # The same command again: it recognises its own unfinished grid and continues it.
    created = []
    real_create = RunStore.create_run
    monkeypatch.setattr(RunStore, "create_run", lambda self, **kw: created.append(kw["name"]) or real_create(self, **kw))
    rc, out, err = call(capsys, *grid, "--db", "r.db")
    assert rc == 0, out + err
    assert f"sweep {sweep_id} ran this grid and is unfinished" in out and "succeeded earlier" in out
    assert len(created) == 1  # only the point never started is a new run; the interrupted one was resumed
    with RunStore(here / "r.db") as store:
        runs = store.list_runs()
    assert len(runs) == 3 and all(r.status == "succeeded" for r in runs)
    assert {i for i in first} <= {r.id for r in runs}
    assert _sweep_results(here / "r.db", sweep_id) == full  # the numbers of an uninterrupted sweep

    # Finished: the same command now starts a new sweep; --resume of it has nothing left to do.
    rc, out, err = call(capsys, *grid, "--db", "r.db", "--resume", sweep_id, "--dry-run")
    assert rc == 0 and "3 succeeded earlier" in out, out + err


def test_sweep_resume_refuses_another_grid(capsys, here, tiny_llava_entry):
    from vseam_run.store import RunStore
    from vseam_run.store.labels import add_label

    (here / "spec.yaml").write_text(SWEEP_SPEC.format(model=tiny_llava_entry))
    with RunStore(here / "r.db") as store:
        rid = store.create_run(name="sw", spec_yaml="name: other\n", spec_hash="other")
        store.set_status(rid, "interrupted")
        add_label(store, rid, "sweep", "sweep-20260101-000000-abcd")
    rc, out, err = call(capsys, "sweep", "spec.yaml", "--set", "seed=0,1", "--db", "r.db", "--resume", "sweep-20260101-000000-abcd")
    assert_user_error(rc, out, err, "no point of this grid")
    rc, out, err = call(capsys, "sweep", "spec.yaml", "--set", "seed=0,1", "--db", "r.db", "--resume", "sweep-nope")
    assert_user_error(rc, out, err, "no runs of sweep sweep-nope")


# --- 5: resume after the workdir was deleted ------------------------------------------------------


def test_resume_after_the_workdir_was_deleted_marks_lost_artifacts(capsys, here, tiny_llava_entry, monkeypatch):
    import json
    import shutil

    from vseam_run.store import RunStore

    spec = BASELINE_SPEC + "edit: {{recipe: procedural}}\n"
    (here / "spec.yaml").write_text(spec.format(name="wd", model=tiny_llava_entry))
    rc, out, err = call(capsys, "run", "spec.yaml", "--db", "full.db", "--set", "workdir=full")
    assert rc == 0, out + err
    with monkeypatch.context() as mp:
        _interrupt_after(mp, "edit")
        rc, out, err = call(capsys, "run", "spec.yaml", "--db", "runs.db")
    assert rc == 130, out + err
    with RunStore(here / "runs.db") as store:
        (run,) = store.list_runs()
        registered = {a.kind for a in run.artifacts}
    assert {"edits"} <= {k.split(".")[0] for k in registered}, registered
    shutil.rmtree(here / ".vseam")
    rc, out, err = call(capsys, "run", "--resume", run.id, "--db", "runs.db")
    assert rc == 0, out + err
    assert "registered by finished stages are gone" in out
    # edits.json is rebuilt from the registry's `edits` document, byte for byte (its registered hash);
    # the contact sheet needs the deleted edited images: it stays missing (vseam_run/rebuild.py)
    assert "rebuilt from the registry: edits.json" in out, out
    from vseam_run.store.runstore import sha256_file

    with RunStore(here / "runs.db") as store:
        by_kind = {a.kind: a for a in store.get_run(run.id).artifacts}
    assert by_kind["edits.manifest"].state() == "present"
    assert sha256_file(Path(by_kind["edits.manifest"].path)) == by_kind["edits.manifest"].sha256
    registered.discard("edits.manifest")
    with RunStore(here / "runs.db") as a, RunStore(here / "full.db") as b:
        (full,) = b.list_runs()
        ra, rb = a.get_run(run.id), b.get_run(full.id)
        timing = ("time.",)
        assert {k: v for k, v in ra.metrics.items() if not k.startswith(timing)} == \
               {k: v for k, v in rb.metrics.items() if not k.startswith(timing)}
    rc, out, err = call(capsys, "show", run.id, "--db", "runs.db", "--json")
    shown = {a["kind"]: a["state"] for a in json.loads(out)["artifacts"]}
    assert shown and all(shown[k] == "missing" for k in registered), shown
    rc, out, err = call(capsys, "show", run.id, "--db", "runs.db")
    assert "MISSING" in out


# --- 7, 14: registry URLs ------------------------------------------------------------------------

PG_URL = __import__("os").environ.get("VSEAM_TEST_PG_URL", "")


def test_credentials_in_a_url_are_masked_everywhere():
    from sqlalchemy.engine import make_url

    from vseam_run.store.connect import display, mask

    url = "postgresql+psycopg://u:pw1@h/x?password=sekrit&sslmode=require&sslpassword=p2&auth_token=t3"
    for shown in (display(make_url(url)), mask(url), mask(f"error at {url} (code 3)")):
        assert not any(s in shown for s in ("pw1", "sekrit", "p2", "t3")), shown
        assert "sslmode=require" in shown and "***" in shown


def test_query_password_is_not_printed_when_the_server_is_unreachable(capsys, here, monkeypatch):
    monkeypatch.setenv("VSEAM_DB_TIMEOUT", "2")
    rc, out, err = call(capsys, "runs", "--db", "postgresql+psycopg://u@127.0.0.1:1/x?password=sekrit")
    assert_user_error(rc, out, err, "password=***")
    assert "sekrit" not in out + err


@pytest.fixture
def pg_db() -> str:
    """A new empty database on the test server (dropped afterwards)."""
    import secrets

    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(PG_URL)
    name = f"vseam_h_{secrets.token_hex(4)}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.skipif(not PG_URL, reason="VSEAM_TEST_PG_URL is unset (.ci/postgres.sh starts a server)")
def test_query_password_is_never_printed_by_any_command(capsys, here, tiny_llava_entry, pg_db):
    url = pg_db + ("&" if "?" in pg_db else "?") + "password=sekrit"  # the test server trusts: any password works
    (here / "spec.yaml").write_text(BASELINE_SPEC.format(name="pw", model=tiny_llava_entry))
    seen = []
    for argv in (["run", "spec.yaml"], ["runs"], ["show", "latest"], ["tag", "latest", "t1"], ["show", "nope"],
                 ["sweep", "spec.yaml", "--set", "seed=0", "--dry-run"]):
        rc, out, err = call(capsys, *argv, "--db", url)
        seen.append((argv[0], rc))
        assert "sekrit" not in out + err, (argv, out + err)
    assert [rc for _, rc in seen] == [0, 0, 0, 0, 2, 0], seen


@pytest.mark.parametrize("url", ["postgresql+psycopg://u@h:notaport/x", "postgresql+psycopg://[::1:1/x"])
def test_malformed_url_is_one_message(capsys, here, url):
    rc, out, err = call(capsys, "runs", "--db", url)
    assert_user_error(rc, out, err, "not a valid SQLAlchemy URL", "port")


def test_run_name_over_256_characters_is_refused_by_the_spec(capsys, here):
    (here / "s.yaml").write_text(f"name: {'n' * 257}\nmodel: toy-llava\ndata: {{source: toyworld}}\n")
    for cmd in ("validate", "run"):
        rc, out, err = call(capsys, cmd, "s.yaml")
        assert_user_error(rc, out, err, "name", "256")


@pytest.mark.skipif(not PG_URL, reason="VSEAM_TEST_PG_URL is unset (.ci/postgres.sh starts a server)")
def test_a_run_name_of_256_characters_fits_postgresql(pg_db):
    from vseam_run.store import RunStore

    with RunStore(pg_db) as store:
        rid = store.create_run(name="n" * 256, spec_yaml="name: x\n", spec_hash="h")
        assert store.get_run(rid).name == "n" * 256


# --- 9: a damaged SQLite file with a valid header --------------------------------------------------


def _damaged_registry(path: Path) -> str:
    """A registry with one run whose metrics table's root page is overwritten (header and schema
    intact): 'database disk image is malformed' once a query reaches it."""
    import sqlite3

    from vseam_run.store import RunStore

    with RunStore(path) as store:
        rid = store.create_run(name="d", spec_yaml="name: d\n", spec_hash="h")
        store.log_metrics(rid, {f"m.{i}": float(i) for i in range(50)})
        store.set_status(rid, "succeeded")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'metrics'").fetchone()
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    data[(root - 1) * page:(root - 1) * page + 12] = b"\x0d" + b"\xff" * 11
    path.write_bytes(bytes(data))
    return rid


@pytest.mark.parametrize("argv", [
    ["runs"], ["show", "RUN"], ["report", "RUN", "-o", "r.html"], ["export", "RUN", "-o", "ex"],
    ["compare", "RUN", "RUN"], ["run", "spec.yaml"],
])  # fmt: skip
def test_damaged_registry_is_one_message(capsys, here, tiny_llava_entry, argv):
    rid = _damaged_registry(here / "bad.db")
    (here / "spec.yaml").write_text(BASELINE_SPEC.format(name="d", model=tiny_llava_entry))
    rc, out, err = call(capsys, *[rid if a == "RUN" else a for a in argv], "--db", "bad.db")
    assert_user_error(rc, out, err, "bad.db is damaged", "malformed")


# --- 10: report / export outputs ------------------------------------------------------------------


@pytest.fixture
def one_run(here) -> str:
    from vseam_run.store import RunStore

    with RunStore(here / "r.db") as store:
        rid = store.create_run(name="o", spec_yaml="name: o\n", spec_hash="h")
        store.set_status(rid, "succeeded")
    (here / "existing.csv").write_text("x\n")
    (here / "folder").mkdir()
    return rid


@pytest.mark.parametrize("argv, fragment", [
    (["export", "RUN", "-o", "existing.csv"], "a file of that name exists"),
    (["export", "RUN", "-o", "existing.csv/sub"], "is a file"),
    (["export", "RUN", "-o", "/proc/vseam-x"], "/proc/vseam-x"),
    (["report", "RUN", "-o", "folder"], "is a folder"),
    (["report", "RUN", "-o", "existing.csv/r.html"], "is a file"),
    (["report", "RUN", "-o", "/proc/vseam-r.html"], "cannot write"),
])  # fmt: skip
def test_unwritable_outputs_are_one_message(capsys, here, one_run, argv, fragment):
    rc, out, err = call(capsys, *[one_run if a == "RUN" else a for a in argv], "--db", "r.db")
    assert_user_error(rc, out, err, fragment)
    assert (here / "existing.csv").read_text() == "x\n"


# --- 13: the workdir ---------------------------------------------------------------------------------


@pytest.mark.parametrize("workdir, fragment", [
    ("", "workdir: is empty"),
    ("/proc/vseam-wd", "cannot write to /proc/vseam-wd"),
    ("spec.yaml/wd", "is a file"),
])  # fmt: skip
def test_workdir_that_cannot_be_written_is_refused_before_the_model_loads(capsys, here, tiny_llava_entry, monkeypatch, workdir, fragment):
    from vseam_run.vlm import VLM

    (here / "spec.yaml").write_text(BASELINE_SPEC.format(name="w", model=tiny_llava_entry))
    monkeypatch.setattr(VLM, "load", classmethod(lambda *a: (_ for _ in ()).throw(AssertionError("loaded"))))
    rc, out, err = call(capsys, "run", "spec.yaml", "--db", "r.db", "--set", f"workdir={workdir}")
    assert_user_error(rc, out, err, fragment)
    assert sorted(p.name for p in here.iterdir()) == ["spec.yaml"]  # nothing written into the current folder


def test_validate_leaves_no_trace_of_the_workdir_probe(capsys, here, tiny_llava_entry):
    (here / "spec.yaml").write_text(BASELINE_SPEC.format(name="w", model=tiny_llava_entry) + "workdir: a/b/c\n")
    rc, out, err = call(capsys, "validate", "spec.yaml")
    assert rc == 0, out + err
    assert not (here / "a").exists()


# --- 15: toy-world sizes are bounded ----------------------------------------------------------------


@pytest.mark.parametrize("setting, fragment", [
    ("data.toyworld.images=1000000000", "data.toyworld.images"),
    ("data.toyworld.image_size=100000", "data.toyworld.image_size"),
])  # fmt: skip
def test_huge_toy_world_is_refused_at_once(capsys, here, setting, fragment):
    (here / "s.yaml").write_text("name: x\nmodel: toy-llava\ndevice: cpu\ndata: {source: toyworld}\n")
    rc, out, err = call(capsys, "run", "s.yaml", "--db", "r.db", "--set", setting)
    assert_user_error(rc, out, err, fragment, "less than or equal")
    assert not (here / "r.db").exists()


# --- 16: compare of unfinished runs, a foreign database with a 'meta' table ---------------------------


def test_compare_shows_an_unfinished_run_status(capsys, here):
    import json

    from vseam_run.store import RunStore

    with RunStore(here / "r.db") as store:
        a = store.create_run(name="a", spec_yaml="name: a\n", spec_hash="h")
        store.log_metrics(a, {"baseline.accuracy": 0.5})
        store.set_status(a, "succeeded")
        b = store.create_run(name="b", spec_yaml="name: b\n", spec_hash="h2")
        store.set_status(b, "interrupted")
    rc, out, err = call(capsys, "compare", a, b, "--db", "r.db")
    assert rc == 0, err
    assert "interrupted" in out and "not every run finished" in out
    rc, out, err = call(capsys, "compare", a, b, "--db", "r.db", "--json")
    assert [r["status"] for r in json.loads(out)["runs"]] == ["succeeded", "interrupted"]


def test_foreign_sqlite_with_a_meta_table(capsys, here):
    import sqlite3

    with sqlite3.connect(here / "other.db") as conn:
        conn.execute("CREATE TABLE meta (name TEXT, data TEXT)")
    rc, out, err = call(capsys, "runs", "--db", "other.db")
    assert_user_error(rc, out, err, "not a vseam run registry", "meta")
    assert "no such column" not in out + err and "lock" not in out + err


# --- 8: trust_remote_code: validate and run agree, and both say what it means --------------------------

REMOTE_CONFIG = '''
import os
import pathlib
from transformers import LlavaConfig

pathlib.Path(os.environ["VSEAM_TEST_MARK"]).write_text("yes")  # shows the checkpoint's code was run


class MyLlavaConfig(LlavaConfig):
    model_type = "my_llava"
'''


def _remote_code_checkpoint(src_entry: Path, dst: Path, trust: bool) -> Path:
    import json
    import shutil

    import yaml

    shutil.copytree(src_entry.parent / "ckpt", dst / "ckpt")
    cfg = json.loads((dst / "ckpt" / "config.json").read_text())
    cfg.update(model_type="my_llava", auto_map={"AutoConfig": "my_config.MyLlavaConfig"})
    (dst / "ckpt" / "config.json").write_text(json.dumps(cfg))
    (dst / "ckpt" / "my_config.py").write_text(REMOTE_CONFIG)
    # transformers renames the older key layout by model_type; a new model_type gets none of that, so
    # the weights are stored under the names the model uses (else item 2's check rightly refuses them).
    from safetensors.torch import load_file, save_file

    renames = [("language_model.lm_head.", "lm_head."), ("language_model.model.", "model.language_model."),
               ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector.")]
    weights = load_file(dst / "ckpt" / "model.safetensors")
    renamed = {}
    for k, v in weights.items():
        for old, new in renames:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        renamed[k] = v
    save_file(renamed, dst / "ckpt" / "model.safetensors", metadata={"format": "pt"})
    doc = yaml.safe_load(src_entry.read_text())
    doc.update(name="remote", trust_remote_code=trust)
    (dst / "remote.yaml").write_text(yaml.safe_dump(doc))
    return dst / "remote.yaml"


def test_trust_remote_code_validate_and_run_agree(capsys, here, tiny_llava_entry, monkeypatch):
    monkeypatch.setenv("VSEAM_TEST_MARK", str(here / "code_ran"))
    entry = _remote_code_checkpoint(tiny_llava_entry, here / "m", trust=False)
    (here / "spec.yaml").write_text(BASELINE_SPEC.format(name="rc", model=entry))
    for argv in (["validate", "spec.yaml"], ["run", "spec.yaml", "--db", "r.db"]):
        rc, out, err = call(capsys, *argv)
        assert rc == 2 and "Traceback" not in out + err, out + err
    assert not (here / "code_ran").exists()  # without the entry's word, no checkpoint code runs

    trusted = _remote_code_checkpoint(tiny_llava_entry, here / "t", trust=True)
    (here / "spec2.yaml").write_text(BASELINE_SPEC.format(name="rc", model=trusted))
    rc, out, err = call(capsys, "validate", "spec2.yaml")
    assert "not supported" not in out + err
    assert "runs Python code from the checkpoint folder" in out, out + err
    assert (here / "code_ran").exists(), out + err  # validate ran it, as the run will
    rc2, out2, err2 = call(capsys, "run", "spec2.yaml", "--db", "r.db")
    assert "runs Python code from the checkpoint folder" in out2 + err2, out2 + err2
    assert rc == 0 and rc2 == 0, (out + err, out2 + err2)  # they agree: both load it, both say so


# --- 12: classes and module paths of an entry ------------------------------------------------------


def test_processor_class_must_be_a_processor(capsys, here, tiny_llava_entry):
    import yaml

    doc = yaml.safe_load(tiny_llava_entry.read_text())
    doc.update(name="badproc", processor_class="TrainingArguments", path=str(tiny_llava_entry.parent / "ckpt"))
    (here / "e.yaml").write_text(yaml.safe_dump(doc))
    rc, out, err = call(capsys, "validate", "e.yaml")
    assert_user_error(rc, out, err, "processor_class", "not a processor class")


def test_o_proj_that_is_no_module_is_refused_by_the_run_preflight(capsys, here, tiny_llava_entry, monkeypatch):
    import yaml

    from vseam_run.vlm import VLM

    doc = yaml.safe_load(tiny_llava_entry.read_text())
    doc["modules"]["o_proj"] = "self_attn.o_proj.weight"  # a tensor, not a module
    doc.update(name="badpath", path=str(tiny_llava_entry.parent / "ckpt"))
    (here / "e.yaml").write_text(yaml.safe_dump(doc))
    (here / "spec.yaml").write_text(BASELINE_SPEC.format(name="p", model=here / "e.yaml"))
    monkeypatch.setattr(VLM, "load", classmethod(lambda *a: (_ for _ in ()).throw(AssertionError("loaded"))))
    for argv in (["validate", "e.yaml"], ["validate", "spec.yaml"], ["run", "spec.yaml", "--db", "r.db"]):
        rc, out, err = call(capsys, *argv)
        assert_user_error(rc, out, err, "o_proj")
