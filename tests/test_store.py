"""The run registry: lifecycle, upserts, checkpoints, documents, references, bad locations."""

from __future__ import annotations

import hashlib
import math
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from vseam_run.errors import VseamError
from vseam_run.store import SCHEMA_VERSION, RunStore

SPEC = "name: quick\nmodel: toy-llava\nseed: 0\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    s = RunStore(str(tmp_path / "runs.db"))
    yield s
    s.close()


def _new_run(store: RunStore, name: str = "quick") -> str:
    return store.create_run(
        name=name,
        spec_yaml=SPEC,
        spec_hash="abc123",
        model_name="toy-llava",
        model_entry_yaml="name: toy-llava\n",
        model_hash="m-hash",
        versions={"torch": "2.13.0"},
        device="cpu",
        seed=0,
    )


def test_lifecycle(store: RunStore, tmp_path: Path) -> None:
    run_id = _new_run(store)
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", run_id)
    rec = store.get_run(run_id)
    assert (rec.status, rec.finished_at, rec.versions, rec.seed) == ("running", None, {"torch": "2.13.0"}, 0)

    store.log_metrics(run_id, {"baseline.accuracy": 0.75, "baseline.n": 4})
    rows = [
        {"qid": 1, "split": "test", "category": "color", "gold": "red", "pred": "red", "correct": True,
         "gold_prob": 0.8, "extra": {"edit": "red->green"}},
        {"qid": "q2", "split": "test", "category": "color", "gold": "blue", "pred": "red", "correct": False,
         "gold_prob": 0.1},
    ]  # fmt: skip
    store.log_question_results(run_id, "baseline", rows)
    # Logging a stage again replaces it rather than doubling it.
    store.log_question_results(run_id, "baseline", rows)
    got = store.question_results(run_id, "baseline")
    assert [r["qid"] for r in got] == ["1", "q2"]
    assert got[0]["correct"] is True and got[0]["extra"] == {"edit": "red->green"}
    assert got[1]["extra"] is None and got[1]["gold_prob"] == pytest.approx(0.1)
    assert store.question_stages(run_id)["baseline"] == (2, 1)

    artifact = tmp_path / "heads.png"
    artifact.write_bytes(b"\x89PNG fake heatmap")
    digest = store.add_artifact(run_id, "heatmap", artifact)
    assert digest == hashlib.sha256(b"\x89PNG fake heatmap").hexdigest()

    store.set_status(run_id, "succeeded")
    rec = store.get_run(run_id)
    assert rec.status == "succeeded"
    assert rec.finished_at is not None and rec.duration_s is not None and rec.duration_s >= 0
    assert rec.metrics == {"baseline.accuracy": 0.75, "baseline.n": 4.0}
    assert [(a.kind, Path(a.path), a.sha256) for a in rec.artifacts] == [("heatmap", artifact.resolve(), digest)]
    assert rec.spec() == {"name": "quick", "model": "toy-llava", "seed": 0}


def test_failure_records_error_and_resume_clears_it(store: RunStore) -> None:
    run_id = _new_run(store)
    store.set_status(run_id, "failed", error_message="CUDA out of memory", error_traceback="Traceback ...")
    rec = store.get_run(run_id)
    assert (rec.status, rec.error_message, rec.error_traceback) == ("failed", "CUDA out of memory", "Traceback ...")
    store.mark_resumed(run_id)
    rec = store.get_run(run_id)
    assert (rec.status, rec.finished_at, rec.error_message, rec.resume_count) == ("running", None, None, 1)
    with pytest.raises(ValueError, match="unknown run status"):
        store.set_status(run_id, "done")


def test_metrics_upsert_and_nan(store: RunStore) -> None:
    run_id = _new_run(store)
    store.log_metrics(run_id, {"a": 1.0, "b": 2.0})
    store.log_metrics(run_id, {"b": 3.5, "c": float("nan")})
    metrics = store.get_run(run_id).metrics
    assert metrics["a"] == 1.0 and metrics["b"] == 3.5 and math.isnan(metrics["c"])
    assert store.get_run(run_id).metric("c") is None


def test_update_spec_and_summary(store: RunStore) -> None:
    run_id = _new_run(store)
    store.update_spec(run_id, "name: quick\nseed: 1\n", "def456")
    store.set_summary(run_id, {"best_lambda": 1.0})
    rec = store.get_run(run_id)
    assert (rec.spec(), rec.spec_hash, rec.summary) == ({"name": "quick", "seed": 1}, "def456", {"best_lambda": 1.0})


