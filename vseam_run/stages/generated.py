"""``evaluate.answer_match: generate``: baseline vs modulated on generated answers.

Each arm's answers are generated greedily (``vseam_run.generation``) with its head edits active
at every position, and judged by the benchmark's own rule (``vseam_run.answers``). The
first-token rows stay beside them: every stored row keeps ``pred`` (the argmax token at the
prompt's end) and carries in ``extra`` the generated text, both verdicts and the rule. Recorded
per set (``prefix`` = ``eval.test``, ``eval.<extra>``, …):

* ``{prefix}.*`` — the paired comparison on *generated* correctness (the headline);
* ``{prefix}.first_token.*`` — the same comparison under the first-token rule;
* ``{prefix}.generate.disagree.{baseline,modulated}`` — the share of questions where the two
  rules disagree, and the questions themselves in the document ``{prefix}.generate.disagreements``;
* ``{prefix}.generate.first_token_same.*`` — how often the first generated token is the scored argmax
  (a check of the generation path against the scoring path: they read the same logits);
* for POPE: ``{prefix}.pope.{llava,strict}.{accuracy,precision,recall,f1,yes_ratio}.{baseline,modulated}``
  with bootstrap intervals, plus ``….unparsed`` and lmms-eval's own ``lmms_eval_recall`` / ``lmms_eval_yes_ratio``;
* the rule itself, in the document ``{prefix}.answer_rule``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vseam_run import answers, evaluate, report
from vseam_run.generation import GenerationReport, generate_answers
from vseam_run.heads import HeadEdit


@dataclass(frozen=True)
class GenerateSettings:
    """What generation needs: the token budget and the benchmark rule of the set."""

    max_new_tokens: int = 16
    rule: str = "gqa"


def generated_rows(vlm, items: Sequence[Any], first_token_rows: Sequence[dict], gen: GenerateSettings, batch_size: int,
                   edits: dict[int, HeadEdit] | None = None, label: str = "generate",
                   report_: GenerationReport | None = None) -> list[dict]:
    """`first_token_rows` (one per item, same order) with ``correct`` judged on generated answers."""
    got = generate_answers(vlm, items, max_new_tokens=gen.max_new_tokens, batch_size=batch_size, edits=edits,
                           label=label, report=report_)
    by_qid = {r["qid"]: r for r in first_token_rows}
    out = []
    for item, g in zip(items, got):
        row = by_qid[item.qid]
        extra = {**(row.get("extra") or {}), "answer_match": "generate", "answer_rule": gen.rule, "generated": g.text,
                 "generated_first_token": g.first_token, "first_token_correct": bool(row["correct"])}
        if gen.rule == "pope":
            extra.update({f"pope_{name}": parse(g.text) for name, parse in answers.POPE_PARSERS.items()})
        out.append({**row, "correct": answers.judge(gen.rule, g.text, str(row["gold"])), "extra": extra})
    return out


def disagreements(rows: Sequence[dict], questions: dict[str, str], arm: str) -> list[dict]:
    """The questions where the generated verdict and the first-token verdict differ."""
    return [{"arm": arm, "qid": r["qid"], "question": questions.get(r["qid"], ""), "gold": r["gold"],
             "first token": r["pred"], "first_token_correct": r["extra"]["first_token_correct"],
             "generated": r["extra"]["generated"], "generated_correct": r["correct"]}
            for r in rows if r["extra"]["first_token_correct"] != r["correct"]]


def agreement_metrics(prefix: str, arm: str, rows: Sequence[dict]) -> dict[str, float]:
    n = max(len(rows), 1)
    disagree = sum(r["extra"]["first_token_correct"] != r["correct"] for r in rows)
    same = sum(r["extra"]["generated_first_token"] == r["pred"] for r in rows)
    return {f"{prefix}.generate.disagree.{arm}": disagree / n, f"{prefix}.generate.disagree_n.{arm}": float(disagree),
            f"{prefix}.generate.first_token_same.{arm}": same / n,
            f"{prefix}.first_token.accuracy.{arm}": sum(r["extra"]["first_token_correct"] for r in rows) / n}


def pope_comparisons(base: Sequence[dict], mod: Sequence[dict], *, n_boot: int, seed: int) -> dict[str, evaluate.YesNoComparison]:
    """Both parsers' measures, baseline vs modulated, with the run's bootstrap (per POPE split when several)."""
    out = {}
    for parser in answers.POPE_PARSERS:
        as_rows = lambda rows: [{**r, "pred": r["extra"][f"pope_{parser}"]} for r in rows]  # noqa: E731
        comp = evaluate.compare_yes_no(as_rows(base), as_rows(mod), "variants", n_boot=n_boot, seed=seed)
        if comp is not None:
            out[parser] = comp
    return out


def pope_metrics(prefix: str, parser: str, comp: evaluate.YesNoComparison, base: Sequence[dict], mod: Sequence[dict]) -> dict[str, float]:
    """``{prefix}.pope.{parser}.*``: the measures with intervals, unparsed counts and lmms-eval's own variants."""
    out = {k.replace(f"{prefix}.yesno.", f"{prefix}.pope.{parser}.", 1): v for k, v in comp.as_metrics(prefix).items()}
    for arm, rows in (("baseline", base), ("modulated", mod)):
        m = answers.yes_no_measures([r["gold"] for r in rows], [r["extra"][f"pope_{parser}"] for r in rows])
        out[f"{prefix}.pope.{parser}.unparsed.{arm}"] = float(m.unparsed)
        out[f"{prefix}.pope.{parser}.lmms_eval_recall.{arm}"] = m.lmms_eval_recall
        out[f"{prefix}.pope.{parser}.lmms_eval_yes_ratio.{arm}"] = m.lmms_eval_yes_ratio
    return out


