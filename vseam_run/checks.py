"""Everything about a spec that can be checked on this machine before the model loads.

`vseam validate` and the run's preflight (`pipeline.preflight`) both call `machine_problems`,
so a spec that validates here does not fail later on something knowable now: the device, the
weights, the head counts the spec asks for (read from the model's config only), a writable
workdir, and every question file of every dataset, parsed. Each problem is one line
`field: message`; all of them are reported together.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vseam_run.errors import VseamError
from vseam_run.registry import ModelEntry
from vseam_run.spec import Spec, data_file_problems


@dataclass(frozen=True)
class HeadCount:
    """The language model's attention heads, from its config."""

    layers: int
    heads: int

    @property
    def total(self) -> int:
        return self.layers * self.heads

    def describe(self, model: str) -> str:
        return f"{model} has {self.layers} layers × {self.heads} heads = {self.total}"


def machine_problems(spec: Spec, entry: ModelEntry) -> list[str]:
    """Every problem that stops `spec` from running here, short of loading the model."""
    from vseam_run.device import resolve_device
    from vseam_run.vlm import weights_source

    problems: list[str] = []
    try:
        resolve_device(spec.device)
    except VseamError as e:
        problems.append(str(e))
    try:
        source = weights_source(entry)
    except VseamError as e:
        problems.append(f"model: {e}")
    else:
        try:
            problems += head_problems(spec, model_heads(entry, source), entry.name)
        except VseamError as e:
            problems.append(f"model: {e}")
        problems += prompt_problems_here(entry)
        from vseam_run.weights_check import checkpoint_problems

        problems += checkpoint_problems(entry, source)  # tensors missing from some layers (issue 25)
        problems += _module_path_problems(entry)
    from vseam_run.placement import placement_problems

    problems += placement_problems(spec, entry)  # device_map / quantization (issue 23)
    problems += workdir_problems(Path(spec.workdir))
    problems += dataset_problems(spec)
    problems += figure_setting_problems()
    return problems


def figure_setting_problems() -> list[str]:
    """VSEAM_HEATMAP_SCALE / VSEAM_FIGURE_FORMATS with a bad value: found before the run, not when
    the first figure is drawn after the head search."""
    from vseam_run import report

    problems = []
    for check in (report.heatmap_scale, report.figure_formats):
        try:
            check()
        except VseamError as e:
            problems.append(e.message + (f" ({e.hint})" if e.hint else ""))
    return problems


def prompt_problems_here(entry: ModelEntry) -> list[str]:
    """The entry's prompt against its processor (local files only; none when it cannot be built)."""
    from vseam_run.prompt_check import load_processor, prompt_problems

    processor = load_processor(entry)
    return [f"model: {p}" for p in prompt_problems(entry, processor)] if processor is not None else []


def _module_path_problems(entry: ModelEntry) -> list[str]:
    """The entry's module paths on a meta-device model from its config (as `vseam validate ENTRY`
    does), so a path to something that is no module is refused before the weights load."""
    from vseam_run.inspect_model import check_entry

    try:
        check = check_entry(entry)
    except VseamError as e:
        return [f"model: {e}"]
    except Exception:  # a config the meta build cannot take: the load checks the paths again
        return []
    return [f"model (registry entry '{entry.name}'): {e}" for e in check.errors]


def model_heads(entry: ModelEntry, source: str) -> HeadCount:
    """Layers and heads of the entry's language model, from config.json alone (no weights)."""
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"trust_remote_code": entry.trust_remote_code}
    if entry.revision:
        kwargs["revision"] = entry.revision
    if os.environ.get("VSEAM_ALLOW_DOWNLOAD") != "1":
        kwargs["local_files_only"] = True
    try:
        config = AutoConfig.from_pretrained(source, **kwargs)
    except Exception as e:  # a damaged or unknown config.json: the load would fail the same way
        raise VseamError(f"cannot read the config of '{entry.name}' ({source}): {type(e).__name__}: {e}") from None
    text = getattr(config, entry.text_config, None) or config
    layers, heads = getattr(text, "num_hidden_layers", None), getattr(text, "num_attention_heads", None)
    if not isinstance(layers, int) or not isinstance(heads, int):
        raise VseamError(
            f"the config of '{entry.name}' has no num_hidden_layers / num_attention_heads under '{entry.text_config}'",
            hint="check the entry's text_config",
        )
    return HeadCount(layers, heads)


def head_problems(spec: Spec, count: HeadCount, model: str) -> list[str]:
    """Head counts the spec asks for that the model does not have."""
    asked: list[tuple[str, int | None]] = []
    if spec.search is not None:
        asked += [("search.top_k", spec.search.top_k), ("search.verify_k", spec.search.verify_k)]
    if spec.modulation is not None and spec.modulation.policy == "topk":
        asked.append(("modulation.k", spec.modulation.k))
    if spec.evaluate is not None and spec.evaluate.ablation is not None:
        asked.append(("evaluate.ablation.k", spec.evaluate.ablation.k))
    return [
        f"{field}: {k} heads asked for, but {count.describe(model)}; use at most {count.total}"
        for field, k in asked
        if k is not None and k > count.total
    ]


def workdir_problems(workdir: Path) -> list[str]:
    """The workdir (or, when it does not exist yet, the folder it would be made in) must be a
    writable folder. Nothing is created here: a rejected spec leaves no trace."""
    path = workdir.expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "it" if probe == path else f"its parent {probe}"
        return [f"workdir: {workdir} cannot be a folder: {where} is a file"]
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "it" if probe == path else f"the folder it would be made in, {probe},"
        return [f"workdir: cannot write to {workdir}: {where} is not writable (set workdir to a folder you can write)"]
    problem = _try_workdir(path)  # access() says yes for root, and in /proc or on a read-only mount
    return [f"workdir: cannot write to {workdir}: {problem} (set workdir to a folder you can write)"] if problem else []


def _try_workdir(path: Path) -> str | None:
    """Make the folder and write a file in it, then remove all that this made; the error, if any."""
    import tempfile

    made: list[Path] = []
    try:
        for folder in reversed([path, *path.parents]):
            if not folder.exists():
                folder.mkdir()
                made.append(folder)
        fd, probe = tempfile.mkstemp(prefix=".vseam-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e.strerror or str(e)
    finally:
        for folder in reversed(made):
            try:
                folder.rmdir()
            except OSError:
                pass
    return None


def dataset_problems(spec: Spec) -> list[str]:
    """Missing files first; then every question file of every dataset is parsed (no image is
    opened) and must yield questions whose type is known and that the filters keep."""
    from vseam_run.data import check_question_files

    missing = data_file_problems(spec)
    problems = list(missing)
    datasets: list[tuple[str, Any]] = [("data", spec.data)]
    if spec.evaluate:
        datasets += [(f"evaluate.extra.{i}", d) for i, d in enumerate(spec.evaluate.extra)]
    for prefix, d in datasets:
        if d.source == "toyworld" or any(p.startswith(f"{prefix}.") for p in missing):
            continue
        try:
            check_question_files(d.source, Path(d.path), Path(d.images) if d.images else None,
                                 level=d.level, categories=d.categories, on_missing_image=d.on_missing_image,
                                 category_from=getattr(d, "category_from", "program"))
        except VseamError as e:
            problems.append(f"{prefix}: {e}")
    return problems
