"""Inpainting edits on tiny random models (no downloads): toy-world images loaded through the GQA
loader stand in for real photos with boxes. Asserted: the mechanics — exact confinement to the
mask, the cache (a second run computes nothing), provenance in the registry, failed concept
checks dropped, the expected answers — not image quality."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from edit_models import tiny_clip, tiny_inpaint_pipeline, tiny_sam
from vseam_run.cli.main import cli
from vseam_run.data import load_questions
from vseam_run.data.base import Box
from vseam_run.data.toyworld import ToyWorldParams, ensure_toyworld
from vseam_run.edit import models
from vseam_run.edit.inpaint import Inpainter, InpaintParams, paste_back
from vseam_run.edit.masks import SamMasker, box_mask, dilate
from vseam_run.edit.text import TOY_VOCABULARIES
from vseam_run.errors import VseamError
from vseam_run.spec import EditModelRef
from vseam_run.store import RunStore

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edit-models")
    return {"sd": tiny_inpaint_pipeline(root / "sd"), "sam": tiny_sam(root / "sam"), "clip": tiny_clip(root / "clip")}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy set exported in GQA's formats (questions, scene graphs, 64×64 images)."""
    return ensure_toyworld(ToyWorldParams(seed=3, images=7, image_size=64), tmp_path_factory.mktemp("toy"))


def _spec(folder: Path, photos: Path, weights: dict[str, Path], entry: Path, min_prob: float = 0.0) -> Path:
    spec = {
        "name": "edit-test", "model": str(entry), "device": "cpu", "batch_size": 8, "workdir": str(folder / "work"),
        "data": {"source": "gqa", "path": str(photos / "questions.json"), "images": str(photos / "images")},
        "edit": {
            "recipe": "inpaint",
            "text": {"vocabularies": TOY_VOCABULARIES, "scene_graphs": str(photos / "scenes.json")},
            "mask": {"source": "sam", "margin": 2, "sam": {"path": str(weights["sam"])}},
            "inpaint": {"model": {"path": str(weights["sd"])}, "steps": 2, "seed": 3},
            "check": {"clip": {"path": str(weights["clip"])}, "min_target_prob": min_prob},
            "contact_sheet": 7,
        },
    }  # fmt: skip
    path = folder / f"spec-{min_prob:.4f}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(spec: Path, db: Path) -> tuple[str, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli(["run", str(spec), "--db", str(db)])
    assert rc == 0, out.getvalue()
    with RunStore(db) as store:
        return store.list_runs()[0].id, out.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, photos, weights, tiny_llava_entry):
    """Three runs sharing one workdir: the first computes the edits, the second finds them all
    in the cache, the third raises the concept threshold to the first run's median."""
    folder = tmp_path_factory.mktemp("edit-runs")
    db = folder / "runs.db"
    first, log1 = _run(_spec(folder, photos, weights, tiny_llava_entry), db)
    second, log2 = _run(_spec(folder, photos, weights, tiny_llava_entry), db)
    with RunStore(db) as store:
        probs = sorted(e["concept"]["target_prob"] for e in store.get_document(first, "edits"))
    median = float(np.median(probs))
    third, log3 = _run(_spec(folder, photos, weights, tiny_llava_entry, min_prob=median), db)
    return {"db": db, "ids": (first, second, third), "logs": (log1, log2, log3), "median": median, "probs": probs}


def _metrics(db: Path, run_id: str) -> dict[str, float]:
    with RunStore(db) as store:
        return store.get_run(run_id).metrics


def test_pixels_outside_the_mask_are_exactly_the_originals(runs) -> None:
    with RunStore(runs["db"]) as store:
        edits = store.get_document(runs["ids"][0], "edits")
    assert edits
    for e in edits:
        orig = np.asarray(Image.open(e["original_image"]).convert("RGB")).astype(int)
        edited = np.asarray(Image.open(e["edited_image"]).convert("RGB")).astype(int)
        mask = np.asarray(Image.open(e["mask_path"])) > 127
        changed = np.any(orig != edited, axis=2)
        assert not changed[~mask].any(), e["qid"]
        assert changed[mask].mean() > 0.5, e["qid"]  # the masked region really was repainted
        assert e["pixels"]["outside_max"] == 0 and e["pixels"]["inside_mean"] > 0
        # The mask stays within the (dilated) boxes of the edit.
        assert not (mask & ~box_mask(mask.shape[::-1], [Box(**b) for b in e["plan"]["boxes"]], 2)).any()
    assert _metrics(runs["db"], runs["ids"][0])["edit.outside_change_max"] == 0


def test_second_run_computes_nothing(runs) -> None:
    first, second, _ = (_metrics(runs["db"], r) for r in runs["ids"])
    n = first["edit.planned"]
    assert n >= 6 and first["edit.computed"] == n and first["edit.cached"] == 0
    assert second["edit.computed"] == 0 and second["edit.cached"] == n
    assert "models loaded: none" in runs["logs"][1] and "models loaded: none" not in runs["logs"][0]
    with RunStore(runs["db"]) as store:
        a, b = (store.get_document(r, "edits") for r in runs["ids"][:2])
    assert [(e["key"], e["edited_image"]) for e in a] == [(e["key"], e["edited_image"]) for e in b]


