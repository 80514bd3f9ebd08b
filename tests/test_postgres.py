"""The run registry on a real PostgreSQL server (the one `.ci/run` starts; see .ci/postgres.sh).

VSEAM_TEST_PG_URL names a server database we may create databases beside; each test gets a
fresh, empty database of its own. Without the variable these tests are skipped — except in CI
(CI=true), where a missing server is a failure, so the PostgreSQL path cannot silently go untested.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import secrets

import pytest
from sqlalchemy.engine import make_url

from vseam_run.store import RunStore

PG_URL = os.environ.get("VSEAM_TEST_PG_URL", "")


@pytest.fixture
def pg_url() -> str:
    """The URL of a new empty database on the test server (dropped afterwards)."""
    if not PG_URL:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but VSEAM_TEST_PG_URL is unset: .ci/run starts the PostgreSQL test server")
        pytest.skip("VSEAM_TEST_PG_URL is unset (.ci/run starts a PostgreSQL server and sets it)")
    import psycopg

    url = make_url(PG_URL)
    name = f"vseam_t_{secrets.token_hex(4)}"
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_registry_round_trip(pg_url, tmp_path):
    """Runs, metrics, per-question rows, documents, checkpoints and artifacts go in and come back."""
    artifact = tmp_path / "heat.png"
    artifact.write_bytes(b"not really a png")
    with RunStore(pg_url) as store:
        run_id = store.create_run(name="pg", spec_yaml="name: pg\n", spec_hash="h1", seed=3, versions={"torch": "x"})
        store.log_metrics(run_id, {"baseline.accuracy": 0.25, "search.questions": 7})
        store.log_metrics(run_id, {"baseline.accuracy": 0.5})  # a metric written again is replaced
        store.log_question_results(run_id, "baseline", [
            {"qid": "q1", "category": "color", "gold": "red", "pred": "red", "correct": True, "gold_prob": 0.75},
            {"qid": "q2", "category": "shape", "gold": "cube", "pred": "ball", "correct": False, "gold_prob": 0.125},
        ])
        store.put_document(run_id, "heads", {"top": [[1, 2], [0, 3]], "nan": float("nan")})
        store.save_checkpoint(run_id, "search", "exact:0", {"effects": [[0.5, -0.25]]})
        store.save_checkpoint(run_id, "search", "exact:1", {"effects": [[1.0]]})
        store.add_artifact(run_id, "heatmap.signed", artifact)
        store.set_status(run_id, "succeeded")
    with RunStore(pg_url) as store:  # a second connection sees everything committed
        rec = store.get_run(run_id)
        assert rec.status == "succeeded" and rec.seed == 3
        assert rec.metrics == {"baseline.accuracy": 0.5, "search.questions": 7}
        rows = store.question_results(run_id, "baseline")
        assert [(r["qid"], r["correct"], r["gold_prob"]) for r in rows] == [("q1", True, 0.75), ("q2", False, 0.125)]
        heads = store.get_document(run_id, "heads")
        assert heads["top"] == [[1, 2], [0, 3]] and math.isnan(heads["nan"])
        assert store.load_checkpoints(run_id, "search") == {"exact:0": {"effects": [[0.5, -0.25]]}, "exact:1": {"effects": [[1.0]]}}
        assert store.delete_checkpoints(run_id, "search") == 2 and store.load_checkpoints(run_id, "search") == {}
        assert [a.kind for a in rec.artifacts] == ["heatmap.signed"]
        assert store.resolve(run_id[:17]) == run_id  # a unique prefix, through LIKE on the server


def _write_runs(url: str, worker: int, n: int, queue) -> None:
    """One process: opens the (maybe still empty) database and records `n` runs."""
    try:
        with RunStore(url) as store:
            for i in range(n):
                run_id = store.create_run(name=f"w{worker}", spec_yaml="name: c\n", spec_hash=f"h{worker}")
                store.log_metrics(run_id, {"worker": worker, "i": i})
                store.log_question_results(run_id, "baseline", [
                    {"qid": f"q{j}", "gold": "a", "pred": "a", "correct": True, "gold_prob": j / 10} for j in range(5)])
                store.put_document(run_id, "who", {"worker": worker, "i": i})
                store.save_checkpoint(run_id, "search", "exact:0", {"worker": worker})
                store.set_status(run_id, "succeeded")
        queue.put((worker, None))
    except BaseException as e:  # reported to the test, which fails with it
        queue.put((worker, f"{type(e).__name__}: {e}"))


def test_processes_write_runs_concurrently(pg_url):
    """Four processes open an empty database at once (creating its tables under a lock) and
    write runs side by side; every run is complete and belongs to its writer."""
    workers, per_worker = 4, 5
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_write_runs, args=(pg_url, w, per_worker, queue)) for w in range(workers)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(30)
    assert results == {w: None for w in range(workers)}
    with RunStore(pg_url) as store:
        runs = store.list_runs()
        assert len(runs) == workers * per_worker and len({r.id for r in runs}) == len(runs)
        seen = set()
        for rec in runs:
            worker = int(rec.metrics["worker"])
            assert rec.status == "succeeded" and rec.name == f"w{worker}"
            assert store.get_document(rec.id, "who") == {"worker": worker, "i": rec.metrics["i"]}
            assert len(store.question_results(rec.id, "baseline")) == 5
            assert store.load_checkpoints(rec.id, "search") == {"exact:0": {"worker": worker}}
            seen.add((worker, rec.metrics["i"]))
        assert seen == {(w, i) for w in range(workers) for i in range(per_worker)}


SPEC = """\
name: pg-run
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 6}}, limit: 12}}
search: {{strategy: exact, scoring: signed}}
modulation: {{policy: linear, lam: 1.0}}
evaluate: {{bootstrap: 100}}
"""


def test_full_run_on_postgres_equals_sqlite(pg_url, tmp_path, tiny_llava_entry, monkeypatch):
    """`vseam run --db postgresql+psycopg://...` records what the same run records in SQLite."""
    from test_resume import Snapshot, run_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(SPEC.format(model=tiny_llava_entry))
    snaps = []
    for db in (pg_url, str(tmp_path / "runs.db")):
        rc, out = run_cli("run", "spec.yaml", "--db", db)
        assert rc == 0, out
        with RunStore(db) as store:
            (rec,) = store.list_runs()
        snaps.append(Snapshot.of(db, rec.id))
    pg, lite = snaps
    assert pg.status == "succeeded" and {"baseline", "eval.test.modulated"} <= set(pg.rows)
    assert "heads" in pg.documents and pg.metrics["search.questions"] > 0
    # Artifacts live under the run's own folder, so their bytes (run id in titles) differ by run.
    assert pg.metrics == lite.metrics and pg.rows.keys() == lite.rows.keys() and set(pg.artifacts) == set(lite.artifacts)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("id", "run_id")} for r in rows]  # noqa: E731
    assert all(strip(pg.rows[s]) == strip(lite.rows[s]) for s in pg.rows)
    assert pg.documents == lite.documents
