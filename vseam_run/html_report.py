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

SECTIONS = ("summary", "spec", "environment", "metrics", "top-heads", "figures", "edits", "evaluation")
_IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums} th{background:#f4f4f4}
pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.85em}
figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
.muted{color:#777} #vseam-check{font-size:.75em;color:#999}
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


def _is_image(path: str) -> bool:
    return Path(path).suffix.lower() in (".png", ".jpg", ".jpeg", ".svg")


def _top_heads(heads: dict[str, Any] | None, unc: dict[str, Any] | None) -> str:
    if not heads:
        return "<p class='muted'>this run has no head search</p>"
    parts = []
    for kind in ("positive", "negative"):
        rows = []
        for l, h, score in heads.get("top", {}).get(kind, []):
            lo = hi = stab = None
            if unc:
                lo, hi = unc["low"][kind][l][h], unc["high"][kind][l][h]
                stab = unc["top_k_stability"][kind][l][h]
            rows.append([fmt.head(l, h), fmt.num(score), "—" if lo is None else f"[{fmt.num(lo)}, {fmt.num(hi)}]",
                         "—" if stab is None else f"{stab:.0%}"])
        parts.append(f"<h3>top {kind} heads</h3>" + (_table(["head", "score", "95% interval", "top-k stability"], rows, {1, 2, 3})
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
            parts.append(f"<h3>{_e(key)}</h3>" + _table(cols, body, {i for i, c in enumerate(cols) if c not in ("dataset", "category")}))
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
    summary = [f"<p>status <b>{_e(run.status)}</b>; model {_e(run.model_name)}; seed {_e(run.seed)}</p>"]
    if labs.tags:
        summary.append(f"<p>tags: {_e(', '.join(labs.tags))}</p>")
    if labs.sweeps:
        summary.append(f"<p>sweep: {_e(', '.join(labs.sweeps))}</p>")
    summary += [f"<p>note: {_e(n)}</p>" for n in labs.notes]
    if run.error_message:
        summary.append(f"<p style='color:#b00'>error: {_e(run.error_message)}</p>")
    sections = {
        "summary": ("Summary", "".join(summary)),
        "spec": ("Spec", f"<pre>{_e(yaml.safe_dump(run.spec(), sort_keys=False, allow_unicode=True))}</pre>"),
        "environment": ("Environment", _table(["field", "value"], env_rows)),
        "metrics": ("Metrics", _table(["metric", "value"], metric_rows, {1}) if metric_rows else "<p class='muted'>none</p>"),
        "top-heads": ("Top heads", _top_heads(docs.get("heads"), docs.get("heads.uncertainty"))),
        "figures": ("Figures", "".join(_figure(Path(a.path), a.kind) for a in figures) or "<p class='muted'>no figures</p>"),
        "edits": ("Counterfactual edits", "".join(_figure(Path(a.path), a.kind) for a in sheets)
                  or "<p class='muted'>no edit contact sheet in this run</p>"),
        "evaluation": ("Evaluation", _evaluation(docs)),
    }
    body = "".join(f"<section id='{sid}'><h2>{_e(head)}</h2>{content}</section>" for sid, (head, content) in sections.items())
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body data-sections='{_e(json.dumps(list(SECTIONS)))}'><h1>{_e(title)}</h1>{body}"
        f"<p id='vseam-check'></p><script>{_CHECK_JS}</script></body></html>"
    )
