"""`vseam` end to end, in-process through `vseam_run.cli.main.cli`, on tiny random models.

Every test works in its own tmp folder (cwd and --db), so nothing is written into the repo.
Bad input must end with exit code 2 and a short message naming the file / field / item,
never a traceback; a run that breaks mid-way keeps what it computed and can be resumed.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from vseam_run import pipeline
from vseam_run.cli.main import cli
from vseam_run.store import RunStore

FULL_SPEC = """\
name: e2e
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 24}}}}
edit: {{recipe: procedural}}
# signed scoring: a random tiny model answers (almost) nothing right, so the paper's subset
# scoring would have no positive heads to report or ablate.
search: {{strategy: exact, scoring: signed}}
modulation: {{policy: linear, lam: auto}}
evaluate: {{ablation: {{k: 2, trials: 2}}, bootstrap: 200}}
"""

# Baseline only, on the first 16 questions: the cheap spec of the tests that need a run but
# not the whole method.
BASELINE_SPEC = """\
name: {name}
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 24}}, limit: 16}}
"""


def call(capsys, *argv: str) -> tuple[int, str, str]:
    """Run `vseam ARGV` in-process; returns (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed before
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def show_json(capsys, db: Path, run: str = "latest") -> dict:
    rc, out, err = call(capsys, "show", run, "--db", db, "--json")
    assert rc == 0, err
    return json.loads(out)


def assert_user_error(rc: int, out: str, err: str, *fragments: str, max_lines: int = 5) -> None:
    """Exit 2, a short message containing every fragment, and no traceback."""
    assert rc == 2, (rc, out, err)
    text = out + err
    assert "Traceback" not in text and 'File "' not in text, text
    assert err.startswith("error:"), err
    lines = err.strip().splitlines()
    assert 1 <= len(lines) <= max_lines, err
    for f in fragments:
        assert f in err, (f, err)


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# --- the full pipeline, run once for the module -------------------------------------------------


@pytest.fixture(scope="module")
def full_run_output(tmp_path_factory, tiny_llava_entry) -> tuple[Path, Path, str, str]:
    """(folder, db, run id, stdout) of one full run: edits, exact search, λ auto, evaluation, ablation."""
    folder = tmp_path_factory.mktemp("full")
    spec = folder / "spec.yaml"
    spec.write_text(FULL_SPEC.format(model=tiny_llava_entry))
    db = folder / "runs.db"
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout):
        mp.chdir(folder)
        rc = cli(["run", str(spec), "--db", str(db)])
    assert rc == 0, stdout.getvalue()
    with RunStore(db) as store:
        (record,) = store.list_runs()
    return folder, db, record.id, stdout.getvalue()


@pytest.fixture
def full_run(full_run_output) -> tuple[Path, Path, str]:
    return full_run_output[:3]


