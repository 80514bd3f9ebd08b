"""`vseam sweep --reuse-search`: a point takes an earlier run's head search only when every input
matches (model and weights, data, edits, search settings, seed, search code); it then records
exactly what a run that searched itself records, plus where its search came from."""

from __future__ import annotations

import pytest

from tests.test_resume import Snapshot, run_cli
from vseam_run.ledger import StageCheckpointer
from vseam_run.stages import search_reuse
from vseam_run.store import RunStore

SPEC = """\
name: reuse
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 8}}, limit: 16}}
edit: {{recipe: procedural}}
search: {{strategy: exact, scoring: signed}}
modulation: {{policy: linear, lam: 4.0}}
evaluate: {{bootstrap: 100, control_draws: 2}}
"""
SEARCH_DOCS = ("heads", "search.effects", "heads.uncertainty")


def _without(snap: Snapshot, *docs: str) -> Snapshot:
    return Snapshot(snap.status, snap.spec_yaml, snap.metrics, {k: v for k, v in snap.documents.items() if k not in docs},
                    snap.rows, snap.artifacts)


@pytest.fixture
def folder(tmp_path, tiny_llava_entry, monkeypatch):
    (tmp_path / "spec.yaml").write_text(SPEC.format(model=tiny_llava_entry))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _search_saves(monkeypatch) -> list[str]:
    saved: list[str] = []
    real = StageCheckpointer.save
    monkeypatch.setattr(StageCheckpointer, "save", lambda self, k, p: (saved.append(k), real(self, k, p)))
    return saved


def test_a_sweep_reuses_a_matching_search_and_records_the_same(folder, monkeypatch):
    saved = _search_saves(monkeypatch)
    rc, out = run_cli("sweep", "spec.yaml", "--set", "modulation.lam=0.0,4.0", "--reuse-search", "--db", "sweep.db")
    assert rc == 0, out
    assert saved == ["exact:0", "exact:1", "exact:2"]  # searched once, by the first point only
    with RunStore(folder / "sweep.db") as store:
        second, first = store.list_runs()  # newest first
        assert search_reuse.DOCUMENT not in store.documents(first.id)
        assert store.documents(second.id)[search_reuse.DOCUMENT]["run_id"] == first.id
        for doc in SEARCH_DOCS:
            assert store.documents(second.id)[doc] == store.documents(first.id)[doc]

    # The reusing point records what the same point records when it searches itself.
    rc, out = run_cli("run", "spec.yaml", "--set", "modulation.lam=4.0", "--db", "alone.db")
    assert rc == 0, out
    with RunStore(folder / "alone.db") as store:
        (alone,) = store.list_runs()
    reused, fresh = Snapshot.of(folder / "sweep.db", second.id), Snapshot.of(folder / "alone.db", alone.id)
    assert _without(reused, search_reuse.DOCUMENT) == fresh
    assert fresh.metrics["modulation.heads_changed"] > 0


@pytest.mark.parametrize("change", ["seed", "search", "code"])
def test_no_reuse_when_an_input_differs(folder, monkeypatch, change):
    rc, out = run_cli("sweep", "spec.yaml", "--set", "modulation.lam=4.0", "--reuse-search", "--db", "r.db")
    assert rc == 0, out
    saved = _search_saves(monkeypatch)
    sets = {"seed": ["--set", "seed=1"], "search": ["--set", "search.ablation=zero"], "code": []}[change]
    if change == "code":  # the search's code changed since the first run
        real = search_reuse.code_version
        monkeypatch.setattr(search_reuse, "code_version", lambda: real() + "x")
    rc, out = run_cli("sweep", "spec.yaml", "--set", "modulation.lam=0.0", *sets, "--reuse-search", "--db", "r.db")
    assert rc == 0, out
    assert saved == ["exact:0", "exact:1", "exact:2"]  # searched again
    with RunStore(folder / "r.db") as store:
        newest = store.list_runs()[0]
        assert search_reuse.DOCUMENT not in store.documents(newest.id)
