"""The modulation as a file: `vseam export RUN --modulation`, and `apply_modulation` on a plain
transformers model giving the run's own numbers (scoring and generate()), refusing other models."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import torch
import transformers

import vseam_run
from vseam_run.cli.main import cli
from vseam_run.data import load_questions
from vseam_run.data.toyworld import ToyWorldParams
from vseam_run.errors import VseamError
from vseam_run.store import RunStore

SPEC = """\
name: modfile
model: {model}
device: cpu
batch_size: 8
data: {{source: toyworld, toyworld: {{images: 10}}, limit: 20}}
search: {{strategy: exact, scoring: signed}}
modulation: {{policy: {policy}}}
evaluate: {{bootstrap: 100, control_draws: 0}}
"""

POLICIES = {"topk": "topk, k: 3, alpha: 3.0, beta: 0.0", "learned": "learned, positions: last_vs_rest, epochs: 2, lr: 0.5"}


def run_cli(*argv) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = cli([str(a) for a in argv])
    return rc, out.getvalue()


@pytest.fixture(scope="module", params=sorted(POLICIES))
def exported(request, tmp_path_factory, tiny_llava_entry):
    folder = tmp_path_factory.mktemp(f"modfile-{request.param}")
    (folder / "spec.yaml").write_text(SPEC.format(model=tiny_llava_entry, policy=POLICIES[request.param]))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        rc, out = run_cli("run", "spec.yaml", "--db", "runs.db")
        assert rc == 0, out
        rc, out = run_cli("export", "latest", "--modulation", "-o", "mod.safetensors", "--db", "runs.db")
        assert rc == 0, out
        assert "wrote mod.safetensors" in out
    with RunStore(folder / "runs.db") as store:
        (run,) = store.list_runs()
        rows = {s: {r["qid"]: r for r in store.question_results(run.id, s)} for s in ("eval.test.baseline", "eval.test.modulated")}
    return folder, rows


def _plain_model(entry_path: Path):
    ckpt = entry_path.parent / "ckpt"
    model = transformers.LlavaForConditionalGeneration.from_pretrained(ckpt, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(ckpt)
    processor.tokenizer.padding_side = "left"
    return model, processor


def _questions(folder: Path, qids):
    loaded = load_questions("toyworld", None, None, toyworld=ToyWorldParams(seed=0, images=10), cache_dir=folder / ".vseam" / "cache")
    by = {q.qid: q for q in loaded.questions}
    return [by[q] for q in qids]


def _gold_probs(model, processor, questions) -> list[float]:
    out = []
    with torch.no_grad():
        for q in questions:
            inputs = processor(images=[q.load_image()], text=[f"<image> {q.question} answer:"], return_tensors="pt")
            probs = model(**inputs).logits[0, -1].softmax(-1)
            out.append(float(probs[processor.tokenizer.convert_tokens_to_ids(q.answer.lower())]))
    return out


def test_apply_modulation_gives_the_runs_numbers(exported, tiny_llava_entry):
    folder, rows = exported
    model, processor = _plain_model(tiny_llava_entry)
    qids = list(rows["eval.test.modulated"])
    questions = _questions(folder, qids)
    base_run = [rows["eval.test.baseline"][q]["gold_prob"] for q in qids]
    mod_run = [rows["eval.test.modulated"][q]["gold_prob"] for q in qids]
    assert max(abs(a - b) for a, b in zip(base_run, mod_run)) > 1e-3  # the modulation changes the numbers
    with vseam_run.apply_modulation(model, folder / "mod.safetensors") as m:
        assert m is model
        mod_here = _gold_probs(model, processor, questions)
    base_here = _gold_probs(model, processor, questions)  # the hooks are gone after the block
    assert mod_here == pytest.approx(mod_run, abs=1e-5)
    assert base_here == pytest.approx(base_run, abs=1e-5)


def test_apply_modulation_works_under_generate(exported, tiny_llava_entry):
    """model.generate() inside the block gives vseam's own modulated generation."""
    from tests.conftest import load_vlm
    from vseam_run.generation import generate_batch
    from vseam_run.modfile import read_modulation

    folder, rows = exported
    model, processor = _plain_model(tiny_llava_entry)
    q = _questions(folder, list(rows["eval.test.modulated"])[:1])[0]
    inputs = processor(images=[q.load_image()], text=[f"<image> {q.question} answer:"], return_tensors="pt")
    with vseam_run.apply_modulation(model, folder / "mod.safetensors"), torch.no_grad():
        here = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    with torch.no_grad():
        plain = model.generate(**inputs, max_new_tokens=5, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    vlm = load_vlm(tiny_llava_entry)
    iv, _, _ = read_modulation(folder / "mod.safetensors")
    with iv.installed(vlm):
        ours = list(generate_batch(vlm, [q.load_image()], [q.question], 5)[0].token_ids)
    eos = model.generation_config.eos_token_id
    assert (here[: here.index(eos)] if eos in here else here) == ours
    assert iv.kind == "scales"
    if here == plain:  # a weak modulation may leave a greedy answer as it was; the scores above still differ
        pytest.skip("this question's greedy answer is the same with and without the modulation")


def test_apply_modulation_refuses_another_model(exported, tiny_instructblip_entry):
    folder, _ = exported
    other = transformers.InstructBlipForConditionalGeneration.from_pretrained(tiny_instructblip_entry.parent / "ckpt")
    with pytest.raises(VseamError) as err:
        with vseam_run.apply_modulation(other, folder / "mod.safetensors"):
            pass
    msg = str(err.value)
    assert "was made for model 'tiny-llava'" in msg and "InstructBlipForConditionalGeneration" in msg


def test_apply_modulation_refuses_same_shape_other_weights(exported, tiny_llava_entry):
    folder, _ = exported
    model, _ = _plain_model(tiny_llava_entry)
    with torch.no_grad():
        model.model.language_model.layers[0].self_attn.o_proj.weight.mul_(-1.0)  # another checkpoint, same shape
    with pytest.raises(VseamError, match="same shape but other weights"):
        with vseam_run.apply_modulation(model, folder / "mod.safetensors"):
            pass
    with torch.no_grad():
        model.model.language_model.layers[0].self_attn.o_proj.weight.mul_(-1.0)
    model.half()  # the same checkpoint in half precision is the same model
    with vseam_run.apply_modulation(model, folder / "mod.safetensors"):
        pass


def test_export_errors(exported, tmp_path):
    folder, _ = exported
    rc, out = run_cli("export", "latest", "--modulation", "-o", tmp_path / "mod.bin", "--db", folder / "runs.db")
    assert rc == 2 and ".safetensors" in out
    with pytest.raises(VseamError, match="not a vseam modulation file|no such modulation file"):
        (tmp_path / "junk.safetensors").write_bytes(b"junk")
        with vseam_run.apply_modulation(torch.nn.Linear(1, 1), tmp_path / "junk.safetensors"):
            pass
