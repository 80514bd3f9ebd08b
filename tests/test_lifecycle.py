"""An honest run lifecycle: signals, heartbeats, lost runs, live runs, schema migration and
several processes writing one registry."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from vseam_run import pipeline
from vseam_run.cli.main import cli
from vseam_run.store import SCHEMA_VERSION, RunStore
from vseam_run.store.records import STALE_AFTER_S

BASELINE_SPEC = """\
name: {name}
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 8}}, limit: 8}}
"""
SEARCH_SPEC = BASELINE_SPEC + "search: {{strategy: exact, scoring: signed}}\n"


def call(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def new_run(store: RunStore, spec_yaml: str = "name: x\n", **kw) -> str:
    return store.create_run(name="x", spec_yaml=spec_yaml, spec_hash="h", **kw)


def shown(capsys, db: Path, run_id: str) -> tuple[dict, dict]:
    """(`runs --json` entry, `show --json`) of a run."""
    rc, out, err = call(capsys, "runs", "--db", db, "--json")
    assert rc == 0, err
    (item,) = [r for r in json.loads(out) if r["run_id"] == run_id]
    rc, out, err = call(capsys, "show", run_id, "--db", db, "--json")
    assert rc == 0, err
    return item, json.loads(out)


# --- signals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_signal_ends_a_run_like_ctrl_c(capsys, tmp_path, monkeypatch, tiny_llava_entry, sig, code):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(SEARCH_SPEC.format(name="sig", model=tiny_llava_entry))

    def signalled_search(self, *args):
        os.kill(os.getpid(), sig)  # what a scheduler does at the time limit
        time.sleep(30)  # the handler interrupts this at once
        raise AssertionError("the signal did not interrupt the run")

    monkeypatch.setattr(pipeline._Stages, "_search", signalled_search)
    before = signal.getsignal(sig)
    rc, out, err = call(capsys, "run", "spec.yaml", "--db", "runs.db")
    assert rc == code, out + err
    assert "Traceback" not in out + err
    (line,) = [l for l in out.splitlines() if "--resume" in l]
    assert sig.name in line and "vseam run --resume" in line
    assert signal.getsignal(sig) == before, "the run's signal handler must be removed when it ends"
    with RunStore(tmp_path / "runs.db") as store:
        (run,) = store.list_runs()
    assert run.status == "interrupted" and run.error_message == f"interrupted ({sig.name})"
    assert run.finished_at is not None and "baseline.accuracy" in run.metrics


def test_a_signal_while_a_failure_is_recorded_does_not_leave_the_run_running(capsys, tmp_path, monkeypatch, tiny_llava_entry):
    """Under torchrun a rank whose peer died sees its collective fail and, a moment later, gets
    torchrun's SIGTERM: that signal used to land inside the 'failed' record and leave the run
    'running' (a flaky test_dist failure). Once the outcome is being recorded, a signal waits."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(SEARCH_SPEC.format(name="sig", model=tiny_llava_entry))

    def failing_search(self, *args):
        raise RuntimeError("Connection closed by peer")  # what gloo raises when a rank dies

    real_set_status = RunStore.set_status

    def set_status_under_sigterm(self, run_id, status, **kw):
        if status == "failed":
            os.kill(os.getpid(), signal.SIGTERM)  # delivered at the next bytecode, mid-record
        return real_set_status(self, run_id, status, **kw)

    monkeypatch.setattr(pipeline._Stages, "_search", failing_search)
    monkeypatch.setattr(RunStore, "set_status", set_status_under_sigterm)
    with pytest.raises(RuntimeError, match="Connection closed by peer"):  # not a SIGTERM's RunInterrupted
        call(capsys, "run", "spec.yaml", "--db", "runs.db")
    with RunStore(tmp_path / "runs.db") as store:
        (run,) = store.list_runs()
    assert run.status == "failed" and "Connection closed by peer" in run.error_message


