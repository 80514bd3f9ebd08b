"""`vseam report`: one self-contained static HTML page about a run.

Everything is inside the file (images as base64 data URIs, CSS inline), so it can be
mailed, attached to an issue or opened years later without the registry or the artifacts.
An inline script checks, when the page loads, that every image decoded and every section
is present, and writes the result into ``#vseam-check`` (the tests read it back from a
headless browser).
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
from pathlib import Path
from typing import Any

import yaml

from vseam_run import fmt
from vseam_run.store import RunStore

#: In reading order: the finding first, then what shows it, then the details; the spec last, collapsed.
SECTIONS = ("summary", "figures", "top-heads", "evaluation", "edits", "metrics", "environment", "spec")
_IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} th{background:#f4f4f4}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.muted{color:#777} .finding{font-size:1.15em} .note{background:#fff7e0;border-left:3px solid #e0a800;padding:.3em .6em}
.bar{display:inline-block;height:.8em;background:#2c7bb6;vertical-align:middle} .bar.neg{background:#d7191c}
.bar.rnd{background:#999} details summary{cursor:pointer;color:#555}
"""

_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; });
  var want = JSON.parse(document.body.dataset.sections);
  var missing = want.filter(function (s) { return !document.getElementById(s); });
  var out = {images: imgs.length, broken: broken, sections: want.length, missing: missing,
             ok: broken.length === 0 && missing.length === 0};
  document.getElementById('vseam-check').textContent = 'VSEAM-CHECK ' + JSON.stringify(out);
});
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[Any]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td class='n'>{_e(c)}</td>" if i in numeric else f"<td>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(path: Path) -> str | None:
    mime = _IMAGE_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0]
    if not path.is_file() or mime is None or not mime.startswith("image/"):
        return None
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(path: Path, caption: str) -> str:
    uri = _data_uri(path)
    if uri is None:
        return f"<p class='muted'>{_e(caption)}: file {_e(path)} is missing</p>"
    return f"<figure><img src='{uri}' alt='{_e(caption)}'><figcaption>{_e(caption)} — {_e(path.name)}</figcaption></figure>"


def _words(kind: str) -> str:
    """An artifact kind in words: heatmap.positive → "heatmap, positive"."""
    return kind.replace("_", " ").replace(".", ", ")


def _is_image(path: str) -> bool:
    return Path(path).suffix.lower() in (".png", ".jpg", ".jpeg", ".svg")


def _top_heads(heads: dict[str, Any] | None, unc: dict[str, Any] | None) -> str:
    from vseam_run.estimates import ESTIMATE_MARK, head_scores_estimated

    if not heads:
        return "<p class='muted'>this run has no head search</p>"
    parts = []
    score_col = f"score ({ESTIMATE_MARK} first-order estimate)" if head_scores_estimated(heads) else "score"
    for kind in ("positive", "negative"):
        rows = []
        for l, h, score in heads.get("top", {}).get(kind, []):
            lo = hi = stab = None
            if unc:
                lo, hi = unc["low"][kind][l][h], unc["high"][kind][l][h]
                stab = unc["top_k_stability"][kind][l][h]
            rows.append([fmt.head(l, h), fmt.num(score), "—" if lo is None else f"[{fmt.num(lo)}, {fmt.num(hi)}]",
                         "—" if stab is None else f"{stab:.0%}"])
        parts.append(f"<h3>top {kind} heads</h3>" + (_table(["head", score_col, "95% interval", "top-k stability"], rows, {1, 2, 3})
                                                     if rows else "<p class='muted'>none</p>"))
    counts = heads.get("counts", {})
    if counts:
        parts.insert(0, f"<p>{_e(heads.get('strategy', ''))} search, {_e(heads.get('scoring', ''))} scoring; "
                        f"{counts.get('correct')} correct / {counts.get('wrong')} wrong questions"
                        + (f"; intervals from {unc['n_boot']} bootstrap resamples of the questions" if unc else "") + "</p>")
    return "".join(parts)


