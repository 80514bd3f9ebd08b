"""The spec contract: shipped files validate, and every kind of mistake is reported as
`field.path: message (line N)`, all of a file's mistakes at once."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vseam_run.errors import SpecError
from vseam_run.registry import load_entry_file
from vseam_run.spec import LinearPolicy, Spec, SplitSpec, apply_overrides, load_spec, validate_doc
from vseam_run.yamlio import parse_yaml

REPO = Path(__file__).resolve().parents[1]
SPECS = sorted((REPO / "specs").glob("*.yaml"))
ENTRIES = sorted((REPO / "registry").glob("*.yaml"))

BASE = "name: t\nmodel: toy-llava\ndata: {source: toyworld}\n"  # lines 1-3


def errors_of(text: str, overrides: list[str] | None = None, tmp_path: Path | None = None) -> list[str]:
    """The error lines of a spec given as text (written to a file when tmp_path is given)."""
    with pytest.raises(SpecError) as info:
        if tmp_path is not None:
            path = tmp_path / "spec.yaml"
            path.write_text(text)
            load_spec(path, overrides)
        else:
            validate_doc(parse_yaml(text, "spec.yaml"), "spec.yaml", overrides or [])
    return info.value.errors


def only_error(text: str, overrides: list[str] | None = None) -> str:
    errs = errors_of(text, overrides)
    assert len(errs) == 1, errs
    return errs[0]


def validate(text: str, overrides: list[str] | None = None) -> Spec:
    return validate_doc(parse_yaml(text, "spec.yaml"), "spec.yaml", overrides or [])


# --- shipped files --------------------------------------------------------------------------


def test_shipped_files_are_found():
    assert len(SPECS) >= 3 and len(ENTRIES) >= 3  # a moved folder must not make the checks below vacuous


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.name)
def test_shipped_spec_validates(path: Path):
    spec = load_spec(path)
    assert spec.name
    # Round trip: what a run stores (to_yaml) validates to the same spec.
    assert validate(spec.to_yaml()) == spec


def test_validate_command_accepts_every_shipped_file(capsys):
    """--spec-only: the GPU specs are for another machine (CUDA, 7B weights, GQA on disk)."""
    from vseam_run.cli.main import cli

    assert cli(["validate", "--spec-only", *map(str, SPECS + ENTRIES)]) == 0
    out = capsys.readouterr().out
    assert out.count("ok") == len(SPECS) + len(ENTRIES)


def test_validate_checks_the_machine_by_default(capsys, tmp_path, monkeypatch):
    """Without --spec-only a spec is checked as `vseam run` would before loading the model: the
    toy specs can run here; a GPU spec names each thing this machine lacks, all at once."""
    from vseam_run.cli.main import cli

    monkeypatch.chdir(tmp_path)  # relative data paths and workdirs resolve here
    toy = [p for p in SPECS if p.stem.startswith("toy_") or p.stem == "quickstart"]
    assert toy and cli(["validate", *map(str, toy)]) == 0
    capsys.readouterr()
    gpu = REPO / "specs" / "llava_attributes.yaml"
    assert cli(["validate", str(gpu)]) == 2
    err = capsys.readouterr().err
    assert "cannot run on this machine" in err
    assert "data.path: question file not found" in err and "evaluate.extra.1.path" in err


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.name)
def test_shipped_registry_entry_validates(path: Path):
    entry = load_entry_file(path)
    assert entry.name == path.stem  # lookup is by file name; the entry must agree
    assert "{question}" in entry.prompt


# --- YAML and unknown keys ------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    errs = errors_of(BASE + "search:\n  strategy: [exact\n", tmp_path=tmp_path)
    assert len(errs) == 1
    assert "YAML syntax error" in errs[0] and "line 6" in errs[0]
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "spec.yaml")
    assert info.value.source == str(tmp_path / "spec.yaml")
    assert str(tmp_path / "spec.yaml") in str(info.value)


def test_missing_spec_file_names_it(tmp_path):
    from vseam_run.errors import VseamError

    with pytest.raises(VseamError, match="nope.yaml: file not found"):
        load_spec(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + "serch: {}\n", "serch: unknown field; did you mean 'search'? (allowed: "),
        (BASE + "search: {strategy: exact, topk: 3}\n", "search.topk: unknown field; did you mean 'top_k'?"),
        ("name: t\nmodel: toy-llava\ndata:\n  source: toyworld\n  toyworld: {imags: 30}\n",
         "data.toyworld.imags: unknown field; did you mean 'images'?"),
        # Inside a discriminated union: the path is as written (no 'linear' step) and the
        # suggestion comes from the chosen policy's fields.
        (BASE + "search: {}\nmodulation:\n  policy: linear\n  lamda: 2\n", "modulation.lamda: unknown field; did you mean 'lam'?"),
        (BASE + "search: {}\nevaluate:\n  extra:\n    - {name: x, source: toyworld, limt: 3}\n",
         "evaluate.extra.0.limt: unknown field; did you mean 'limit'?"),
    ],
    ids=["top", "section", "nested", "union", "list-item"],
)
def test_unknown_key_suggests_and_gives_line(text, expected):
    err = only_error(text)
    assert err.startswith(expected), err
    key = expected.split(":")[0].rsplit(".", 1)[-1]
    line = next(i for i, l in enumerate(text.splitlines(), 1) if re.search(rf"\b{key}:", l))
    assert err.endswith(f"(line {line})"), err


def test_unknown_key_in_a_policy_lists_only_that_policys_fields():
    err = only_error(BASE + "search: {}\nmodulation: {policy: topk, lam: 2}\n")
    assert err.startswith("modulation.lam: unknown field")
    assert "did you mean" not in err  # topk has no λ
    assert "(allowed: alpha, beta, k, policy)" in err


# --- types and values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, path, fragment, line",
    [
        (BASE + "seed: abc\n", "seed", "valid integer", 4),
        (BASE + "search: {top_k: -1}\n", "search.top_k", "greater than or equal to 1", 4),
        (BASE + "batch_size: 0\n", "batch_size", "greater than or equal to 1", 4),
        (BASE + "device: gpu\n", "device", "must be auto, cpu, cuda or cuda:N", 4),
        (BASE + "dtype: fp8\n", "dtype", "'auto', 'float32', 'bfloat16' or 'float16'", 4),
        (BASE + "search: {strategy: fastest}\n", "search.strategy", "'reference', 'exact'", 4),
        (BASE + "search: {}\nmodulation:\n  policy: linear\n  lam: big\n", "modulation.lam", "Input should be 'auto'", 7),
        (BASE + "search: {}\nmodulation:\n  policy: topk\n  k: 0\n", "modulation.k", "greater than or equal to 1", 7),
        (BASE + "search: {}\nmodulation: {policy: lineer}\n", "modulation.policy", "unknown policy 'lineer'; use linear, topk, paper, learned, none, ablate, steer or image_attention", 5),
        (BASE + "search: {}\nevaluate: {bootstrap: 10}\n", "evaluate.bootstrap", "greater than or equal to 100", 5),
    ],
    ids=["seed", "top_k", "batch_size", "device", "dtype", "strategy", "lam", "topk.k", "policy", "bootstrap"],
)
def test_wrong_type_or_value(text, path, fragment, line):
    err = only_error(text)
    assert err.startswith(f"{path}: "), err
    assert fragment in err
    assert err.endswith(f"(line {line})"), err
    assert "Value error," not in err  # pydantic's prefix is noise


def test_union_alternatives_give_one_line_per_field():
    """`lam: float | auto` failing both alternatives is one error, not one per alternative."""
    err = only_error(BASE + "search: {}\nmodulation: {policy: linear, lam: big}\n")
    assert err.startswith("modulation.lam: ")
    assert "valid number" in err and "'auto'" in err
    assert "float" not in err.split(":")[0] and "literal" not in err


def test_all_errors_of_a_file_are_reported_at_once():
    text = (
        "name: t\n"
        "model: llava-1.5-7\n"  # unknown model
        "seed: abc\n"  # wrong type
        "data:\n"
        "  source: toyworld\n"
        "  split: {search: 0.5, val: 0.1, test: 0.1}\n"  # does not sum to 1
        "search: {top_k: 0, stratgy: exact}\n"  # bad value + unknown key
        "modulation: {policy: linear, clip: [1.5, 2.0]}\n"  # clip misses 1
    )
    errs = errors_of(text)
    heads = sorted(e.split(":")[0] for e in errs)
    assert heads == ["data.split", "model", "modulation.clip", "search.stratgy", "search.top_k", "seed"], errs
    lines = {e.split(":")[0]: e for e in errs}
    assert lines["seed"].endswith("(line 3)")
    assert lines["search.top_k"].endswith("(line 7)")
    assert lines["modulation.clip"].endswith("(line 8)")
    assert "did you mean llava-1.5-7b" in lines["model"]


def test_spec_error_message_lists_every_error():
    with pytest.raises(SpecError) as info:
        validate(BASE + "seed: abc\nbatch_size: 0\n")
    message = str(info.value)
    assert message.startswith("spec.yaml: 2 error(s)")
    assert "\n  seed: " in message and "\n  batch_size: " in message


def test_unknown_model_did_you_mean():
    err = only_error("name: t\nmodel: llava-1.5-7\ndata: {source: toyworld}\n")
    assert err.startswith("model: unknown model 'llava-1.5-7'")
    assert "did you mean llava-1.5-7b" in err
    assert "toy-llava" in err  # the known models are listed


def test_model_as_path_to_a_broken_entry_is_a_model_error(tmp_path):
    entry = tmp_path / "bad.yaml"
    entry.write_text("name: bad\npath: ckpt\nmodel_class: NotAClass\nprompt: '{question}'\n"
                     "modules: {decoder: a, layers: a.b, final_norm: n, lm_head: h}\n")
    err = only_error(f"name: t\nmodel: {entry}\ndata: {{source: toyworld}}\n")
    assert err.startswith("model: ") and "model_class" in err and "NotAClass" in err


# --- stages that are not available, and stage order -----------------------------------------


def test_trace_section_defaults_and_errors():
    spec = validate(BASE + "edit: {recipe: procedural}\ntrace: {window: 3, components: [mlp]}\n")
    assert spec.trace.window == 3 and spec.trace.components == ["mlp"] and spec.trace.method == "exact"
    assert spec.trace.directions == ["clean_to_edited", "edited_to_clean"] and spec.trace.margin == 0.1
    err = only_error(BASE + "edit: {recipe: procedural}\ntrace: {layers: [1, 2]}\n")
    assert err.startswith("trace.layers: ") and err.endswith("(line 5)")
    err = only_error(BASE + "edit: {recipe: procedural}\ntrace: {components: [mlp, mlp]}\n")
    assert err.startswith("trace.components: ") and "twice" in err
    assert "trace needs an edit section" in only_error(BASE + "trace: {}\n")


def test_inpaint_recipe_needs_its_models():
    err = only_error(BASE + "edit: {recipe: inpaint, mask: {source: sam}}\n")
    assert err.startswith("edit: ") and "inpaint.model" in err and "check.clip" in err and "mask.sam" in err
    assert "a model entry needs hf_id or path" in only_error(BASE + "edit: {recipe: procedural, check: {clip: {name: x}}}\n")


def test_modulation_without_search_is_an_error():
    err = only_error(BASE + "modulation: {policy: linear, lam: 1}\n")
    assert "modulation needs a search section" in err


def test_evaluate_without_search_is_an_error():
    assert "evaluate needs a search section" in only_error(BASE + "evaluate: {ablation: {k: 2}}\n")


def test_modulation_none_needs_no_search():
    assert validate(BASE + "modulation: {policy: none}\n").modulation.policy == "none"


def test_modulation_policy_defaults_to_linear():
    """LinearPolicy declares policy: linear as its default, so `modulation: {lam: 2}` is linear."""
    spec = validate(BASE + "search: {}\nmodulation: {lam: 2}\n")
    assert isinstance(spec.modulation, LinearPolicy) and spec.modulation.lam == 2


def test_gqa_needs_a_path():
    err = only_error("name: t\nmodel: toy-llava\ndata: {source: gqa}\n")
    assert err.startswith("data: ") and "needs data.path" in err


def test_extra_dataset_needs_a_path():
    err = only_error(BASE + "search: {}\nevaluate:\n  extra:\n    - {name: pope, source: pope}\n")
    assert err.startswith("evaluate.extra.0: ") and "needs a path" in err


def test_data_files_are_not_checked_at_validation():
    """A spec for another machine validates; missing files are a preflight error of `vseam run`."""
    spec = validate("name: t\nmodel: toy-llava\ndata: {source: gqa, path: /nowhere/q.json, images: /nowhere/img}\n")
    from vseam_run.spec import data_file_problems

    problems = data_file_problems(spec)
    assert [p.split(":")[0] for p in problems] == ["data.path", "data.images"]
    assert "/nowhere/q.json" in problems[0]


def test_top_level_must_be_a_mapping():
    assert only_error("- a\n- b\n").startswith("(top level): a spec must be a mapping")
    assert only_error("").startswith("(top level)")


# --- clip and split -------------------------------------------------------------------------


@pytest.mark.parametrize("clip, ok", [((0.0, 2.0), True), ((1.0, 1.0), True), ((0.5, 1.5), True),
                                      ((1.5, 2.0), False), ((0.0, 0.9), False), ((2.0, 0.0), False)])
def test_clip_must_contain_one(clip, ok):
    if ok:
        assert LinearPolicy(clip=clip).clip == clip
    else:
        err = only_error(BASE + f"search: {{}}\nmodulation: {{policy: linear, clip: [{clip[0]}, {clip[1]}]}}\n")
        assert err.startswith("modulation.clip: clip must satisfy lo ≤ 1 ≤ hi"), err


@pytest.mark.parametrize("fractions, ok", [((0.6, 0.2, 0.2), True), ((1.0, 0.0, 0.0), True), ((0.5, 0.25, 0.25), True),
                                           ((0.5, 0.1, 0.1), False), ((0.6, 0.3, 0.3), False)])
def test_split_fractions_sum_to_one(fractions, ok):
    s, v, t = fractions
    if ok:
        assert SplitSpec(search=s, val=v, test=t).search == s
    else:
        text = f"name: t\nmodel: toy-llava\ndata:\n  source: toyworld\n  split: {{search: {s}, val: {v}, test: {t}}}\n"
        err = only_error(text)
        assert err.startswith("data.split: search + val + test must be 1") and err.endswith("(line 5)"), err


def test_split_fraction_out_of_range():
    err = errors_of("name: t\nmodel: toy-llava\ndata: {source: toyworld, split: {search: 1.2, val: -0.1, test: -0.1}}\n")
    assert any(e.startswith("data.split.search: ") for e in err)


# --- --set overrides ------------------------------------------------------------------------


def test_apply_overrides_nested_and_typed():
    data = {"name": "t", "search": {"strategy": "exact"}}
    out = apply_overrides(
        data,
        ["search.top_k=5", "data.toyworld.images=50", "modulation.clip=[0.5, 1.5]", "seed=3",
         "evaluate.ablation.k=2", "name=with=equals", "workdir=", "edit.recipe=procedural", "search.verify_k=null"],
        "spec.yaml",
    )
    assert out["search"] == {"strategy": "exact", "top_k": 5, "verify_k": None}
    assert out["data"] == {"toyworld": {"images": 50}}  # created on the way
    assert out["modulation"] == {"clip": [0.5, 1.5]}
    assert out["seed"] == 3 and isinstance(out["seed"], int)
    assert out["evaluate"] == {"ablation": {"k": 2}}
    assert out["name"] == "with=equals"  # split at the first '='
    assert out["workdir"] == ""


def test_apply_overrides_yaml_types():
    out = apply_overrides({}, ["a=true", "b=1.5", "c=abc", "d={x: 1}", "e=[1", "f='3'"], "s")
    assert out == {"a": True, "b": 1.5, "c": "abc", "d": {"x": 1}, "e": "[1", "f": "3"}


def test_apply_overrides_bad_forms_all_reported():
    with pytest.raises(SpecError) as info:
        apply_overrides({"name": "t"}, ["seedless", "name.x=1", "ok=1"], "spec.yaml")
    assert info.value.errors == ["--set seedless: expected key=value (e.g. --set seedless=1)", "--set name.x: 'name' is not a section"]
    assert info.value.source == "spec.yaml"


def test_overrides_are_validated(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(BASE + "search: {strategy: exact}\n")
    spec = load_spec(path, ["search.strategy=attribution", "data.toyworld.images=50", "seed=7", "device=cpu"])
    assert (spec.search.strategy, spec.data.toyworld.images, spec.seed, spec.device) == ("attribution", 50, 7, "cpu")
    errs = errors_of(BASE + "search: {strategy: exact}\n", ["search.strategy=fastest", "seed=abc"], tmp_path=tmp_path)
    assert sorted(e.split(":")[0] for e in errs) == ["search.strategy", "seed"]


def test_content_hash_tracks_content():
    a, b = validate(BASE), validate(BASE, ["seed=1"])
    assert a.content_hash() == validate(BASE).content_hash()
    assert a.content_hash() != b.content_hash()


# --- values found only after the whole search before issue 9 ---------------------------------


@pytest.mark.parametrize(
    "extra, path, fragment",
    [
        ("seed: -1\n", "seed", "greater than or equal to 0"),
        ("search: {}\nmodulation: {lam: auto, grid: []}\n", "modulation.grid", "the λ grid is empty"),
        ("search: {}\nmodulation: {lam: auto, grid: [0, .nan, 1]}\n", "modulation.grid", "finite numbers (got nan)"),
        ("search: {}\nmodulation: {lam: auto, grid: [0, .inf]}\n", "modulation.grid", "finite numbers (got inf)"),
        ("search: {}\nmodulation: {lam: .nan}\n", "modulation.lam", "must be a finite number"),
    ],
    ids=["negative-seed", "empty-grid", "nan-grid", "inf-grid", "nan-lam"],
)
def test_unusable_values_are_spec_errors(extra, path, fragment):
    err = only_error(BASE + extra)
    assert err.startswith(f"{path}: ") and fragment in err, err


def test_preflight_reports_every_machine_problem_at_once(tmp_path, monkeypatch):
    """Head counts from the model's config (no weights), the workdir and the extra datasets'
    question files: all found before anything loads, in one error."""
    import vseam_run.vlm
    from vseam_run import pipeline
    from vseam_run.errors import VseamError

    monkeypatch.setattr(vseam_run.vlm.VLM, "load", lambda *a, **k: pytest.fail("the model must not load"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "images").mkdir()
    (tmp_path / "cocoqa_misc.csv").write_text(",id,q,a\n0,1,What is it,cat\n")
    spec = validate(
        BASE
        + "workdir: a-file/work\n"
        + "search: {top_k: 100}\n"
        + "modulation: {policy: topk, k: 49}\n"
        + "evaluate:\n  ablation: {k: 50}\n"
        + "  extra: [{name: odd, source: cocoqa, path: cocoqa_misc.csv, images: images}]\n"
    )
    with pytest.raises(VseamError) as info:
        pipeline.preflight(spec)
    message = str(info.value)
    for fragment in (
        "search.top_k: 100 heads asked for, but toy-llava has 6 layers × 8 heads = 48",
        "modulation.k: 49 heads asked for",
        "evaluate.ablation.k: 50 heads asked for",
        "workdir: a-file/work cannot be a folder: its parent a-file is a file",
        "evaluate.extra.0: cocoqa_misc.csv: cannot tell the question type",
    ):
        assert fragment in message, (fragment, message)
    assert not (tmp_path / "a-file.d").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "cocoqa_misc.csv", "images"]
    # The same spec within the model's 48 heads and a usable workdir passes.
    ok = validate(BASE + "search: {top_k: 48}\nevaluate:\n  ablation: {k: 48}\n")
    entry, device = pipeline.preflight(ok)
    assert entry.name == "toy-llava" and device.type == "cpu"


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root may write anywhere")
def test_unwritable_workdir(tmp_path):
    from vseam_run.checks import workdir_problems

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        (problem,) = workdir_problems(locked / "work")
        assert "workdir: cannot write to" in problem and str(locked) in problem
    finally:
        locked.chmod(0o700)