def test_signals_interrupt_until_settled():
    from vseam_run import lifecycle

    with lifecycle.signals_interrupt() as signals:
        with pytest.raises(lifecycle.RunInterrupted):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    with lifecycle.signals_interrupt() as signals:
        signals.settle()
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the outcome is being recorded
        time.sleep(0.05)


SIGTERM_SCRIPT = """
import sys, time
from pathlib import Path
from vseam_run import pipeline
from vseam_run.cli.main import main

def stuck_search(self, *args):
    Path("searching").touch()  # tell the test the run is in its longest stage
    time.sleep(120)

pipeline._Stages._search = stuck_search
sys.argv = ["vseam", "run", "spec.yaml", "--db", "runs.db"]
main()
"""


def test_sigterm_to_a_real_process(tmp_path, tiny_llava_entry):
    """The process a scheduler stops: exit 143, status interrupted, one line saying how to resume."""
    (tmp_path / "spec.yaml").write_text(SEARCH_SPEC.format(name="term", model=tiny_llava_entry))
    # This checkout's vseam_run, whatever an installed copy elsewhere says.
    root = str(Path(pipeline.__file__).resolve().parents[1])
    env = {**os.environ, "VSEAM_QUIET": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "searching").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never reached its search"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out + err
    assert "Traceback" not in out + err
    assert len([l for l in out.splitlines() if "vseam run --resume" in l]) == 1, out
    with RunStore(tmp_path / "runs.db") as store:
        (run,) = store.list_runs()
    assert run.status == "interrupted" and "SIGTERM" in run.error_message
    assert run.pid == proc.pid and run.shown_status() == "interrupted"


# --- heartbeat, lost runs, live runs -------------------------------------------------------------


def test_heartbeat_is_refreshed_while_a_stage_works(capsys, tmp_path, monkeypatch, tiny_llava_entry):
    monkeypatch.chdir(tmp_path)
    seen: list[datetime] = []

    def slow_baseline(self, items, untokenizable):
        rec = self.store.get_run(self.run_id)
        seen.append(rec.heartbeat_at)
        time.sleep(0.6)  # a long stage that reports nothing
        seen.append(self.store.get_run(self.run_id).heartbeat_at)
        return []

    monkeypatch.setattr(pipeline._Stages, "_baseline", slow_baseline)
    spec = pipeline.validate_stored_spec(BASELINE_SPEC.format(name="beat", model=tiny_llava_entry), "test")
    with RunStore(tmp_path / "runs.db") as store:
        out = pipeline.run(spec, store, log=lambda _: None, heartbeat_s=0.1)
        rec = store.get_run(out.run_id)
    assert seen[0] is not None and seen[1] > seen[0]
    assert rec.host and rec.pid == os.getpid() and rec.status == "succeeded"


def test_stale_heartbeat_is_shown_as_lost(capsys, tmp_path):
    db = tmp_path / "runs.db"
    with RunStore(db) as store:
        alive = new_run(store)
        stale = new_run(store)
        store.heartbeat(stale, at=datetime.now(timezone.utc) - timedelta(seconds=STALE_AFTER_S + 60))
    item, show = shown(capsys, db, alive)
    assert item["status"] == show["status"] == "running"
    item, show = shown(capsys, db, stale)
    assert item["status"] == show["status"] == "lost" and show["stored_status"] == "running"
    rc, out, _ = call(capsys, "show", stale, "--db", db)
    assert rc == 0 and "lost" in out and f"vseam run --resume {stale}" in out
    rc, out, _ = call(capsys, "runs", "--db", db)
    assert rc == 0 and "lost" in out