def test_full_run_show_json(capsys, full_run):
    folder, db, run_id = full_run
    shown = show_json(capsys, db)
    assert shown["run_id"] == run_id and shown["status"] == "succeeded" and shown["error"] is None
    m = shown["metrics"]
    for name in (
        "baseline.accuracy", "baseline.gold_prob", "search.seconds", "modulation.lambda",
        "eval.test.accuracy.baseline", "eval.test.accuracy.modulated",
        "eval.test.accuracy.diff_ci_low", "eval.test.accuracy.diff_ci_high", "eval.test.mcnemar_p",
        "eval.test.gold_prob.baseline", "eval.test.gold_prob.modulated",
        "ablation.positive.accuracy_drop", "ablation.negative.accuracy_drop",
        "ablation.random.accuracy_drop", "ablation.random.accuracy_drop_std",
    ):  # fmt: skip
        assert isinstance(m.get(name), float), name
    assert 0 <= m["baseline.accuracy"] <= 1 and 0 < m["baseline.gold_prob"] < 1
    assert m["eval.test.accuracy.diff_ci_low"] <= m["eval.test.accuracy.diff_ci_high"]
    assert 0 <= m["eval.test.mcnemar_p"] <= 1
    assert m["modulation.lambda"] in [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]  # from the default grid
    assert m["ablation.random.accuracy_drop_std"] >= 0
    assert 0 <= m["check.max_prob_diff"] <= 1e-4  # the self-check ran before any number and is recorded
    # Counts agree with each other: splits partition the questions, search covers its split.
    assert m["data.search"] + m["data.val"] + m["data.test"] == m["data.questions"] > 0
    assert m["search.questions"] == m["data.search"] == m["search.correct"] + m["search.wrong"]
    assert m["eval.test.n"] == m["data.test"]

    heads = shown["heads"]
    for kind in ("positive", "negative", "signed"):
        matrix = heads[kind]
        assert len(matrix) == 3 and all(len(row) == 4 for row in matrix), kind  # [layers][heads]
    top = heads["top"]["positive"]
    assert top, "signed scoring of a random model has some heads that help the gold answer"
    scores = [s for _, _, s in top]
    assert scores == sorted(scores, reverse=True)
    for layer, head, score in top:
        assert 0 <= layer < 3 and 0 <= head < 4
        assert score == pytest.approx(heads["signed"][layer][head]) and score > 0
    for layer, head, score in heads["top"]["negative"]:
        assert score == pytest.approx(-heads["signed"][layer][head]) and score > 0

    # Artifacts were written under the run's workdir (the cwd of the run), not the repo.
    assert {"heatmap.positive", "heatmap.negative", "heatmap.signed"} <= {a["kind"] for a in shown["artifacts"]}
    for a in shown["artifacts"]:
        assert Path(a["path"]).is_file() and Path(a["path"]).is_relative_to(folder)
    assert shown["question_results"]["baseline"]["questions"] == m["data.questions"]


def test_full_run_human_output(capsys, full_run):
    _, db, run_id = full_run
    rc, out, _ = call(capsys, "show", run_id, "--db", db)
    assert rc == 0 and run_id in out and "succeeded" in out and "baseline" in out


def test_full_run_console_summary(full_run_output):
    _, _, run_id, out = full_run_output
    assert f"run {run_id} succeeded" in out
    assert "baseline.accuracy" in out and "eval.test.accuracy.modulated" in out
    assert "Traceback" not in out


def test_full_run_ablation_log_line_is_readable(full_run_output):
    out = full_run_output[3]
    (line,) = [l for l in out.splitlines() if "ablation (k=" in l]
    assert "−-" not in line and "nan" not in line, line


def test_runs_json_lists_it(capsys, full_run):
    _, db, run_id = full_run
    rc, out, err = call(capsys, "runs", "--db", db, "--json")
    assert rc == 0, err
    (item,) = json.loads(out)
    assert item["run_id"] == run_id and item["status"] == "succeeded" and item["name"] == "e2e"
    rc, out, _ = call(capsys, "runs", "--db", db)
    assert rc == 0 and run_id in out


