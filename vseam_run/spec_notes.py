"""Settings a spec gives that the run will not use (issue 24, item 7): said as warnings by
`vseam validate` and `vseam run`, so a setting that does nothing is not taken to have done
something. Only fields the spec sets explicitly are considered (pydantic's `model_fields_set`)."""

from __future__ import annotations

from vseam_run.spec import Spec


def ignored_settings(spec: Spec) -> list[str]:
    """One `field: why it is ignored` line per explicitly set field that has no effect."""
    out: list[str] = []
    s = spec.search
    if s is not None:
        if "verify_k" in s.model_fields_set and s.strategy != "attribution+verify":
            out.append(f"search.verify_k: ignored with strategy '{s.strategy}' (only attribution+verify re-scores "
                       "the top verify_k heads exactly)")
        if s.strategy != "exact":
            for name in ("stream", "batch_rows"):
                if name in s.model_fields_set:
                    out.append(f"search.{name}: ignored with strategy '{s.strategy}' (it sets how exact search batches)")
    datasets = [("data", spec.data)] + [(f"evaluate.extra.{i}", d) for i, d in enumerate(spec.evaluate.extra if spec.evaluate else [])]
    for prefix, d in datasets:
        if "category_from" in d.model_fields_set and d.category_from == "file" and d.source != "gqa":
            out.append(f"{prefix}.category_from: ignored with source '{d.source}' (only GQA files are named by category)")
        if "toyworld" in d.model_fields_set and d.source != "toyworld":
            out.append(f"{prefix}.toyworld: ignored with source '{d.source}' (it sizes the generated toy world)")
    return out
