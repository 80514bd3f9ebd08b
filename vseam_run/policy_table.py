"""The policy comparison: recorded runs that differ in ``modulation.policy``, one table per dataset.

Built from what the runs recorded (metrics and documents), nothing recomputed: per run and per
evaluated dataset, the parameters the policy chose on val, the heads it changed, the held-out
gain (modulated − baseline accuracy on the test split, or on an ``evaluate.extra`` set) with its
paired 95% bootstrap interval and McNemar p, the matched random-head control (mean ± sd of the
gain over the draws), and — for the run's own dataset under ``evaluate.protocol: both`` — the
in-sample gain on the search split beside it. ``vseam compare --policies`` prints it.

A table groups the runs of one model on one dataset. Runs of one table that were scored on
different test questions are flagged (their gains are not on the same questions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from vseam_run.errors import VseamError

__all__ = ["PolicyRow", "PolicyTable", "policy_tables", "POLICY_ORDER"]

# The paper's policies first, then the field's rivals (issue 22).
POLICY_ORDER = ["paper", "linear", "topk", "learned", "ablate", "steer", "image_attention", "none"]
_NOT_CHOSEN = {"policy", "answer_match", "protocol", "kind"}
# What each policy settles on (or was fixed to); other scalar entries of its document are settings.
CHOSEN_KEYS = {"paper": ("k", "lambda"), "linear": ("lambda",), "topk": ("k", "alpha", "beta"), "learned": ("best_epoch",),
               "ablate": ("k", "mode"), "steer": ("heads", "k", "alpha"), "image_attention": ("heads", "from_layer", "alpha", "k")}


@dataclass
class Gain:
    """One set's baseline → modulated accuracy, as recorded under ``prefix``."""

    prefix: str
    n: int
    baseline: float
    modulated: float
    ci_low: float
    ci_high: float
    mcnemar_p: float
    control_mean: float | None
    control_sd: float | None
    control_draws: int

    @property
    def gain(self) -> float:
        return self.modulated - self.baseline

    @classmethod
    def of(cls, m: dict[str, float], prefix: str) -> "Gain | None":
        if f"{prefix}.accuracy.modulated" not in m:
            return None
        return cls(prefix, int(m[f"{prefix}.n"]), m[f"{prefix}.accuracy.baseline"], m[f"{prefix}.accuracy.modulated"],
                   m[f"{prefix}.accuracy.diff_ci_low"], m[f"{prefix}.accuracy.diff_ci_high"], m[f"{prefix}.mcnemar_p"],
                   m.get(f"{prefix}.control.gain_mean"), m.get(f"{prefix}.control.gain_sd"),
                   int(m.get(f"{prefix}.control.draws", 0)))

    def to_json(self) -> dict[str, Any]:
        return {"set": self.prefix, "n": self.n, "baseline": self.baseline, "modulated": self.modulated, "gain": self.gain,
                "ci_low": self.ci_low, "ci_high": self.ci_high, "mcnemar_p": self.mcnemar_p,
                "control_gain_mean": self.control_mean, "control_gain_sd": self.control_sd,
                "control_draws": self.control_draws}


@dataclass
class PolicyRow:
    run_id: str
    policy: str
    chosen: dict[str, Any]
    heads_changed: float | None
    held_out: Gain
    in_sample: Gain | None

    def to_json(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "policy": self.policy, "chosen": self.chosen, "heads_changed": self.heads_changed,
                "held_out": self.held_out.to_json(), "in_sample": self.in_sample.to_json() if self.in_sample else None}


@dataclass
class PolicyTable:
    model: str
    dataset: str
    rows: list[PolicyRow] = field(default_factory=list)
    same_questions: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "dataset": self.dataset, "same_questions": self.same_questions,
                "rows": [r.to_json() for r in self.rows]}


def _dataset_label(data: dict[str, Any]) -> str:
    label = str(data.get("source", "?"))
    if data.get("path"):
        label += f" {data['path']}"
    if data.get("level"):
        label += f" ({data['level']})"
    if data.get("limit"):
        label += f", limit {data['limit']}"
    return label


def chosen_params(doc: dict[str, Any], spec_modulation: dict[str, Any] | None) -> dict[str, Any]:
    """What the policy settled on: the modulation document's scalar entries (the describe() lists,
    head lists and vector norms, are the intervention, not its parameters), plus the spec's head
    choice (``heads: search / probe / all``), which the document's head list shadows; for a known
    policy only its own parameters (CHOSEN_KEYS), not its fixed settings."""
    out = {k: v for k, v in doc.items() if k not in _NOT_CHOSEN and isinstance(v, (int, float, str, bool))}
    heads = (spec_modulation or {}).get("heads")
    if isinstance(heads, str):
        out = {"heads": heads, **out}
    keys = CHOSEN_KEYS.get(str(doc.get("policy")))
    return out if keys is None else {k: out[k] for k in keys if k in out}