def test_checkpoints_upsert_load_delete(store: RunStore) -> None:
    run_id = _new_run(store)
    store.save_checkpoint(run_id, "heads", "layer.0", {"scores": [0.1, 0.2]})
    store.save_checkpoint(run_id, "heads", "layer.1", {"scores": [0.3, 0.4]})
    store.save_checkpoint(run_id, "heads", "layer.0", {"scores": [0.5, 0.6]})  # overwrite
    store.save_checkpoint(run_id, "trace", "layer.0", [1, 2])
    assert store.load_checkpoints(run_id, "heads") == {
        "layer.0": {"scores": [0.5, 0.6]},
        "layer.1": {"scores": [0.3, 0.4]},
    }
    assert store.delete_checkpoints(run_id, "heads") == 2
    assert store.load_checkpoints(run_id, "heads") == {}
    assert store.load_checkpoints(run_id, "trace") == {"layer.0": [1, 2]}


def test_documents(store: RunStore) -> None:
    run_id = _new_run(store)
    assert store.get_document(run_id, "heads") is None
    store.put_document(run_id, "heads", {"positive": [[0.0, 1.0]], "shape": (1, 2)})
    store.put_document(run_id, "heads", {"positive": [[2.0, 3.0]]})
    store.put_document(run_id, "trace", [1, 2, 3])
    assert store.get_document(run_id, "heads") == {"positive": [[2.0, 3.0]]}
    assert store.documents(run_id) == {"heads": {"positive": [[2.0, 3.0]]}, "trace": [1, 2, 3]}


def test_resolve_latest_prefix_unknown(store: RunStore) -> None:
    with pytest.raises(VseamError, match="no runs in"):
        store.resolve("latest")
    first = _new_run(store, "first")
    second = _new_run(store, "second")
    assert store.resolve("latest") == second
    assert [r.id for r in store.list_runs()] == [second, first]
    assert store.resolve(first) == first
    # The shortest prefix that tells the two apart resolves; the shared one is ambiguous.
    common = next(i for i, (x, y) in enumerate(zip(first, second)) if x != y)
    assert store.resolve(first[: common + 1]) == first
    with pytest.raises(VseamError, match="ambiguous"):
        store.resolve(first[:common])
    typo = first[:-1] + ("0" if first[-1] != "0" else "1")
    with pytest.raises(VseamError) as err:
        store.resolve(typo)
    message = str(err.value)
    assert f"no run '{typo}'" in message and "did you mean" in message and first in message
    assert "vseam runs" in message
    # LIKE wildcards in user input must not match everything.
    with pytest.raises(VseamError, match="no run '%'"):
        store.resolve("%")


def test_unknown_run_on_write_is_clear(store: RunStore) -> None:
    with pytest.raises(VseamError, match="no run 'nope'"):
        store.log_metrics("nope", {"a": 1.0})


def test_newer_schema_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    RunStore(str(path)).close()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(VseamError, match="newer"):
        RunStore(str(path))


def test_foreign_database_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE photos (id INTEGER)")
    with pytest.raises(VseamError, match="not a vseam run registry"):
        RunStore(str(path))


def test_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "runs.db"
    with pytest.raises(VseamError) as err:
        RunStore(str(target))
    assert str(target) in str(err.value) and "--db" in str(err.value)


def test_missing_registry_not_created_for_queries(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "runs.db"
    with pytest.raises(VseamError, match="no run registry at"):
        RunStore(str(path), must_exist=True)
    assert not path.exists() and not path.parent.exists()


def test_parent_folders_created_and_url_and_memory(tmp_path: Path) -> None:
    nested = tmp_path / "results" / "runs.db"
    with RunStore(str(nested)) as s:
        _new_run(s)
    assert nested.is_file()
    with RunStore(f"sqlite:///{nested}") as s:
        assert len(s.list_runs()) == 1
    with RunStore(":memory:") as s:
        assert s.list_runs() == []


# --- opening a registry: timeout, driver, masked passwords, hints that match (issue 9) -----------

import socket  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from vseam_run.store import connect  # noqa: E402

PASSWORD = "s3cr3t-pw"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)  # kept open, never answered
            except (TimeoutError, OSError):
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for c in held:
        c.close()
    server.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_empty_db_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for empty in ("", "  "):
        with pytest.raises(VseamError, match="--db is empty"):
            RunStore(empty)
    assert list(tmp_path.iterdir()) == []


