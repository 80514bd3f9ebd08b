"""Is an edit plan sensible? The edit-sense table of issue 24: per category, how many questions got
a plan and how many of the outcomes (plans and skips) are what a careful person would call sensible.

"Sensible" is written down per question, beforehand, as an expectation (see
scripts/gqa_heldback.py for the grammar): `skip:WORD` (no sensible edit, and the reason names
WORD), `edit:SOURCE`, `edit:SOURCE>A|B` (the target is A or B) or `edit:SOURCE>!A|B` (neither).
An object edit must also stay in the source's own category. The judge never consults the planner's
rules, only the words of the plan, so it can catch the planner being wrong.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping

from vseam_run.data.base import Question
from vseam_run.data.gqa import object_category
from vseam_run.edit.text import EditPlan, EditSkip, plan_edit


@dataclass(frozen=True)
class Verdict:
    qid: str
    category: str
    planned: bool
    sensible: bool
    outcome: str  # "dog → cat" or "skip: ..."
    expect: str


def judge(outcome: EditPlan | EditSkip, expect: str) -> bool:
    """Whether one outcome meets its written expectation."""
    kind, _, rest = expect.partition(":")
    if kind == "skip":
        return isinstance(outcome, EditSkip) and f"'{rest}'" in outcome.reason
    if kind != "edit" or not isinstance(outcome, EditPlan):
        return False
    source, _, targets = rest.partition(">")
    if source != "*" and outcome.source != source:
        return False
    if outcome.target == outcome.source:
        return False
    if outcome.level == "object":
        own = object_category(source)
        if own == "other" or object_category(outcome.target) != own:
            return False
    if targets.startswith("!"):
        return outcome.target not in targets[1:].split("|")
    return not targets or outcome.target in targets.split("|")


def verdicts(questions: Iterable[Question], expect: Mapping[str, str], **plan_kw) -> list[Verdict]:
    """One verdict per question that has an expectation (keyed by question id)."""
    out = []
    for q in questions:
        if q.qid not in expect:
            continue
        o = plan_edit(q, **plan_kw)
        text = o.text if isinstance(o, EditPlan) else f"skip: {o.reason}"
        out.append(Verdict(q.qid, q.category, isinstance(o, EditPlan), judge(o, expect[q.qid]), text, expect[q.qid]))
    return out


def sense_table(vs: Iterable[Verdict]) -> dict[str, dict[str, int]]:
    """category → {questions, planned, sensible}."""
    table: dict[str, dict[str, int]] = defaultdict(lambda: {"questions": 0, "planned": 0, "sensible": 0})
    for v in vs:
        row = table[v.category]
        row["questions"] += 1
        row["planned"] += v.planned
        row["sensible"] += v.sensible
    return dict(table)