def test_dead_process_on_this_host_is_lost_at_once(capsys, tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    db = tmp_path / "runs.db"
    with RunStore(db) as store:
        run_id = new_run(store, pid=int(gone.stdout))  # fresh heartbeat, but the process has exited
    item, show = shown(capsys, db, run_id)
    assert item["status"] == show["status"] == "lost"


def test_live_run_is_not_resumed_without_force(capsys, tmp_path, monkeypatch, tiny_llava_entry):
    monkeypatch.chdir(tmp_path)
    spec = pipeline.validate_stored_spec(BASELINE_SPEC.format(name="live", model=tiny_llava_entry), "test")
    db = tmp_path / "runs.db"
    with RunStore(db) as store:
        run_id = new_run(store, spec.to_yaml())  # this process, fresh heartbeat: alive
    rc, out, err = call(capsys, "run", "--resume", run_id, "--db", db)
    assert rc == 2 and "still running" in err and "--force" in err and "Traceback" not in err, err
    with RunStore(db) as store:
        assert store.get_run(run_id).resume_count == 0
    rc, out, err = call(capsys, "run", "--resume", run_id, "--db", db, "--force")
    assert rc == 0, out + err
    # A lost run needs no --force.
    with RunStore(db) as store:
        lost = new_run(store, spec.to_yaml())
        store.heartbeat(lost, at=datetime.now(timezone.utc) - timedelta(hours=1))
    rc, out, err = call(capsys, "run", "--resume", lost, "--db", db)
    assert rc == 0, out + err


# --- the registry ----------------------------------------------------------------------------------


def test_schema_1_registry_is_migrated(tmp_path, capsys):
    """A runs.db written before host / pid / heartbeat existed still opens, and keeps its runs."""
    db = tmp_path / "runs.db"
    with RunStore(db) as store:
        old = new_run(store)
        store.log_metrics(old, {"baseline.accuracy": 0.5})
    with sqlite3.connect(db) as conn:  # turn it into what schema 1 wrote
        for column in ("host", "pid", "heartbeat_at"):
            conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        conn.execute("UPDATE runs SET created_at = '2025-01-01 00:00:00.000000'")
    with RunStore(db) as store:
        rec = store.get_run(old)
        assert (rec.host, rec.pid, rec.heartbeat_at, rec.metrics) == (None, None, None, {"baseline.accuracy": 0.5})
        assert rec.shown_status() == "lost"  # running since 2025, with no heartbeat
        store.heartbeat(old)
        assert store.get_run(old).shown_status() == "running"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
        assert {"host", "pid", "heartbeat_at"} <= {row[1] for row in conn.execute("PRAGMA table_info(runs)")}


RUNS_PER_WORKER = 4
METRICS_PER_RUN = 25


def _writer(db: str, worker: int, barrier, errors=None) -> None:
    try:
        _write(db, worker, barrier)
    except BaseException:
        if errors is not None:
            import traceback

            errors.put(f"worker {worker}: {traceback.format_exc()}")
        raise


def _write(db: str, worker: int, barrier) -> None:
    barrier.wait()  # all four open the (new) file and write at the same moment
    with RunStore(db) as store:
        for r in range(RUNS_PER_WORKER):
            run_id = store.create_run(name=f"w{worker}-{r}", spec_yaml="name: x\n", spec_hash="h")
            for m in range(METRICS_PER_RUN):
                store.log_metrics(run_id, {f"m{m}": worker * 1000 + r * 100 + m})
                store.heartbeat(run_id)
            store.log_question_results(run_id, "baseline", [{"qid": f"q{i}", "correct": i % 2 == 0} for i in range(10)])
            store.set_status(run_id, "succeeded")


def test_four_processes_write_one_sqlite_file(tmp_path):
    db = str(tmp_path / "shared" / "runs.db")
    ctx = multiprocessing.get_context("fork")
    barrier, errors = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(db, w, barrier, errors)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    problems = [errors.get(timeout=5) for _ in range(sum(p.exitcode != 0 for p in procs))]
    assert [p.exitcode for p in procs] == [0, 0, 0, 0], "\n".join(problems)
    with RunStore(db) as store:
        runs = store.list_runs()
        assert sorted(r.name for r in runs) == sorted(f"w{w}-{r}" for w in range(4) for r in range(RUNS_PER_WORKER))
        for run in runs:
            w, r = (int(x) for x in run.name[1:].split("-"))
            assert run.status == "succeeded"
            assert run.metrics == {f"m{m}": float(w * 1000 + r * 100 + m) for m in range(METRICS_PER_RUN)}
            assert store.question_stages(run.id)["baseline"] == (10, 5)