def policy_tables(store: Any, run_ids: list[str]) -> list[PolicyTable]:
    """One table per (model, dataset) over the runs: every run that recorded a modulation."""
    tables: dict[tuple[str, str], PolicyTable] = {}
    questions: dict[tuple[str, str], set[frozenset[str]]] = {}
    skipped = []
    for run_id in run_ids:
        rec = store.get_run(run_id)
        docs = store.documents(run_id)
        doc = docs.get("modulation")
        if not isinstance(doc, dict):
            skipped.append(run_id)
            continue
        spec = yaml.safe_load(rec.spec_yaml) or {}
        policy = str(doc.get("policy", (spec.get("modulation") or {}).get("policy", "?")))
        chosen = chosen_params(doc, spec.get("modulation"))
        m = rec.metrics
        sets = [("eval.test", _dataset_label(spec.get("data") or {}), "eval.in_sample")]
        for extra in (spec.get("evaluate") or {}).get("extra") or []:
            sets.append((f"eval.{extra['name']}", f"{extra['name']}: {_dataset_label(extra)}", None))
        for prefix, label, in_sample in sets:
            held = Gain.of(m, prefix)
            if held is None:
                continue
            key = (str(rec.model_name), label)
            table = tables.setdefault(key, PolicyTable(*key))
            table.rows.append(PolicyRow(run_id, policy, chosen, m.get("modulation.heads_changed"), held,
                                        Gain.of(m, in_sample) if in_sample else None))
            qids = frozenset(str(r["qid"]) for r in store.question_results(run_id, f"{prefix}.baseline"))
            questions.setdefault(key, set()).add(qids)
    if not tables:
        raise VseamError("vseam compare --policies: none of the runs recorded a modulation and its evaluation"
                         + (f" ({', '.join(skipped)} {'has' if len(skipped) == 1 else 'have'} none)" if skipped else ""),
                         hint="run the spec with --set modulation.policy=... (vseam sweep SPEC --set modulation.policy=paper,linear,...)")
    rank = {p: i for i, p in enumerate(POLICY_ORDER)}
    for key, table in tables.items():
        table.rows.sort(key=lambda r: (rank.get(r.policy, len(rank)), r.policy, r.run_id))
        table.same_questions = len(questions[key]) == 1
    return list(tables.values())


def _num(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def acc_text(g: Gain | None) -> str:
    return "–" if g is None else f"{g.baseline:.3f} → {g.modulated:.3f}"


def gain_text(g: Gain | None) -> str:
    return "–" if g is None else f"{g.gain:+.3f} [{g.ci_low:+.3f}, {g.ci_high:+.3f}]"


def p_text(g: Gain | None) -> str:
    return "–" if g is None else f"{g.mcnemar_p:.2g}"


def control_text(g: Gain | None) -> str:
    if g is None:
        return "–"
    if g.control_mean is None:
        return "– (no head changed)"
    return f"{g.control_mean:+.3f} ± {_num(g.control_sd)} ({g.control_draws})"


def chosen_text(chosen: dict[str, Any]) -> str:
    names = {"lambda": "λ", "alpha": "α", "beta": "β"}
    return ", ".join(f"{names.get(k, k)} = {v:g}" if isinstance(v, float) else f"{names.get(k, k)} = {v}"
                     for k, v in chosen.items()) or "–"


HEADER = ["policy", "chosen on val", "heads changed", "held-out accuracy", "gain [95% CI]", "McNemar p",
          "random-head control (draws)", "in-sample accuracy", "in-sample gain [95% CI]", "p", "in-sample control", "run"]


def row_cells(r: PolicyRow) -> list[str]:
    heads = "–" if r.heads_changed is None else f"{r.heads_changed:g}"
    return [r.policy, chosen_text(r.chosen), heads, acc_text(r.held_out), gain_text(r.held_out), p_text(r.held_out),
            control_text(r.held_out), acc_text(r.in_sample), gain_text(r.in_sample), p_text(r.in_sample),
            control_text(r.in_sample), r.run_id]


def title(t: PolicyTable) -> str:
    n = sorted({r.held_out.n for r in t.rows})
    note = "" if t.same_questions else " — NOT the same test questions in every run"
    return f"{t.model} on {t.dataset} (n = {', '.join(map(str, n))}){note}"


def markdown(tables: list[PolicyTable]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    parts = []
    for t in tables:
        parts += [f"### {title(t)}", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
        parts += ["| " + " | ".join(esc(c) for c in row_cells(r)) + " |" for r in t.rows]
        parts.append("")
    return "\n".join(parts)