def test_hanging_server_times_out_with_a_clear_error(silent_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg")
    monkeypatch.setenv("VSEAM_DB_TIMEOUT", "1")
    t0 = time.monotonic()
    with pytest.raises(VseamError) as err:
        RunStore(f"postgresql+psycopg://vseam:{PASSWORD}@127.0.0.1:{silent_server}/runs")
    elapsed = time.monotonic() - t0
    assert elapsed < 8, elapsed  # bounded: the driver's 2 s minimum plus our grace, not forever
    message = str(err.value)
    assert "cannot connect to run registry" in message and "VSEAM_DB_TIMEOUT" in message
    assert PASSWORD not in message and "vseam:***@127.0.0.1" in message


def test_first_connect_watchdog_covers_drivers_without_a_timeout() -> None:
    """Whatever the driver does, a connection attempt that never returns is given up on."""
    release = threading.Event()

    class Stuck:
        def connect(self):
            release.wait(30)
            raise RuntimeError("released")

    t0 = time.monotonic()
    with pytest.raises(VseamError, match="no answer within 0.5 s"):
        connect.first_connect(Stuck(), "db://host/x", 0.5)  # type: ignore[arg-type]
    assert time.monotonic() - t0 < 5
    release.set()


def test_refused_connection_hint_and_masked_password(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("psycopg")
    monkeypatch.setenv("VSEAM_DB_TIMEOUT", "3")
    with pytest.raises(VseamError) as err:
        RunStore(f"postgresql+psycopg://vseam:{PASSWORD}@127.0.0.1:{_closed_port()}/runs")
    message = str(err.value)
    assert "cannot connect" in message and "server is running" in message
    assert PASSWORD not in message and "--db with a writable path" not in message


def test_missing_driver_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg → ImportError
    with pytest.raises(VseamError) as err:
        RunStore(f"postgresql+psycopg://vseam:{PASSWORD}@db.example/runs")
    message = str(err.value)
    assert 'pip install "vseam[postgres]"' in message and "driver is not installed" in message
    assert PASSWORD not in message
    # ... and that extra exists and pulls a psycopg driver.
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'^postgres = \["psycopg\[binary\]>=3\.1"\]$', pyproject, re.M)


def test_invalid_url_is_masked() -> None:
    with pytest.raises(VseamError) as err:
        RunStore(f"postgres ql://vseam:{PASSWORD}@host/db")
    assert "not a valid SQLAlchemy URL" in str(err.value) and PASSWORD not in str(err.value)


def test_bad_timeout_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VSEAM_DB_TIMEOUT", "soon")
    with pytest.raises(VseamError, match="VSEAM_DB_TIMEOUT='soon'"):
        RunStore(str(tmp_path / "runs.db"))


def test_not_a_registry_file_gets_its_own_hint(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are my notes, not a database " * 100)
    with pytest.raises(VseamError) as err:
        RunStore(str(path))
    assert "is not a usable run registry" in str(err.value) and "vseam registry file" in str(err.value)


@pytest.mark.parametrize(
    "driver_message, expected, hint",
    [
        ('FATAL: password authentication failed for user "vseam" (password s3cr3t-pw)', "permission denied", "user name and password"),
        ("permission denied for schema public", "permission denied", "may create tables"),
        ('connection to server at "db", port 5432 failed: Connection refused', "cannot connect", "server is running"),
        ('database "runs" does not exist', "cannot connect", "database name"),
        ("file is not a database", "not a usable run registry", "vseam registry file"),
    ],
)
def test_each_failure_gets_the_hint_that_fits(driver_message: str, expected: str, hint: str) -> None:
    from sqlalchemy.exc import OperationalError

    error = OperationalError("connect", {}, Exception(driver_message))
    message = str(connect.classify("postgresql://vseam:***@db/runs", error, is_sqlite=False, password=PASSWORD, timeout=10))
    assert expected in message and hint in message, message
    assert PASSWORD not in message


def test_every_password_in_a_message_is_masked() -> None:
    assert connect.mask(f"postgresql://u:{PASSWORD}@h/db failed") == "postgresql://u:***@h/db failed"
    assert connect.mask(f"auth failed for {PASSWORD}", PASSWORD) == "auth failed for ***"