def test_provenance_is_stored(runs) -> None:
    first = runs["ids"][0]
    with RunStore(runs["db"]) as store:
        edits = store.get_document(first, "edits")
        kinds = {}
        for art in store.get_run(first).artifacts:
            kinds.setdefault(art.kind, []).append(art.path)
        skipped = store.get_document(first, "edit.skipped")
    for e in edits:
        assert e["text"] == f"{e['plan']['source'] or '?'} → {e['plan']['target']}"
        assert e["seed"] == 3 and e["pipeline"].startswith(str(Path(e["pipeline"].split("@")[0]))) and "@" in e["pipeline"]
        assert len(e["key"]) == 64 and e["prompt"] == f"a photo of {e['plan']['target_phrase']}"
        assert e["mask_source"] in ("sam",) or e["mask_source"].startswith("box (SAM fallback")
        assert str(Path(e["mask_path"]).resolve()) in kinds["edit.mask"]
        assert str(Path(e["edited_image"]).resolve()) in kinds["edit.image"]
    assert len(kinds["edits.contact_sheet"]) == 1 and len(kinds["edits.manifest"]) == 1
    assert skipped and all(s["reason"] for s in skipped)  # "no" existence questions: nothing to repaint


def test_expected_answers_and_scoring_on_edited_images(runs, photos) -> None:
    first = runs["ids"][0]
    with RunStore(runs["db"]) as store:
        edits = {e["qid"]: e for e in store.get_document(first, "edits")}
        edited = {r["qid"]: r for r in store.question_results(first, "edited")}
    questions = {q.qid: q for q in load_questions("gqa", photos / "questions.json", photos / "images").questions}
    assert set(edited) == set(edits)  # threshold 0: every edit kept and scored
    for qid, e in edits.items():
        q = questions[qid]
        if q.category == "color":
            assert e["expected_answer"] == e["plan"]["target"] != q.answer
        else:
            assert {q.answer, e["expected_answer"]} == {"yes", "no"}
        assert edited[qid]["gold"] == e["expected_answer"]


def test_failed_concept_checks_are_dropped_and_counted(runs) -> None:
    third = runs["ids"][2]
    m = _metrics(runs["db"], third)
    below = sum(p < runs["median"] for p in runs["probs"])
    assert below >= 1
    assert m["edit.dropped"] == m["edit.dropped.concept"] == below and m["edit.kept"] == len(runs["probs"]) - below
    assert m["edit.computed"] == 0  # the threshold is not part of the edit: the cache still serves
    with RunStore(runs["db"]) as store:
        edits = store.get_document(third, "edits")
        scored = {r["qid"] for r in store.question_results(third, "edited")}
    dropped = {e["qid"] for e in edits if not e["passed"]}
    assert len(dropped) == below and not (dropped & scored) and scored == {e["qid"] for e in edits if e["passed"]}
    assert all(e["reason"].startswith("concept:") for e in edits if not e["passed"])


def test_contact_sheet_covers_every_category(runs) -> None:
    first = runs["ids"][0]
    with RunStore(runs["db"]) as store:
        shown = store.get_document(first, "edit.contact_sheet")
        edits = store.get_document(first, "edits")
    # More edits than categories, 7 rows: one of each — taking every k-th edit would repeat some.
    assert len(edits) > 7 and len(shown) == 7
    assert sorted(s["category"] for s in shown) == sorted({e["category"] for e in edits}) == [
        "boxy", "color", "link", "material", "pointy", "round", "spatial"]  # fmt: skip


# --- units --------------------------------------------------------------------------------------


def test_paste_back_is_exact_outside_the_mask() -> None:
    rng = np.random.default_rng(0)
    original = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
    generated = Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8))  # another size, as pipelines return
    mask = box_mask((40, 30), [Box(5, 6, 10, 8)], 1)
    out = np.asarray(paste_back(original, generated, mask))
    assert np.array_equal(out[~mask], np.asarray(original)[~mask])
    assert np.array_equal(out[mask], np.asarray(generated.resize((40, 30), Image.Resampling.BICUBIC))[mask])
    assert mask.sum() == 12 * 10 and np.array_equal(dilate(box_mask((40, 30), [Box(5, 6, 10, 8)]), 1), mask)


def test_inpainter_is_seeded_and_confined(weights) -> None:
    pipe = models.load_inpaint_pipeline(EditModelRef(path=weights["sd"]), CPU, torch.float32)
    inpaint = Inpainter(pipe, CPU)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 60, 3), dtype=np.uint8))
    mask = box_mask(image.size, [Box(10, 10, 20, 15)], 0)
    params = InpaintParams(steps=1, guidance=2.0, seed=5, negative_prompt="blurry", strength=1.0)
    a, b = inpaint(image, mask, "a photo of a red circle", params), inpaint(image, mask, "a photo of a red circle", params)
    c = inpaint(image, mask, "a photo of a red circle", InpaintParams(1, 2.0, 6, "blurry", 1.0))
    assert np.array_equal(np.asarray(a), np.asarray(b)) and not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.array_equal(np.asarray(a)[~mask], np.asarray(image)[~mask]) and inpaint.calls == 3