def test_baseline_metrics_match_stored_question_results(full_run):
    _, db, run_id = full_run
    with RunStore(db) as store:
        record = store.get_run(run_id)
        rows = store.question_results(run_id, "baseline")
        test_base = store.question_results(run_id, "eval.test.baseline")
        test_mod = store.question_results(run_id, "eval.test.modulated")
    assert len(rows) == record.metrics["data.questions"]
    assert record.metrics["baseline.accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / len(rows))
    assert record.metrics["baseline.gold_prob"] == pytest.approx(sum(r["gold_prob"] for r in rows) / len(rows))
    assert record.metrics["eval.test.accuracy.modulated"] == pytest.approx(sum(r["correct"] for r in test_mod) / len(test_mod))
    # The test split's baseline is the same model on the same questions: the same numbers.
    by_qid = {r["qid"]: r for r in rows}
    for r in test_base:
        assert r["gold_prob"] == pytest.approx(by_qid[r["qid"]]["gold_prob"], abs=1e-5)
        assert r["split"] == "test"


def test_gold_prob_matches_plain_transformers(full_run, tiny_llava_entry):
    """Independent check of the scoring: one question at a time, straight through transformers."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from vseam_run.data import ToyWorldParams, load_questions

    folder, db, run_id = full_run
    with RunStore(db) as store:
        rows = store.question_results(run_id, "baseline")[:4]
    questions = {q.qid: q for q in load_questions(
        "toyworld", None, None, toyworld=ToyWorldParams(seed=0, images=24, image_size=32),
        cache_dir=folder / ".vseam" / "cache").questions}  # fmt: skip
    ckpt = tiny_llava_entry.parent / "ckpt"
    processor = AutoProcessor.from_pretrained(ckpt)
    model = LlavaForConditionalGeneration.from_pretrained(ckpt).eval()
    for row in rows:
        q = questions[row["qid"]]
        inputs = processor(images=[q.load_image()], text=[f"<image> {q.question} answer:"], return_tensors="pt")
        with torch.no_grad():
            probs = model(**inputs).logits[0, -1].float().softmax(-1)
        gold = processor.tokenizer.convert_tokens_to_ids(q.answer)
        assert row["gold"] == q.answer
        assert row["gold_prob"] == pytest.approx(probs[gold].item(), rel=1e-4, abs=1e-6)
        assert row["pred"] == processor.tokenizer.convert_ids_to_tokens(int(probs.argmax()))
        assert row["correct"] == (int(probs.argmax()) == gold)


def test_compare_two_runs_differing_by_seed(capsys, here, tiny_llava_entry):
    spec = here / "spec.yaml"
    spec.write_text(BASELINE_SPEC.format(name="base", model=tiny_llava_entry))
    db = here / "runs.db"
    assert call(capsys, "run", spec, "--db", db)[0] == 0
    assert call(capsys, "run", spec, "--db", db, "--set", "seed=1")[0] == 0
    rc, out, err = call(capsys, "runs", "--db", db, "--json")
    newer, older = (r["run_id"] for r in json.loads(out))
    rc, out, err = call(capsys, "compare", older, newer, "--db", db, "--json")
    assert rc == 0, err
    cmp = json.loads(out)
    diff = {d["field"]: tuple(d["values"]) for d in cmp["spec_diff"]}
    assert diff == {"seed": (0, 1)}
    # seed is a spec field: listed there once, not again among the environment differences (issue 24 item 9)
    assert all(d["field"] != "seed" for d in cmp["env_diff"])
    assert any(m["name"] == "baseline.accuracy" for m in cmp["metrics"])
    # the toy world follows the run's seed: the runs share no questions, and compare says so
    assert [u["reason"] for u in cmp["unpaired"]] == ["the runs share no questions: the toy world was generated from different seeds"]
    rc, out, _ = call(capsys, "compare", older, newer, "--db", db)
    assert rc == 0 and "seed" in out and "no paired test A vs B: the runs share no questions" in out


def test_instructblip_baseline(capsys, here, tiny_instructblip_entry):
    spec = here / "spec.yaml"
    spec.write_text(BASELINE_SPEC.format(name="ib", model=tiny_instructblip_entry))
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert rc == 0, err
    assert "succeeded" in out
    shown = show_json(capsys, here / "runs.db")
    assert shown["status"] == "succeeded" and shown["model"] == "tiny-instructblip"
    assert 0 <= shown["metrics"]["baseline.accuracy"] <= 1
    assert shown["question_results"]["baseline"]["questions"] == shown["metrics"]["data.questions"]


def test_module_help():
    proc = subprocess.run([sys.executable, "-m", "vseam_run", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("run", "validate", "models", "runs", "show", "compare"):
        assert command in proc.stdout


# --- bad input: exit 2, a short message naming the problem, no traceback ------------------------


def write_spec(folder: Path, model: Path | str, extra: str = "", data: str = "{source: toyworld, toyworld: {images: 24}}") -> Path:
    path = folder / "spec.yaml"
    path.write_text(f"name: bad\nmodel: {model}\ndevice: cpu\ndata: {data}\n{extra}")
    return path


def test_yaml_syntax_error(capsys, here, tiny_llava_entry):
    spec = write_spec(here, tiny_llava_entry, "search: {strategy: exact\n")
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert_user_error(rc, out, err, str(spec), "YAML syntax error", "line 6")


def test_unknown_key(capsys, here, tiny_llava_entry):
    spec = write_spec(here, tiny_llava_entry, "search: {stratgy: exact}\n")
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert_user_error(rc, out, err, str(spec), "search.stratgy: unknown field; did you mean 'strategy'?", "(line 5)")


def test_wrong_type(capsys, here, tiny_llava_entry):
    spec = write_spec(here, tiny_llava_entry, "seed: abc\n")
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert_user_error(rc, out, err, str(spec), "seed: ", "valid integer", "(line 5)")


def test_wrong_type_from_set(capsys, here, tiny_llava_entry):
    spec = write_spec(here, tiny_llava_entry)
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db", "--set", "batch_size=many")
    assert_user_error(rc, out, err, "batch_size: ", "valid integer")


def test_unknown_model(capsys, here):
    spec = write_spec(here, "llava-1.5-7")
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert_user_error(rc, out, err, str(spec), "model: unknown model 'llava-1.5-7'", "did you mean llava-1.5-7b")


def test_model_weights_missing(capsys, here, tiny_llava_entry):
    entry = here / "nowhere.yaml"
    entry.write_text(tiny_llava_entry.read_text().replace("path: ckpt", "path: no-such-ckpt"))
    rc, out, err = call(capsys, "run", write_spec(here, entry), "--db", here / "runs.db")
    assert_user_error(rc, out, err, "no-such-ckpt")


def test_missing_data_file(capsys, here, tiny_llava_entry):
    (here / "images").mkdir()
    spec = write_spec(here, tiny_llava_entry, data="{source: gqa, path: gone/questions.json, images: images}")
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert_user_error(rc, out, err, "data.path: question file not found: gone/questions.json")


def test_message_with_brackets_is_printed_verbatim(capsys, here, tiny_llava_entry):
    """Messages are plain text: a path like [old]/q.json must not be eaten as rich markup."""
    (here / "images").mkdir()
    spec = write_spec(here, tiny_llava_entry, data="{source: gqa, path: '[old]/q.json', images: images}")
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert_user_error(rc, out, err, "[old]/q.json")
    spec = write_spec(here, tiny_llava_entry, data="{source: gqa, path: '[/old]/q.json', images: images}")
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert_user_error(rc, out, err, "[/old]/q.json")


# A tiny GQA file in the toy world's vocabulary (the tiny models know its words).
GQA_RECORDS = [
    {"question_id": "q1", "imageId": "img1", "question": "Is there a circle?", "answer": "yes", "types": {"semantic": "obj"}},
    {"question_id": "q2", "imageId": "img2", "question": "Is there a square?", "answer": "no", "types": {"semantic": "obj"}},
    {"question_id": "q3", "imageId": "img3", "question": "Is there a circle?", "answer": "no", "types": {"semantic": "obj"}},
]


def gqa_folder(folder: Path, *, missing: str | None = None, corrupt: str | None = None) -> tuple[Path, Path]:
    images = folder / "images"
    images.mkdir()
    for i, rec in enumerate(GQA_RECORDS):
        image_id = rec["imageId"]
        if image_id == missing:
            continue
        if image_id == corrupt:
            (images / f"{image_id}.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really an image")
            continue
        Image.new("RGB", (32, 32), (40 * i, 200, 90)).save(images / f"{image_id}.png")
    questions = folder / "questions.json"
    questions.write_text(json.dumps(GQA_RECORDS))
    return questions, images


def test_missing_image_is_an_error_by_default(capsys, here, tiny_llava_entry):
    gqa_folder(here, missing="img3")
    spec = write_spec(here, tiny_llava_entry, data="{source: gqa, path: questions.json, images: images}")
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert_user_error(rc, out, err, "question q3", "img3", "on_missing_image: skip")


def test_missing_image_skipped_and_counted(capsys, here, tiny_llava_entry):
    gqa_folder(here, missing="img3")
    data = "{source: gqa, path: questions.json, images: images, on_missing_image: skip}"
    spec = write_spec(here, tiny_llava_entry, data=data)
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert rc == 0, err
    shown = show_json(capsys, here / "runs.db")
    assert shown["status"] == "succeeded"
    assert shown["metrics"]["data.skipped"] == 1 and shown["metrics"]["data.questions"] == 2
    (skipped,) = shown["skipped"]
    assert skipped["qid"] == "q3" and "missing image" in skipped["reason"]
    assert shown["question_results"]["baseline"]["questions"] == 2


def test_corrupt_image(capsys, here, tiny_llava_entry):
    gqa_folder(here, corrupt="img2")
    spec = write_spec(here, tiny_llava_entry, data="{source: gqa, path: questions.json, images: images}")
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert_user_error(rc, out, err, "question q2", "corrupt image", "img2.png")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("how", ["spec", "option"])
def test_cuda_on_cpu_machine_fails_before_loading(capsys, here, tiny_llava_entry, monkeypatch, how):
    def no_loading(*a, **k):
        raise AssertionError("nothing may be loaded when the device is unavailable")

    monkeypatch.setattr(pipeline.VLM, "load", no_loading)
    monkeypatch.setattr(pipeline, "load_questions", no_loading)
    if how == "spec":
        spec = write_spec(here, tiny_llava_entry).read_text().replace("device: cpu", "device: cuda")
        (here / "spec.yaml").write_text(spec)
        argv = ["run", here / "spec.yaml", "--db", here / "runs.db"]
    else:
        argv = ["run", write_spec(here, tiny_llava_entry), "--db", here / "runs.db", "--device", "cuda:0"]
    rc, out, err = call(capsys, *argv)
    assert_user_error(rc, out, err, "device", "cuda", "no CUDA GPU")
    with RunStore(here / "runs.db") as store:
        assert store.count_runs() == 0  # nothing was started
    assert not (here / ".vseam").exists()


def test_unwritable_db(capsys, here, tiny_llava_entry):
    blocker = here / "a-file"
    blocker.write_text("not a folder")
    rc, out, err = call(capsys, "run", write_spec(here, tiny_llava_entry), "--db", blocker / "runs.db")
    assert_user_error(rc, out, err, str(blocker / "runs.db"), "--db")


def test_db_is_a_directory(capsys, here, tiny_llava_entry):
    rc, out, err = call(capsys, "run", write_spec(here, tiny_llava_entry), "--db", here)
    assert_user_error(rc, out, err, "is a directory")


def test_missing_spec_file(capsys, here):
    rc, out, err = call(capsys, "run", here / "nope.yaml", "--db", here / "runs.db")
    assert_user_error(rc, out, err, "nope.yaml: file not found")


def test_validate_command(capsys, here, tiny_llava_entry):
    good = write_spec(here, tiny_llava_entry)
    bad = here / "bad.yaml"
    bad.write_text("name: x\nmodel: toy-llava\ndata: {source: toyworld}\nseed: abc\nserch: {}\n")
    rc, out, err = call(capsys, "validate", good)
    assert rc == 0 and "ok" in out
    rc, out, err = call(capsys, "validate", good, bad)
    assert rc == 2 and "Traceback" not in out + err
    assert "seed: " in err and "serch: unknown field; did you mean 'search'?" in err and str(bad) in err


# --- runs that break mid-way --------------------------------------------------------------------

SEARCH_SPEC = BASELINE_SPEC + "search: {{strategy: exact, scoring: signed}}\n"


def test_failure_mid_way_is_recorded(capsys, here, tiny_llava_entry, monkeypatch):
    def broken_search(self, *args):
        raise RuntimeError("search exploded")

    monkeypatch.setattr(pipeline._Stages, "_search", broken_search)
    spec = here / "spec.yaml"
    spec.write_text(SEARCH_SPEC.format(name="fails", model=tiny_llava_entry))
    with pytest.raises(RuntimeError, match="search exploded"):  # a bug, not bad input: it propagates
        cli(["run", str(spec), "--db", str(here / "runs.db")])
    shown = show_json(capsys, here / "runs.db")
    assert shown["status"] == "failed"
    assert shown["error"]["message"] == "RuntimeError: search exploded"
    assert "broken_search" in shown["error"]["traceback"]
    assert shown["finished_at"] is not None
    # What was computed before the failure is kept.
    assert "baseline.accuracy" in shown["metrics"] and "data.questions" in shown["metrics"]
    assert "search.seconds" not in shown["metrics"]
    assert shown["question_results"]["baseline"]["questions"] == shown["metrics"]["data.questions"]
    rc, out, _ = call(capsys, "show", "latest", "--db", here / "runs.db")
    assert rc == 0 and "search exploded" in out


def test_interrupt_then_resume(capsys, here, tiny_llava_entry, monkeypatch):
    spec = here / "spec.yaml"
    spec.write_text(SEARCH_SPEC.format(name="resumable", model=tiny_llava_entry))
    db = here / "runs.db"
    real_save = pipeline.StageCheckpointer.save
    saved: list[str] = []

    def save_then_interrupt(self, key, payload):
        real_save(self, key, payload)
        saved.append(key)
        raise KeyboardInterrupt  # Ctrl-C right after the first layer of the search is stored

    monkeypatch.setattr(pipeline.StageCheckpointer, "save", save_then_interrupt)
    rc, out, err = call(capsys, "run", spec, "--db", db)
    assert rc == 130 and "Traceback" not in out + err
    assert "--resume" in out
    shown = show_json(capsys, db)
    run_id = shown["run_id"]
    assert shown["status"] == "interrupted" and "interrupted" in shown["error"]["message"]
    assert "baseline.accuracy" in shown["metrics"] and "search.seconds" not in shown["metrics"]
    assert saved == ["exact:0"]

    def save_and_note(self, key, payload):
        real_save(self, key, payload)
        saved.append(key)

    monkeypatch.setattr(pipeline.StageCheckpointer, "save", save_and_note)
    rc, out, err = call(capsys, "run", "--resume", run_id, "--db", db)
    assert rc == 0, err
    assert saved == ["exact:0", "exact:1", "exact:2"]  # layer 0 came from the checkpoint
    shown = show_json(capsys, db, run_id)
    assert shown["status"] == "succeeded" and shown["resume_count"] == 1 and shown["error"] is None
    assert len(shown["heads"]["signed"]) == 3
    with RunStore(db) as store:
        assert store.count_runs() == 1  # resumed in place, not a new run

    # The resumed search gives the numbers an uninterrupted run gives.
    rc, _, err = call(capsys, "run", spec, "--db", here / "fresh.db")
    assert rc == 0, err
    fresh = show_json(capsys, here / "fresh.db")
    for fresh_row, resumed_row in zip(fresh["heads"]["signed"], shown["heads"]["signed"], strict=True):
        assert fresh_row == pytest.approx(resumed_row, abs=1e-7)

    # A succeeded run has nothing to resume.
    rc, out, err = call(capsys, "run", "--resume", run_id, "--db", db)
    assert_user_error(rc, out, err, "already succeeded")


# --- usage errors: usage line + message, exit 2, never a traceback (issue 9) --------------------


@pytest.mark.parametrize(
    "argv, fragment",
    [
        ([], "Usage: vseam"),  # bare `vseam`: the help, on stderr, exit 2
        (["nope"], "No such command 'nope'"),
        (["--bogus"], "No such option: --bogus"),
        (["runs", "--bogus"], "No such option: --bogus"),
        (["show"], "Missing argument"),
        (["runs", "--limit", "abc"], "Invalid value for '--limit'"),
        (["compare", "only-one"], "compare needs at least two runs"),
        (["specs", "cp"], "Missing argument"),
    ],
    ids=["bare", "unknown-command", "unknown-option", "unknown-sub-option", "missing-arg", "limit-abc", "compare-one", "specs-cp"],
)
def test_usage_errors_exit_2_without_traceback(capsys, argv, fragment):
    rc, out, err = call(capsys, *argv)
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err and 'File "' not in out + err
    assert "Usage: vseam" in out + err and fragment in out + err, (out, err)


def test_usage_error_in_a_real_process():
    """The installed entry point, not just the in-process function: exit 2, usage on stderr."""
    proc = subprocess.run([sys.executable, "-m", "vseam_run", "runs", "--limit", "abc"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc
    assert "Usage: vseam runs" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_version(capsys):
    from vseam_run import __version__

    rc, out, err = call(capsys, "--version")
    assert rc == 0 and out.strip() == f"vseam {__version__}", (out, err)


def test_usage_errors_are_caught_by_behaviour_whatever_click_raised_them(capsys, monkeypatch):
    """A click-like exception from a click the code does not import (e.g. typer's vendored
    copy in another version): recognised by `.show()` and `.exit_code`, not by class."""
    from vseam_run.cli import main

    class ForeignUsageError(Exception):
        exit_code = 2

        def show(self) -> None:
            print("Usage: vseam runs [OPTIONS]\nError: from a foreign click", file=sys.stderr)

    def raise_foreign(*a, **k):
        raise ForeignUsageError()

    from vseam_run.cli import runs

    call(capsys, "--help")  # registers the commands
    monkeypatch.setattr(runs, "open_registry", raise_foreign)
    rc, out, err = call(capsys, "runs")
    assert rc == 2 and "from a foreign click" in err and "Traceback" not in err
    # typer's Exit/Abort and click's (when click is installed) are both handled as such.
    import typer

    assert typer.Exit in main._EXIT and typer.Abort in main._ABORT
    try:
        import click
    except ImportError:
        pass
    else:
        assert click.exceptions.Exit in main._EXIT and click.exceptions.Abort in main._ABORT


def test_ctrl_c_before_a_run_starts_prints_one_line(capsys, here, tiny_llava_entry, monkeypatch):
    def interrupted(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "preflight", interrupted)
    rc, out, err = call(capsys, "run", write_spec(here, tiny_llava_entry), "--db", here / "runs.db")
    assert rc == 130
    assert "Traceback" not in out + err
    assert (out + err).strip() == "interrupted"
    assert not (here / "runs.db").exists()  # nothing was started, nothing created


def test_ctrl_c_during_a_run_prints_one_line(capsys, here, tiny_llava_entry, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.ScoredSet, "score_once", interrupted)  # Ctrl-C in the baseline
    spec = here / "spec.yaml"
    spec.write_text(BASELINE_SPEC.format(name="ctrl-c", model=tiny_llava_entry))
    rc, out, err = call(capsys, "run", spec, "--db", here / "runs.db")
    assert rc == 130 and "Traceback" not in out + err
    lines = [l for l in (out + err).splitlines() if "interrupt" in l]
    assert len(lines) == 1 and "--resume" in lines[0], out + err


# --- the run registry is opened only for an accepted spec (issue 9) ------------------------------


def test_empty_db_is_refused(capsys, here, tiny_llava_entry):
    rc, out, err = call(capsys, "run", write_spec(here, tiny_llava_entry), "--db", "")
    assert_user_error(rc, out, err, "--db is empty")
    assert sorted(p.name for p in here.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize(
    "extra", ["serch: {}\n", "evaluate: {ablation: {k: 500}}\nsearch: {}\n"], ids=["invalid-spec", "preflight-problem"]
)
def test_no_registry_file_for_a_rejected_spec(capsys, here, tiny_llava_entry, extra):
    rc, out, err = call(capsys, "run", write_spec(here, tiny_llava_entry, extra), "--db", here / "new.db")
    assert rc == 2 and "Traceback" not in out + err
    assert not (here / "new.db").exists() and not (here / ".vseam").exists()


def test_resume_does_not_create_a_registry(capsys, here):
    rc, out, err = call(capsys, "run", "--resume", "latest", "--db", here / "nowhere.db")
    assert_user_error(rc, out, err, "no run registry at")
    assert not (here / "nowhere.db").exists()


# --- shipped specs: `vseam specs`, `vseam run NAME` (issue 9) -------------------------------------


def test_specs_list_show_and_copy(capsys, here):
    from vseam_run.shipped import shipped_specs

    rc, out, _ = call(capsys, "specs", "--json")
    listed = {s["name"]: s for s in json.loads(out)}
    assert rc == 0 and "quickstart" in listed and set(listed) == set(shipped_specs())
    assert listed["quickstart"]["description"].startswith("The quickstart")
    rc, out, _ = call(capsys, "specs", "show", "quickstart")
    assert rc == 0 and out == shipped_specs()["quickstart"].read_text()

    rc, out, _ = call(capsys, "specs", "cp", "quickstart")
    assert rc == 0 and (here / "quickstart.yaml").read_text() == shipped_specs()["quickstart"].read_text()
    (here / "exp").mkdir()
    rc, out, _ = call(capsys, "specs", "cp", "toy_llava_object", "exp")
    assert rc == 0 and (here / "exp" / "toy_llava_object.yaml").is_file()
    rc, out, err = call(capsys, "specs", "cp", "quickstart")  # never overwrites silently
    assert_user_error(rc, out, err, "quickstart.yaml already exists", "--force")
    (here / "quickstart.yaml").write_text("edited")
    rc, out, _ = call(capsys, "specs", "cp", "quickstart", "--force")
    assert rc == 0 and (here / "quickstart.yaml").read_text() != "edited"
    rc, out, err = call(capsys, "specs", "cp", "quikstart", "x.yaml")
    assert_user_error(rc, out, err, "no shipped spec named 'quikstart'", "did you mean quickstart")


def test_a_bare_name_runs_the_shipped_spec_from_any_folder(capsys, here, monkeypatch):
    from vseam_run.shipped import resolve_spec, shipped_specs

    assert resolve_spec(Path("quickstart")) == shipped_specs()["quickstart"]
    assert resolve_spec(Path("quickstart.yaml")) == shipped_specs()["quickstart"]
    (here / "quickstart.yaml").write_text("a local file wins")
    assert resolve_spec(Path("quickstart.yaml")) == Path("quickstart.yaml")
    assert resolve_spec(Path("sub/quickstart.yaml")) == Path("sub/quickstart.yaml")  # a path stays a path
    rc, out, err = call(capsys, "validate", "toy_llava_object")  # the full check, from this folder
    assert rc == 0 and "ok" in out, err
    # `vseam run NAME` reads the shipped file (stopped right after the spec is loaded).
    seen = []
    monkeypatch.setattr(pipeline, "preflight", lambda spec: seen.append(spec.name) or (_ for _ in ()).throw(KeyboardInterrupt))
    rc, out, err = call(capsys, "run", "quickstart", "--db", here / "runs.db")
    assert rc == 130 and seen == ["quickstart"]
    rc, out, err = call(capsys, "run", "quikstart", "--db", here / "runs.db")
    assert_user_error(rc, out, err, "did you mean quickstart")


# --- zoo train writes to a user folder (issue 9) --------------------------------------------------


def test_zoo_train_writes_to_a_user_folder(capsys, here, monkeypatch):
    import vseam_run.zoo.train as zoo_train
    from vseam_run.registry import get_entry

    targets: list[Path] = []

    def fake_train(name, out_dir, **kwargs):  # the training itself is tested in test_zoo.py
        targets.append(Path(out_dir))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return {"steps_run": 0, "train_seconds": 0.0, "held_out_accuracy": {"overall": 1.0}}

    monkeypatch.setattr(zoo_train, "train", fake_train)
    monkeypatch.setenv("VSEAM_ZOO", str(here / "zoo"))
    rc, out, err = call(capsys, "zoo", "train", "toy-llava")
    assert rc == 0, err
    assert targets == [here / "zoo" / "toy-llava"]
    entry = get_entry(str(here / "zoo" / "toy-llava" / "entry.yaml"))
    assert entry.resolved_path() == here / "zoo" / "toy-llava" and "entry.yaml" in out
    rc, out, err = call(capsys, "zoo", "train", "toy-llava", "--out", "mine")
    assert rc == 0 and targets[-1] == here / "mine"
    rc, out, err = call(capsys, "zoo", "train", "toy-llava", "--in-place")
    assert rc == 0 and targets[-1] == zoo_train.ZOO_DIR / "toy-llava"
    monkeypatch.delenv("VSEAM_ZOO")
    monkeypatch.setenv("HOME", str(here / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    rc, out, err = call(capsys, "zoo", "train", "toy-instructblip")
    assert rc == 0 and targets[-1] == here / "home" / ".cache" / "vseam" / "zoo" / "toy-instructblip"
