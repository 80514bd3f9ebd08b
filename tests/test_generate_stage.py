"""`evaluate.answer_match: generate` through the pipeline on a tiny LLaVA: generated verdicts and
first-token verdicts side by side, the disagreements listed, POPE's two parsers on a toy POPE file —
every recorded number recomputed here from the stored rows."""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from vseam_run import answers
from vseam_run.cli.main import cli
from vseam_run.data import load_questions
from vseam_run.data.toyworld import ToyWorldParams
from vseam_run.store import RunStore

SPEC = """\
name: gen
model: {model}
device: cpu
batch_size: 4
data: {{source: toyworld, toyworld: {{images: 8}}, limit: 16}}
search: {{strategy: exact, scoring: signed}}
modulation: {{policy: topk, k: 3, alpha: 3.0, beta: 0.0}}
evaluate:
  bootstrap: 100
  control_draws: 0
  answer_match: {match}
  max_new_tokens: 3
  extra: [{{name: popetoy, source: pope, path: pope/toy.jsonl, images: pope/images}}]
"""


def run_cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cli([str(a) for a in argv])
    return rc, out.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llava_entry):
    folder = tmp_path_factory.mktemp("generate")
    (folder / "pope" / "images").mkdir(parents=True)
    loaded = load_questions("toyworld", None, None, level="object", toyworld=ToyWorldParams(seed=5, images=6), cache_dir=folder / "c")
    with open(folder / "pope" / "toy.jsonl", "w") as f:
        for i, q in enumerate(q for q in loaded.questions if q.answer in ("yes", "no")):
            q.load_image().save(folder / "pope" / "images" / f"{i}.png")
            f.write(json.dumps({"question_id": i, "image": f"{i}.png", "text": q.question, "label": q.answer}) + "\n")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for match in ("generate", "first_token"):
            (folder / f"{match}.yaml").write_text(SPEC.format(model=tiny_llava_entry, match=match))
            rc, log = run_cli("run", f"{match}.yaml", "--db", f"{match}.db")
            assert rc == 0, log
            with RunStore(folder / f"{match}.db") as store:
                (run,) = store.list_runs()
                rows = {}
                for r in store.question_results(run.id):
                    rows.setdefault(r["stage"], []).append(r)
                out[match] = (run.metrics, store.documents(run.id), rows, log)
    return out


def test_generated_and_first_token_side_by_side(runs):
    m, docs, rows, log = runs["generate"]
    m_ft, _, rows_ft, _ = runs["first_token"]
    for prefix in ("eval.test", "eval.popetoy"):
        for arm in ("baseline", "modulated"):
            stored = rows[f"{prefix}.{arm}"]
            assert all(r["extra"]["answer_match"] == "generate" for r in stored)
            # the first-token verdicts are those of a first_token run of the same spec
            ft = {r["qid"]: r["correct"] for r in rows_ft[f"{prefix}.{arm}"]}
            assert {r["qid"]: r["extra"]["first_token_correct"] for r in stored} == ft
            assert m[f"{prefix}.first_token.accuracy.{arm}"] == pytest.approx(m_ft[f"{prefix}.accuracy.{arm}"])
            # the generated verdicts are the rule applied to the stored text
            rule = stored[0]["extra"]["answer_rule"]
            assert all(r["correct"] == answers.judge(rule, r["extra"]["generated"], r["gold"]) for r in stored)
            assert m[f"{prefix}.accuracy.{arm}"] == pytest.approx(sum(r["correct"] for r in stored) / len(stored))
            n_dis = sum(r["correct"] != r["extra"]["first_token_correct"] for r in stored)
            assert m[f"{prefix}.generate.disagree.{arm}"] == pytest.approx(n_dis / len(stored))
            listed = [d for d in docs[f"{prefix}.generate.disagreements"] if d["arm"] == arm]
            assert len(listed) == n_dis
            assert m[f"{prefix}.generate.first_token_same.{arm}"] == 1.0
            assert m[f"{prefix}.generate.batched.{arm}"] == 1.0
        assert docs[f"{prefix}.answer_rule"]["max_new_tokens"] == 3
    assert docs["eval.test.answer_rule"]["rule"] == "gqa" and docs["eval.popetoy.answer_rule"]["rule"] == "pope"
    # a random tiny model's 3-token answers are never a bare GQA answer: the rules disagree wherever the first token was right
    assert m["eval.test.accuracy.baseline"] == 0.0
    assert "generated vs first-token accuracy" in log
    assert "baseline.first_token.accuracy.baseline" in m and m["baseline.accuracy"] == 0.0


def test_pope_parsers_recorded_from_the_rows(runs):
    m, docs, rows, _ = runs["generate"]
    for arm in ("baseline", "modulated"):
        stored = rows[f"eval.popetoy.{arm}"]
        for parser, parse in answers.POPE_PARSERS.items():
            labels = [parse(r["extra"]["generated"]) for r in stored]
            assert labels == [r["extra"][f"pope_{parser}"] for r in stored]
            want = answers.yes_no_measures([r["gold"] for r in stored], labels)
            for name in ("accuracy", "recall", "yes_ratio"):
                assert m[f"eval.popetoy.pope.{parser}.{name}.{arm}"] == pytest.approx(getattr(want, name), nan_ok=True)
            assert m[f"eval.popetoy.pope.{parser}.unparsed.{arm}"] == want.unparsed
    assert m["eval.popetoy.pope.llava.unparsed.baseline"] == 0  # LLaVA's parser reads everything as yes or no