def compare_generated(scored, edits: dict[int, HeadEdit], prefix: str, label: str, settings, matcher, sink,
                      gen: GenerateSettings) -> tuple[evaluate.ArmComparison, list[dict]]:
    """Baseline vs modulated on generated answers, first-token results beside them (see the module doc).

    Returns the *first-token* comparison and baseline rows: the random-head control, which reruns
    the set many times, stays on the first-token rule, and compares its draws with the policy's
    first-token gain."""
    base_ft, mod_ft = matcher.rows(scored.run()), matcher.rows(scored.run(edits))
    rep_b, rep_m = GenerationReport(), GenerationReport()
    base = generated_rows(scored.vlm, scored.items, base_ft, gen, settings.batch_size, None, f"{label}: generate (baseline)", rep_b)
    mod = generated_rows(scored.vlm, scored.items, mod_ft, gen, settings.batch_size, edits, f"{label}: generate (modulated)", rep_m)
    sink.question_rows(f"{prefix}.baseline", base)
    sink.question_rows(f"{prefix}.modulated", mod)
    record_rule(sink, prefix, gen)
    cmp = evaluate.compare_arms(base, mod, n_boot=settings.bootstrap, seed=settings.seed)
    cmp_ft = evaluate.compare_arms(base_ft, mod_ft, n_boot=settings.bootstrap, seed=settings.seed)
    sink.record(cmp.as_metrics(prefix))
    sink.record({k.replace(prefix, f"{prefix}.first_token", 1): v for k, v in cmp_ft.as_metrics(prefix).items()})
    sink.record({**agreement_metrics(prefix, "baseline", base), **agreement_metrics(prefix, "modulated", mod)})
    record_batching(sink, prefix, {"baseline": rep_b, "modulated": rep_m})
    questions = {it.qid: it.question for it in scored.items}
    diffs = disagreements(base, questions, "baseline") + disagreements(mod, questions, "modulated")
    sink.document(f"{prefix}.generate.disagreements", diffs)
    sink.document(f"{prefix}.summary", report.comparison_rows(cmp, context={"dataset": label, "answers": f"generate/{gen.rule}"}))
    sink.log("")
    sink.log(report.comparison_table(cmp, title=f"{label}: baseline vs modulated (n = {cmp.n}, answers: generated, "
                                                f"{gen.rule} rule, max_new_tokens {gen.max_new_tokens})"))
    sink.log(report.summary_table(_rule_rows(cmp, cmp_ft, base, mod), f"{label}: generated vs first-token accuracy"))
    if diffs:
        sink.log(report.summary_table(diffs[:20], f"{label}: questions where the two rules disagree "
                                                  f"({len(diffs)}{', first 20' if len(diffs) > 20 else ''})"))
    if gen.rule == "pope":
        for parser, comp in pope_comparisons(base, mod, n_boot=settings.bootstrap, seed=settings.seed).items():
            sink.record(pope_metrics(prefix, parser, comp, base, mod))
            sink.document(f"{prefix}.pope.{parser}", comp.rows())
            sink.log(report.summary_table(comp.rows(), f"{label}: POPE measures, {parser} parser (positive = yes, "
                                                       "yes-ratio = predicted)"))
    return cmp_ft, base_ft