def _evaluation(documents: dict[str, Any]) -> str:
    parts = []
    for key, rows in documents.items():
        if key.endswith(".summary") and isinstance(rows, list) and rows and isinstance(rows[0], dict):
            cols = list(dict.fromkeys(c for r in rows for c in r))
            body = [[_cell(r.get(c)) for c in cols] for r in rows]
            parts.append(f"<h3>{_e(doc_heading(key))}</h3>" + _table(cols, body, {i for i, c in enumerate(cols) if c not in ("dataset", "category")}))
    lam = documents.get("lambda_selection")
    if isinstance(lam, list) and lam:
        parts.append("<h3>λ selection (validation)</h3>" + _table(["λ", "val accuracy"], [[f"{p['lam']:g}", fmt.num(p["val_accuracy"])] for p in lam], {0, 1}))
    ab = documents.get("ablation")
    if isinstance(ab, dict) and ab.get("results"):
        rows = []
        for name, res in ab["results"].items():
            acc, prob = res.get("accuracy_drop"), res.get("gold_prob_drop")
            show = lambda v: fmt.num(sum(v) / len(v)) + f" (mean of {len(v)})" if isinstance(v, list) else fmt.num(v)  # noqa: E731
            rows.append([name, show(acc), show(prob)])
        parts.append("<h3>ablation</h3>" + _table(["heads", "accuracy drop", "gold prob drop"], rows, {1, 2}))
    return "".join(parts) or "<p class='muted'>no evaluation in this run</p>"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return fmt.num(v)
    if isinstance(v, list) and len(v) in (2, 3) and all(isinstance(x, (int, float)) for x in v):
        return f"[{fmt.num(v[0])}, {fmt.num(v[1])}]"  # a stored CI (low, high, estimate)
    return "—" if v is None else str(v)


#: Metric prefixes (the stage that recorded them) in words, in pipeline order.
_STAGE_WORDS = {"data": "Data", "baseline": "Baseline", "edit": "Counterfactual edits", "trace": "Causal tracing",
                "search": "Head search", "modulation": "Modulation", "eval": "Evaluation", "ablation": "Ablation"}  # fmt: skip