def test_sam_masks_stay_in_their_boxes_or_fall_back(weights) -> None:
    model, proc = models.load_transformers(EditModelRef(path=weights["sam"]), "sam", CPU)
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    boxes = [Box(4, 4, 20, 16), Box(36, 20, 20, 20)]
    got = SamMasker(model, proc, CPU, min_fraction=0.0)(image, boxes, margin=2)
    assert got.source == "sam" and got.mask.any()
    assert not (got.mask & ~box_mask(image.size, boxes, 2)).any()
    fallback = SamMasker(model, proc, CPU, min_fraction=1.01)(image, boxes, margin=2)
    assert fallback.source.startswith("box (SAM fallback") and np.array_equal(fallback.mask, box_mask(image.size, boxes, 2))


def test_classes_only_from_their_namespaces(weights) -> None:
    with pytest.raises(VseamError, match="not a diffusers pipeline class"):
        models.resolve_class(EditModelRef(path=weights["sd"], class_name="load_image"), "inpaint")
    with pytest.raises(VseamError, match="not a transformers model class"):
        models.resolve_class(EditModelRef(path=weights["clip"], class_name="CLIPConfig"), "clip")
    assert models.resolve_class(EditModelRef(path=weights["sd"], class_name="StableDiffusionInpaintPipeline"), "inpaint")


def test_missing_edit_models_are_listed_before_anything_runs(tmp_path, photos, tiny_llava_entry, monkeypatch, capsys) -> None:
    monkeypatch.delenv("VSEAM_ALLOW_DOWNLOAD", raising=False)
    missing = {"sd": tmp_path / "no-sd", "sam": tmp_path / "no-sam", "clip": tmp_path / "no-clip"}
    spec = _spec(tmp_path, photos, missing, tiny_llava_entry)
    rc = cli(["run", str(spec), "--db", str(tmp_path / "r.db")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    for field in ("edit.inpaint.model: no checkpoint", "edit.mask.sam: no checkpoint", "edit.check.clip: no checkpoint"):
        assert field in err, err
    assert not (tmp_path / "work").exists()  # stopped before any work


def test_real_model_spec_lists_what_is_missing(monkeypatch, capsys, tmp_path) -> None:
    monkeypatch.delenv("VSEAM_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing is downloaded
    spec = Path(__file__).parent.parent / "specs" / "llava_gqa_edit.yaml"
    rc = cli(["run", str(spec), "--db", str(tmp_path / "r.db"), "--set", "device=cpu"])
    err = capsys.readouterr().err
    assert rc == 2
    for hf_id in ("stable-diffusion-v1-5/stable-diffusion-inpainting", "facebook/sam-vit-base", "openai/clip-vit-large-patch14"):
        assert hf_id in err, err


@pytest.mark.gpu
def test_cuda_float16_edits_are_confined_and_cached(tmp_path, photos, weights) -> None:
    """On CUDA the pipeline runs in float16 (SAM and CLIP in float32, through the same loaders); the
    paste-back keeps every pixel outside the mask exact, and a second pass computes nothing."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from vseam_run.edit.engine import InpaintEditor
    from vseam_run.edit.text import load_scene_graphs, plan_edits
    from vseam_run.spec import EditSpec

    cuda = torch.device("cuda")
    qs = load_questions("gqa", photos / "questions.json", photos / "images").questions
    plans = plan_edits(qs, vocabularies=TOY_VOCABULARIES, scene_graphs=load_scene_graphs(photos / "scenes.json")).plans
    spec = EditSpec(recipe="inpaint", inpaint={"model": {"path": str(weights["sd"])}, "steps": 2},
                    mask={"source": "sam", "margin": 2, "sam": {"path": str(weights["sam"])}},
                    check={"clip": {"path": str(weights["clip"])}, "min_target_prob": 0.0})  # fmt: skip
    by_qid = {q.qid: q for q in qs}
    editor = InpaintEditor(spec, cuda, tmp_path)
    batch = editor.run((by_qid[p.qid], p) for p in plans)
    assert editor.inpainter.pipe.unet.dtype == torch.float16 and editor.inpainter.pipe.device.type == "cuda"
    assert batch.computed == len(plans) and all(e.pixels.outside_max == 0 for e in batch.all)
    for e in batch.all:
        orig = np.asarray(Image.open(e.original_image).convert("RGB"))
        edited = np.asarray(Image.open(e.edited_image).convert("RGB"))
        mask = np.asarray(Image.open(e.mask_path)) > 127
        assert np.array_equal(orig[~mask], edited[~mask])
        assert e.concept is not None and 0.0 <= e.concept.target_prob <= 1.0
    again = InpaintEditor(spec, cuda, tmp_path).run((by_qid[p.qid], p) for p in plans)
    assert again.computed == 0 and again.reused == len(plans)
