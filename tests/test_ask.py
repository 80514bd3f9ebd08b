"""`vseam ask`: base vs modulated answers to one question, on a toy model and on a run."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from vseam_run.cli.main import cli
from vseam_run.data import toyworld
from vseam_run.store import RunStore

SPEC = """\
name: ask
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 8}}, limit: 16}}
search: {{strategy: exact, scoring: signed}}
modulation: {{policy: topk, k: 3, alpha: 3.0, beta: 0.0}}
evaluate: {{bootstrap: 100, control_draws: 0}}
"""


def run_cli(*argv) -> tuple[int, str]:
    """Exit code and what was printed (stdout; with --json, stdout alone, so it parses)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out if "--json" not in argv else err):
        rc = cli([str(a) for a in argv])
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    ex = toyworld.sample_examples(5, 1, 32)[0]
    path = tmp_path_factory.mktemp("ask") / "scene.png"
    ex.image.save(path)
    return path, ex


def test_ask_a_toy_model(image):
    path, ex = image
    rc, out = run_cli("ask", "--model", "toy-llava", "--image", path, "--question", ex.question, "--json")
    assert rc == 0, out
    res = json.loads(out)
    probs = [p for _, p in res["base"]["top5"]]
    assert len(probs) == 5 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
    # the trained toy model answers with its first token: the generated answer starts with the top-1 token
    assert res["base"]["text"].split()[0] == res["base"]["top5"][0][0].lstrip("▁")
    assert res["modulated"] is None
    rc, out = run_cli("ask", "--model", "toy-llava", "--image", path, "--question", ex.question)
    assert rc == 0 and "first token top 1" in out and "no modulation" in out


def test_ask_a_run(tmp_path, tiny_llava_entry, image, monkeypatch):
    path, ex = image
    (tmp_path / "spec.yaml").write_text(SPEC.format(model=tiny_llava_entry))
    monkeypatch.chdir(tmp_path)
    rc, out = run_cli("run", "spec.yaml", "--db", "runs.db")
    assert rc == 0, out
    rc, out = run_cli("ask", "latest", "--image", path, "--question", ex.question, "--json", "--db", "runs.db")
    assert rc == 0, out
    res = json.loads(out)
    with RunStore(tmp_path / "runs.db") as store:
        (run,) = store.list_runs()
        changed = run.metrics["modulation.heads_changed"]
    assert len(res["heads"]) == changed > 0
    assert {h["scale"] for h in res["heads"]} <= {3.0, 0.0}  # topk: positive heads × 3, negative heads × 0
    assert res["base"]["top5"] != res["modulated"]["top5"]  # alpha 3 on 3 heads moves the first token's probabilities
    rc, out = run_cli("ask", "latest", "--image", path, "--question", ex.question, "--db", "runs.db")
    assert rc == 0 and "heads changed" in out and "modulated" in out


def test_ask_errors(image):
    path, ex = image
    rc, out = run_cli("ask", "--image", path, "--question", "q")
    assert rc == 2 and "name a run or give --model" in out
    rc, out = run_cli("ask", "--model", "toy-llava", "--image", path.parent / "missing.png", "--question", "q")
    assert rc == 2 and "cannot read it as an image" in out