def _rule_rows(cmp, cmp_ft, base, mod) -> list[dict]:
    def share(rows):
        return sum(r["extra"]["first_token_correct"] != r["correct"] for r in rows) / max(len(rows), 1)

    return [{"arm": "baseline", "generated": cmp.accuracy_baseline, "first token": cmp_ft.accuracy_baseline, "disagree": share(base)},
            {"arm": "modulated", "generated": cmp.accuracy_modulated, "first token": cmp_ft.accuracy_modulated, "disagree": share(mod)}]


def record_rule(sink, prefix: str, gen: GenerateSettings) -> None:
    sink.document(f"{prefix}.answer_rule", {"answer_match": "generate", "rule": gen.rule, "text": answers.RULE_TEXT[gen.rule],
                                            "max_new_tokens": gen.max_new_tokens, "decoding": "greedy, 1 beam"})


def record_batching(sink, prefix: str, reports: dict[str, GenerationReport]) -> None:
    for arm, rep in reports.items():
        sink.record({f"{prefix}.generate.batched.{arm}": float(rep.batched), f"{prefix}.generate.checked_rows.{arm}": float(rep.checked_rows)})
        if rep.mismatches:
            sink.document(f"{prefix}.generate.batch_mismatch.{arm}", rep.mismatches)
            sink.log(f"  {prefix} ({arm}): padded-batch generation differed from batch-1 on {len(rep.mismatches)} of "
                     f"{rep.checked_rows} checked question(s); generated one at a time instead")


def baseline_generated(vlm, items: Sequence[Any], rows: list[dict], gen: GenerateSettings, batch_size: int,
                       record: Callable[[dict[str, float]], None], document: Callable[[str, Any], None],
                       log: Callable[[Any], None]) -> list[dict]:
    """The baseline stage under ``answer_match: generate``: rows judged on generated answers,
    ``baseline.first_token.accuracy`` and the disagreement beside them."""
    rep = GenerationReport()
    out = generated_rows(vlm, items, rows, gen, batch_size, None, "baseline: generate", rep)
    sink = _FnSink(record, document, log)
    record_rule(sink, "baseline", gen)
    record({k: v for k, v in agreement_metrics("baseline", "baseline", out).items()})
    record_batching(sink, "baseline", {"baseline": rep})
    document("baseline.generate.disagreements", disagreements(out, {it.qid: it.question for it in items}, "baseline"))
    if gen.rule == "pope" and all(str(r["gold"]).strip().lower() in ("yes", "no") for r in out):
        for parser in answers.POPE_PARSERS:
            m = answers.yes_no_measures([r["gold"] for r in out], [r["extra"][f"pope_{parser}"] for r in out])
            record({f"baseline.pope.{parser}.{k}": v for k, v in m.as_dict().items()})
            log(f"  POPE ({parser} parser): accuracy {m.accuracy:.3f}, precision {m.precision:.3f}, recall {m.recall:.3f}, "
                f"F1 {m.f1:.3f}, predicted yes-ratio {m.yes_ratio:.3f}, unparsed {m.unparsed}")
    n = max(len(out), 1)
    log(f"  baseline generated accuracy ({gen.rule} rule) {sum(r['correct'] for r in out) / n:.3f}; first-token "
        f"{sum(r['extra']['first_token_correct'] for r in out) / n:.3f}; the two disagree on "
        f"{sum(r['extra']['first_token_correct'] != r['correct'] for r in out)} of {len(out)}")
    return out


@dataclass
class _FnSink:
    record: Callable[[dict[str, float]], None]
    document: Callable[[str, Any], None]
    log: Callable[[Any], None]