def doc_heading(key: str) -> str:
    """A document key in words: eval.test.summary → "Held-out test: baseline vs modulated"."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "eval" and parts[2] == "summary":
        where = {"test": "Held-out test", "search": "In-sample (the search split the heads were scored on)",
                 "val": "Validation split"}.get(parts[1], f"Dataset '{parts[1]}'")
        return f"{where}: baseline vs modulated"
    return key.replace(".", " ").replace("_", " ").capitalize()


def _finding(run: Any, docs: dict[str, Any]) -> str:
    """The run's result in a few lines: accuracy baseline → modulated with its interval, the
    chosen λ / K, the strongest heads with their intervals, the ablation as bars."""
    from vseam_run.estimates import ESTIMATE_MARK, estimate_notes, head_scores_estimated

    out = []
    summary = docs.get("eval.test.summary") or next((v for k, v in docs.items() if k.startswith("eval.") and k.endswith(".summary")), None)
    if isinstance(summary, list) and summary and isinstance(summary[-1], dict):
        row = next((r for r in summary if r.get("category") == "all"), summary[-1])
        ci = next((v for k, v in row.items() if "CI" in k), None)
        ci_text = f", 95% CI of the difference [{fmt.num(ci[0])}, {fmt.num(ci[1])}]" if isinstance(ci, list) and len(ci) >= 2 else ""
        p = row.get("McNemar p")
        out.append(f"<p class='finding'>{_e(row.get('dataset', 'evaluation'))} accuracy <b>{fmt.num(row.get('baseline'))} → "
                   f"{fmt.num(row.get('modulated'))}</b> with modulation (n = {_e(row.get('n'))}{_e(ci_text)}"
                   + (f"; McNemar p = {fmt.num(p)}" if p is not None else "") + ")</p>")
    mod = docs.get("modulation")
    if isinstance(mod, dict) and mod.get("policy"):
        chosen = ", ".join(f"{k} = {fmt.num(mod[k])}" for k in ("lambda", "k", "alpha", "beta") if isinstance(mod.get(k), (int, float)))
        out.append(f"<p>modulation policy <b>{_e(mod['policy'])}</b>" + (f", chosen {_e(chosen)}" if chosen else "")
                   + (f" (λ picked on the validation split)" if docs.get("lambda_selection") else "") + "</p>")
    heads, unc = docs.get("heads"), docs.get("heads.uncertainty")
    if heads and heads.get("top"):
        mark = ESTIMATE_MARK if head_scores_estimated(heads) else ""
        for kind in ("positive", "negative"):
            items = []
            for l, h, score in heads["top"].get(kind, [])[:3]:
                ci = f" [{fmt.num(unc['low'][kind][l][h])}, {fmt.num(unc['high'][kind][l][h])}]" if unc else ""
                items.append(f"{fmt.head(l, h)} {mark}{fmt.num(score)}{ci}")
            if items:
                out.append(f"<p>strongest {kind} heads: {_e('; '.join(items))}</p>")
    for note in estimate_notes(heads, run.spec()):
        out.append(f"<p class='note'>{_e(note)}</p>")
    ab = docs.get("ablation")
    if isinstance(ab, dict) and ab.get("results"):
        vals = {}
        for name, res in ab["results"].items():
            v = res.get("accuracy_drop")
            vals[name] = sum(v) / len(v) if isinstance(v, list) and v else v
        top = max((abs(v) for v in vals.values() if isinstance(v, (int, float))), default=0) or 1.0
        rows = []
        for name, v in vals.items():
            if not isinstance(v, (int, float)):
                continue
            cls = {"negative": " neg", "random": " rnd"}.get(name, "")
            rows.append(f"<tr><td>{_e(name)} heads</td><td class='n'>{fmt.num(v)}</td>"
                        f"<td><span class='bar{cls}' style='width:{max(1, round(200 * abs(v) / top))}px'></span></td></tr>")
        if rows:
            out.append("<p>accuracy drop when the heads are ablated:</p><table><tbody>" + "".join(rows) + "</tbody></table>")
    out.append(f"<p class='muted'>status {_e(run.status)}; model {_e(run.model_name)}; seed {_e(run.seed)}</p>")
    return "".join(out)


def _metrics_by_stage(run: Any) -> str:
    groups: dict[str, list[list[str]]] = {}
    for n in sorted(run.metrics):
        groups.setdefault(n.split(".", 1)[0], []).append([n, fmt.num(run.metric(n))])
    order = sorted(groups, key=lambda g: (list(_STAGE_WORDS).index(g) if g in _STAGE_WORDS else len(_STAGE_WORDS), g))
    return "".join(f"<h3>{_e(_STAGE_WORDS.get(g, g.capitalize()))}</h3>" + _table(["metric", "value"], groups[g], {1}) for g in order)


def build_report(store: RunStore, run_id: str) -> str:
    """The page as a string."""
    from vseam_run.store.labels import labels

    run = store.get_run(run_id)
    docs = store.documents(run_id)
    labs = labels(store, [run_id])[run_id]
    title = f"{run.name} · {run.id}"
    env_rows = [["model", run.model_name or "—"], ["model hash", run.model_hash or "—"], ["device", run.device or "—"],
                ["seed", run.seed], ["status", run.status], ["created (UTC)", run.created_at.isoformat(timespec="seconds")],
                ["duration", "—" if run.duration_s is None else f"{run.duration_s:.1f} s"]]
    env_rows += [[k, v] for k, v in sorted(run.versions.items())]
    metric_rows = [[n, fmt.num(run.metric(n))] for n in sorted(run.metrics)]
    images = [a for a in run.artifacts if _is_image(a.path)]
    sheets = [a for a in images if a.kind.startswith("edits")]
    figures = [a for a in images if a not in sheets]
    summary = [_finding(run, docs)]
    if labs.tags:
        summary.append(f"<p>tags: {_e(', '.join(labs.tags))}</p>")
    if labs.sweeps:
        summary.append(f"<p>sweep: {_e(', '.join(labs.sweeps))}</p>")
    summary += [f"<p>note: {_e(n)}</p>" for n in labs.notes]
    if run.error_message:
        summary.append(f"<p style='color:#b00'>error: {_e(run.error_message)}</p>")
    spec_text = _e(yaml.safe_dump(run.spec(), sort_keys=False, allow_unicode=True))
    sections = {
        "summary": ("Finding", "".join(summary)),
        "figures": ("Figures", "".join(_figure(Path(a.path), _words(a.kind)) for a in figures) or "<p class='muted'>no figures</p>"),
        "top-heads": ("Top heads", _top_heads(docs.get("heads"), docs.get("heads.uncertainty"))),
        "evaluation": ("Evaluation", _evaluation(docs)),
        "edits": ("Counterfactual edits", "".join(_figure(Path(a.path), _words(a.kind)) for a in sheets)
                  or "<p class='muted'>no edit contact sheet in this run</p>"),
        "metrics": ("Metrics, by stage", _metrics_by_stage(run) if metric_rows else "<p class='muted'>none</p>"),
        "environment": ("Environment", _table(["field", "value"], env_rows)),
        "spec": ("Spec", f"<details><summary>the resolved spec (YAML)</summary><pre>{spec_text}</pre></details>"),
    }
    body = "".join(f"<section id='{sid}'><h2>{_e(head)}</h2>{content}</section>" for sid, (head, content) in sections.items())
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body data-sections='{_e(json.dumps(list(SECTIONS)))}'><h1>{_e(title)}</h1>{body}"
        # The load check is for tests and tools reading the DOM, not for readers: hidden.
        f"<p id='vseam-check' hidden></p><script>{_CHECK_JS}</script></body></html>"
    )
