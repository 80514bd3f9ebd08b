"""Generated answers scored by each benchmark's own rule (``evaluate.answer_match: generate``).

vseam's probe reads the gold answer's first token at the last position; the field instead
generates an answer greedily and judges the text. These are those judges, written from the
benchmarks' own descriptions so that a vseam number can be put beside a published one:

* ``gqa`` — lmms-eval's GQA task: exact match with ``ignore_case`` and ``ignore_punctuation``
  (the generated text stripped, lower-cased, ASCII punctuation removed, then compared with the
  gold answer treated the same way). The toy world is exported in GQA's format and uses it too.
* ``pope`` — two parsers, both reported:
    - ``llava``: LLaVA's ``eval_pope.py``: keep the text before the first ``.``, drop commas,
      split on spaces; ``No``, ``no`` or ``not`` among the words → no, anything else → yes
      (so an empty answer counts as yes);
    - ``strict``: lmms-eval's POPE task: ``pred.lower().strip()`` must equal ``yes`` / ``no``;
      anything else is neither (wrong, and a missed yes).
  Each with accuracy, precision, recall, F1 (positive class yes) and the *predicted* yes-ratio.
  lmms-eval's own aggregation differs in two places, and both are recorded beside ours under
  ``lmms_eval_*``: its recall leaves out gold-yes questions whose answer is neither yes nor no,
  and its "yes_ratio" is the share of *gold* yes answers, not of predicted ones.
* ``cocoqa`` — exact match after normalisation (lower case, punctuation and the articles
  a / an / the removed, whitespace collapsed). WUPS is not computed: it needs WordNet, and no
  WordNet with its data installs from a package registry (``wn`` 1.1.1's wheel holds only its
  schema; the lexicon comes from ``wn.download`` at run time, as nltk's ``wordnet`` corpus comes
  from ``nltk.download``), and vseam downloads nothing at run time.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "POPE_PARSERS",
    "RULES",
    "RULE_TEXT",
    "YesNoMeasures",
    "cocoqa_normalize",
    "gqa_normalize",
    "judge",
    "pope_llava",
    "pope_strict",
    "rule_for_source",
    "yes_no_measures",
]

RULES = ("gqa", "pope", "cocoqa")

# What each rule is, recorded with every run that uses it.
RULE_TEXT = {
    "gqa": "GQA (lmms-eval): exact match after strip, lower case and removing ASCII punctuation",
    "pope": "POPE: LLaVA eval_pope parser (first sentence; 'No'/'no'/'not' among the words -> no, else yes) and "
            "lmms-eval strict match (pred.lower().strip() == yes/no); accuracy/precision/recall/F1/predicted yes-ratio",
    "cocoqa": "COCO-QA: exact match after lower case, punctuation and articles removed, whitespace collapsed "
              "(WUPS not computed: no WordNet with its data installs from a package registry)",
}

_SOURCE_RULE = {"gqa": "gqa", "toyworld": "gqa", "pope": "pope", "cocoqa": "cocoqa"}
_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def rule_for_source(source: str) -> str:
    """The benchmark rule a data source is judged by (the toy world is exported as GQA)."""
    try:
        return _SOURCE_RULE[source]
    except KeyError:
        raise ValueError(f"no answer rule for data source {source!r}; known: {', '.join(sorted(_SOURCE_RULE))}") from None


def gqa_normalize(text: str) -> str:
    return text.strip().lower().translate(_PUNCT)


def cocoqa_normalize(text: str) -> str:
    t = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", t).split())


def pope_llava(text: str) -> str:
    """'yes' or 'no', as LLaVA's eval_pope.py reads an answer (never 'other')."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_strict(text: str) -> str:
    """'yes', 'no' or 'other', as lmms-eval's POPE task reads an answer."""
    t = text.lower().strip()
    return t if t in ("yes", "no") else "other"


POPE_PARSERS = {"llava": pope_llava, "strict": pope_strict}


def judge(rule: str, generated: str, gold: str) -> bool:
    """Is the generated text a correct answer to a question with gold answer `gold` under `rule`?

    For ``pope`` the headline parser is LLaVA's (the published numbers use it); the strict
    parser's measures are reported beside it by :func:`yes_no_measures`.
    """
    if rule == "gqa":
        return gqa_normalize(generated) == gqa_normalize(gold)
    if rule == "cocoqa":
        return cocoqa_normalize(generated) == cocoqa_normalize(gold)
    if rule == "pope":
        return pope_llava(generated) == gold.strip().lower()
    raise ValueError(f"unknown answer rule {rule!r}; expected one of {', '.join(RULES)}")


@dataclass(frozen=True)
class YesNoMeasures:
    """POPE's measures for one parser over one set (positive class: yes)."""

    n: int
    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float  # share of *predicted* yes
    unparsed: int  # answers that are neither yes nor no
    lmms_eval_recall: float  # lmms-eval's recall: gold-yes questions answered neither yes nor no left out
    lmms_eval_yes_ratio: float  # what lmms-eval calls yes_ratio: the share of *gold* yes

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in vars(self).items()}


def _ratio(a: int, b: int) -> float:
    return a / b if b else math.nan


def yes_no_measures(gold: Sequence[str], labels: Sequence[str]) -> YesNoMeasures:
    """Accuracy, precision, recall, F1 and predicted yes-ratio of parsed labels against yes/no gold answers."""
    if len(gold) != len(labels):
        raise ValueError(f"{len(gold)} gold answers but {len(labels)} predictions")
    if not gold:
        raise ValueError("yes_no_measures: no questions")
    g = [x.strip().lower() for x in gold]
    if bad := [x for x in g if x not in ("yes", "no")]:
        raise ValueError(f"yes_no_measures: gold answers must be yes or no, got {bad[0]!r}")
    tp = sum(a == "yes" and p == "yes" for a, p in zip(g, labels))
    fp = sum(a == "no" and p == "yes" for a, p in zip(g, labels))
    tn = sum(a == "no" and p == "no" for a, p in zip(g, labels))
    fn = sum(a == "yes" and p != "yes" for a, p in zip(g, labels))
    fn_parsed = sum(a == "yes" and p == "no" for a, p in zip(g, labels))
    n = len(g)
    return YesNoMeasures(
        n=n, accuracy=(tp + tn) / n, precision=_ratio(tp, tp + fp), recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn), yes_ratio=(tp + fp) / n,
        unparsed=sum(p not in ("yes", "no") for p in labels),
        lmms_eval_recall=_ratio(tp, tp + fn_parsed), lmms_eval_yes_ratio=sum(a == "yes" for a in g) / n,
    )
