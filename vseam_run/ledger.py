"""The stage ledger: which stages of a run have finished, from what, and what they left.

This is how `vseam run --resume` reproduces an uninterrupted run exactly. A stage calls
`StageLedger.run` with its name, the fingerprint of its inputs and a `compute` function:

    fp = fingerprint(model=model_fp, questions=items_part(items), batch_size=spec.batch_size)
    rows = ledger.run("baseline", fp, compute, save=lambda rows: rows, load=lambda saved: saved)

* First time: `compute()` runs and records its own results (metrics, per-question rows,
  documents, artifacts); then `save(result)` — whatever later stages need from it, JSON-able
  — is stored together with the fingerprint. That entry marks the stage finished.
* On resume, when the stored fingerprint equals the new one: `load(saved)` is returned and
  `compute` is not called, so nothing is recomputed and no stored row is written again.
* Stored with another fingerprint (the model's weights, the data, a setting changed since):
  a `VseamError` names the stage and the changed parts; nothing is mixed.
* Interrupted inside `compute`: the stage is not marked, the next resume runs it again, and
  it overwrites only what that unfinished stage had written.

A long stage saves finer units (a search layer) through `ledger.checkpointer(name, fp)`,
whose entries are filed under the stage's fingerprint, so only matching units are reused;
once the stage is finished its outputs hold everything, and those units are dropped.
Entries live in the registry's checkpoints table (stage "stage", key = stage name), not
in its documents, so `vseam show --json` stays readable.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from vseam_run.errors import VseamError
from vseam_run.fingerprint import Fingerprint
from vseam_run.store import RunStore

T = TypeVar("T")

LEDGER_STAGE = "stage"

# What a part name means, for the refusal message; parts not listed are shown by name.
_PART_WORDS = {
    "model": "the model (registry entry, weights, device type, dtype or torch/transformers version)",
    "questions": "the questions (ids, text, answers, image paths or splits)",
}


def _identity(x: Any) -> Any:
    return x


class StageCheckpointer:
    """Finer units of one stage (the search's Checkpointer), filed under the stage's fingerprint."""

    def __init__(self, store: RunStore, run_id: str, stage: str) -> None:
        self.store, self.run_id, self.stage = store, run_id, stage

    def load(self) -> dict[str, Any]:
        return self.store.load_checkpoints(self.run_id, self.stage)

    def save(self, key: str, payload: Any) -> None:
        self.store.save_checkpoint(self.run_id, self.stage, key, payload)


class StageLedger:
    """Finished stages of one run; see the module docstring for the protocol."""

    def __init__(self, store: RunStore, run_id: str, log: Callable[[Any], None] = lambda _: None) -> None:
        self.store, self.run_id, self.log = store, run_id, log
        self._done = store.load_checkpoints(run_id, LEDGER_STAGE)

    def finished(self) -> list[str]:
        """Names of the finished stages, in the order they finished."""
        return list(self._done)

    def lookup(self, name: str, fp: Fingerprint) -> tuple[bool, Any]:
        """(True, saved outputs) for a stage finished with this fingerprint, (False, None) for one
        not finished; a stage finished with another fingerprint is refused."""
        entry = self._done.get(name)
        if entry is None:
            return False, None
        if entry.get("fingerprint") != fp.value:
            changed = fp.changed(entry.get("parts", {}))
            words = "; ".join(_PART_WORDS.get(p, p) for p in changed if p != "files")
            if "files" in changed:
                files = fp.changed_files(entry.get("files", {})) if entry.get("files") else []
                shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
                words = "; ".join(w for w in (words, f"the content of input file(s) {shown}" if files
                                              else "the input files (a result stored before files were fingerprinted)") if w)
            words = words or "its inputs"
            raise VseamError(
                f"run {self.run_id}: stage '{name}' finished earlier from other inputs; changed since: {words}",
                hint="resuming would mix results of different inputs: start a new run (vseam run SPEC)",
            )
        return True, entry.get("outputs")

    def run(
        self,
        name: str,
        fp: Fingerprint,
        compute: Callable[[], T],
        *,
        save: Callable[[T], Any] = _identity,
        load: Callable[[Any], T] = _identity,
    ) -> T:
        """The stage's result: stored outputs when it finished before with this fingerprint,
        else `compute()` (then recorded as finished)."""
        done, saved = self.lookup(name, fp)
        if done:
            self.log(f"· {name}: finished earlier; its stored results are used")
            return load(saved)
        result = compute()
        self.mark(name, fp, save(result))
        return result

    def mark(self, name: str, fp: Fingerprint, outputs: Any = None) -> None:
        """Record stage `name` as finished from `fp`, with the outputs later stages need."""
        entry = {"fingerprint": fp.value, "parts": fp.parts, "outputs": outputs}
        if fp.files:
            entry["files"] = fp.files
        self.store.save_checkpoint(self.run_id, LEDGER_STAGE, name, entry)
        self._done[name] = entry
        self.store.delete_checkpoints(self.run_id, self._units(name, fp))

    def checkpointer(self, name: str, fp: Fingerprint) -> StageCheckpointer:
        """Where stage `name` saves finer units; units saved under another fingerprint are not seen."""
        return StageCheckpointer(self.store, self.run_id, self._units(name, fp))

    @staticmethod
    def _units(name: str, fp: Fingerprint) -> str:
        return f"{name}@{fp.value}"
