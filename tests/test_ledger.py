"""The stage ledger and fingerprints, without a model: computed once, reused only when the
inputs match, a mismatch refused by name, finer checkpoints filed by fingerprint."""

from __future__ import annotations

from pathlib import Path

import pytest

from vseam_run.errors import VseamError
from vseam_run.fingerprint import digest, fingerprint, spec_changes, weights_stamp
from vseam_run.ledger import StageLedger
from vseam_run.spec import Spec
from vseam_run.store import RunStore


@pytest.fixture
def store(tmp_path: Path):
    with RunStore(tmp_path / "runs.db") as s:
        yield s


def test_digest_is_canonical_and_sensitive():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2}) and digest([1, 2]) != digest([2, 1])
    fp = fingerprint(model={"dtype": "float32"}, questions=[["q1", "x"]])
    assert fp.changed(fingerprint(model={"dtype": "float32"}, questions=[["q2", "x"]]).parts) == ["questions"]
    assert fingerprint(up=fp).parts["up"] != fingerprint(up=fingerprint(model={})).parts["up"]


def test_stage_runs_once_and_is_reused(store):
    run_id = store.create_run(name="x", spec_yaml="name: x\n", spec_hash="h")
    calls: list[int] = []

    def compute() -> list[float]:
        calls.append(1)
        return [0.1, 0.2]

    fp = fingerprint(model="m", questions=["q1", "q2"])
    assert StageLedger(store, run_id).run("baseline", fp, compute) == [0.1, 0.2]
    # A new ledger (a resumed process) takes the stored outputs and computes nothing.
    again = StageLedger(store, run_id)
    assert again.finished() == ["baseline"]
    assert again.run("baseline", fp, compute, load=lambda saved: tuple(saved)) == (0.1, 0.2)
    assert len(calls) == 1
    with pytest.raises(VseamError) as err:
        again.run("baseline", fingerprint(model="other", questions=["q1", "q2"]), compute)
    message = str(err.value)
    assert "stage 'baseline'" in message and "the model" in message and "questions" not in message
    assert "new run" in message and len(calls) == 1


def test_interrupted_compute_is_not_marked(store):
    run_id = store.create_run(name="x", spec_yaml="name: x\n", spec_hash="h")

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StageLedger(store, run_id).run("search", fingerprint(a=1), interrupted)
    assert StageLedger(store, run_id).finished() == []


def test_checkpoints_are_filed_by_fingerprint(store):
    run_id = store.create_run(name="x", spec_yaml="name: x\n", spec_hash="h")
    ledger = StageLedger(store, run_id)
    ledger.checkpointer("search", fingerprint(ablation="mean")).save("exact:0", [1.0])
    assert ledger.checkpointer("search", fingerprint(ablation="mean")).load() == {"exact:0": [1.0]}
    assert ledger.checkpointer("search", fingerprint(ablation="zero")).load() == {}
    # Finished, the stage's outputs hold everything: its units are dropped.
    ledger.mark("search", fingerprint(ablation="mean"), {"effects": [1.0]})
    assert ledger.checkpointer("search", fingerprint(ablation="mean")).load() == {}


def test_spec_changes_name_fields():
    a = Spec.model_validate({"name": "a", "model": "m", "data": {"source": "toyworld"}, "search": {}})
    b = Spec.model_validate({"name": "a", "model": "m", "data": {"source": "toyworld", "toyworld": {"images": 120}},
                             "search": {"ablation": "zero"}, "batch_size": 2})
    assert spec_changes(a, a) == []
    assert spec_changes(a, b) == ["batch_size", "data.toyworld.images", "search.ablation"]


def test_weights_stamp_sees_a_changed_file(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 100)
    before = weights_stamp(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 99 + b"\1")
    after = weights_stamp(tmp_path)
    assert before.keys() == after.keys() == {"config.json", "model.safetensors"}
    assert before["config.json"] == after["config.json"] and before["model.safetensors"] != after["model.safetensors"]
