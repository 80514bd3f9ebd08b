"""Edit text from questions: the concept, the target, the mask boxes and the answer the edited image
should get; questions with no sensible edit are skipped with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vseam_run.data import load_questions
from vseam_run.data.base import Box, Question
from vseam_run.data.cocoqa import read_cocoqa
from vseam_run.data.gqa import read_gqa
from vseam_run.data.pope import read_pope
from vseam_run.data.toyworld import ToyWorldParams, scene_from_dict
from vseam_run.edit.text import (
    GQA_VOCABULARIES,
    SPATIAL_OPPOSITE,
    TOY_VOCABULARIES,
    EditPlan,
    EditSkip,
    apply_rewrite,
    few_shot_prompt,
    plan_edit,
    plan_edits,
)

FIXTURES = Path(__file__).parent / "fixtures"


def gqa(name: str) -> list[Question]:
    return read_gqa(FIXTURES / name, FIXTURES, category_from_file=True).questions


def by_question(qs: list[Question], text: str) -> Question:
    return next(q for q in qs if q.question == text)


def test_attribute_yes_changes_the_value_and_flips_to_no() -> None:
    q = by_question(gqa("gqa_attribute_color.json"), "Are the pants purple?")
    p = plan_edit(q)
    assert isinstance(p, EditPlan)
    assert (p.source, p.original_answer, p.expected_answer) == ("purple", "yes", "no")
    assert p.target in GQA_VOCABULARIES["color"] and p.target != "purple"
    assert p.target_phrase == f"{p.target} pants" and p.counterfactual_question == f"Are the pants {p.target}?"
    assert p.boxes == (Box(123, 181, 95, 66),)  # the question's object_positions
    assert p.prompt("a photo of {target}") == f"a photo of {p.target} pants"


def test_attribute_no_sets_the_asked_value_and_flips_to_yes() -> None:
    p = plan_edit(by_question(gqa("gqa_attribute_color.json"), "Is the vest gray?"))
    assert isinstance(p, EditPlan)
    assert (p.source, p.target, p.expected_answer) == ("", "gray", "yes")  # actual color unknown without a scene graph
    m = plan_edit(by_question(gqa("gqa_attribute_material.json"), "Is the motorcycle made of metallic?"))
    assert isinstance(m, EditPlan) and (m.target, m.expected_answer, m.target_phrase) == ("metal", "yes", "motorcycle made of metal")


def test_object_swap_stays_in_its_category() -> None:
    for q in gqa("gqa_object_animal.json"):
        p = plan_edit(q)
        assert isinstance(p, EditPlan), p
        assert p.source in q.question.lower() and p.target in GQA_VOCABULARIES["animal"] and p.target != p.source
        assert p.expected_answer == "no" and len(p.boxes) == 1
        names = [o.lower() for o in q.objects]
        assert p.boxes[0] == q.boxes[names.index(p.source)]  # the asked object's box, not the fence's


def test_relations_get_opposites_or_other_actions() -> None:
    p = plan_edit(by_question(gqa("gqa_relation_spatial.json"), "Is the woman in front of the statue?"))
    assert isinstance(p, EditPlan) and (p.source, p.target, p.expected_answer) == ("in front of", "behind", "no")
    statue, woman = gqa("gqa_relation_spatial.json")[0].boxes
    hull = p.boxes[0]  # spatial: the region spanning subject and object
    assert (hull.x, hull.y) == (min(statue.x, woman.x), min(statue.y, woman.y))
    a = plan_edit(by_question(gqa("gqa_relation_action.json"), "Is the dog sitting on the toilet?"))
    assert isinstance(a, EditPlan) and (a.source, a.target, a.expected_answer) == ("sitting on", "standing on", "no")
    # A release "action" file also holds spatial questions: the relation asked decides.
    s = plan_edit(by_question(gqa("gqa_relation_action.json"), "Is the man to the left of the plate?"))
    assert isinstance(s, EditPlan) and s.target == SPATIAL_OPPOSITE["to the left of"]


def test_no_sensible_edit_is_skipped_with_a_reason() -> None:
    skip = plan_edit(by_question(gqa("gqa_relation_spatial.json"), "Is the sheep covered with the hill?"))
    assert isinstance(skip, EditSkip) and "covered with" in skip.reason
    pope = read_pope(FIXTURES / "pope_adversarial.jsonl", FIXTURES)
    reasons = [r.reason for r in plan_edits(pope).skipped]
    assert len(reasons) == len(pope)  # POPE has no boxes: nothing can be masked
    assert any("no box for 'truck'" in r for r in reasons) and any("'snowboard' is in no object vocabulary" in r for r in reasons)
    assert any("not in the image" in r for r in reasons)  # "no" answers: nothing to repaint
    count = read_cocoqa(FIXTURES / "cocoqa_count.csv", FIXTURES)
    assert all("counting" in s.reason for s in plan_edits(count).skipped)


def test_edits_are_deterministic_and_seeded() -> None:
    qs = gqa("gqa_object_animal.json")
    a, b = plan_edits(qs, seed=0).plans, plan_edits(qs, seed=0).plans
    assert a == b
    c = plan_edits(qs, seed=1).plans
    assert [p.target for p in a] != [p.target for p in c]


def test_sample_files_coverage() -> None:
    """How many of each sample file's questions get an edit (reported in the README)."""
    counts = {}
    for name in ("gqa_attribute_color.json", "gqa_attribute_material.json", "gqa_object_animal.json",
                 "gqa_relation_action.json", "gqa_relation_spatial.json"):  # fmt: skip
        res = plan_edits(gqa(name))
        counts[name] = len(res.plans)
    assert counts == {"gqa_attribute_color.json": 12, "gqa_attribute_material.json": 12, "gqa_object_animal.json": 12,
                      "gqa_relation_action.json": 12, "gqa_relation_spatial.json": 10}  # fmt: skip


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> list[Question]:
    return load_questions("toyworld", None, None, toyworld=ToyWorldParams(seed=2, images=30, image_size=64),
                          cache_dir=tmp_path_factory.mktemp("c")).questions  # fmt: skip


def test_toy_plans_agree_with_the_scene_graph(toy: list[Question]) -> None:
    res = plan_edits(toy)
    assert res.plans and all("not in the image" in s.reason for s in res.skipped)
    for p in res.plans:
        q = next(q for q in toy if q.qid == p.qid)
        scene = scene_from_dict(q.extra["scene"])
        if q.category == "color":  # open question: the source is the answer, the edited answer the new color
            assert p.source == q.answer and p.expected_answer == p.target != q.answer
        else:
            assert {q.answer, p.expected_answer} == {"yes", "no"}
        if q.category == "material" and q.answer == "no":
            subject = scene.obj(q.extra["target"]["subject"])
            assert p.source == subject.material and p.target == q.extra["target"]["value"]  # actual value from the scene
        vocab = TOY_VOCABULARIES.get(q.category, [])
        assert p.target in vocab or q.level == "relation"


def test_a_second_instance_blocks_an_object_swap(toy: list[Question]) -> None:
    q = next(q for q in toy if q.level == "object" and q.answer == "yes")
    scene = json.loads(json.dumps(q.extra["scene"]))
    name = q.objects[0]
    clone = dict(next(o for o in scene["objects"].values() if o["name"] == name))
    scene["objects"]["extra"] = clone
    twin = Question(**{**q.__dict__, "extra": {**q.extra, "scene": scene}})
    skip = plan_edit(twin)
    assert isinstance(skip, EditSkip) and f"2 '{name}' objects" in skip.reason


def test_rewriter_hook_accepts_only_a_vocabulary_swap() -> None:
    q = by_question(gqa("gqa_attribute_color.json"), "Are the pants purple?")
    plan = plan_edit(q)
    assert isinstance(plan, EditPlan)
    examples = json.loads((FIXTURES / "counterfactual_prompt_examples.json").read_text())
    prompt = few_shot_prompt(plan, examples)
    assert "Is the car blue?" in prompt and prompt.endswith("Original: Are the pants purple?\nCounterfactual:")
    other = "orange" if plan.target != "orange" else "pink"
    new = apply_rewrite(plan, f" Are the pants {other}?\nOriginal: ...", GQA_VOCABULARIES, "fake-lm")
    assert (new.target, new.target_phrase, new.rewritten_by) == (other, f"{other} pants", "fake-lm")
    assert new.expected_answer == "no"
    for junk in ("", "Are the pants made of purple?", "Are the shoes purple?", "Are the pants delicious?"):
        assert apply_rewrite(plan, junk, GQA_VOCABULARIES, "fake-lm") == plan, junk


def test_rewriter_runs_a_local_causal_lm(tmp_path: Path) -> None:
    """The optional hook end to end: an entry → a tiny random LlamaForCausalLM (saved and loaded
    like a real one) → few-shot prompt → greedy text → kept only if it is a vocabulary swap."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from edit_models import word_tokenizer
    from vseam_run.edit import models
    from vseam_run.edit.rewriter import load_examples, make_rewrite, model_generator
    from vseam_run.spec import EditModelRef, EditTextSpec

    torch.manual_seed(0)
    tok = word_tokenizer(256)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=3)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    ref = EditModelRef(path=tmp_path / "lm", class_name="AutoModelForCausalLM")
    model, loaded_tok = models.load_transformers(ref, "rewriter", torch.device("cpu"))
    generate = model_generator(model, loaded_tok, torch.device("cpu"), max_new_tokens=6)
    qs = gqa("gqa_attribute_color.json")
    plans = plan_edits(qs).plans
    texts = [generate("Original: Are the pants purple?\nCounterfactual:") for _ in range(2)]
    assert texts[0] == texts[1] and isinstance(texts[0], str)  # greedy: deterministic
    hook = make_rewrite(generate, load_examples(FIXTURES / "counterfactual_prompt_examples.json"), {q.qid: q for q in qs}, EditTextSpec(), "tiny-lm")
    rewritten = plan_edits(qs, rewrite=hook).plans
    # A random model writes no valid swap: every plan stands as the rules made it.
    assert [p for p in rewritten] == plans
    with pytest.raises(Exception, match="not a transformers model class"):
        models.resolve_class(EditModelRef(path=tmp_path / "lm", class_name="pipeline"), "rewriter")


def test_every_edit_spec_field_is_documented() -> None:
    from vseam_run import spec

    for model in (spec.EditSpec, spec.EditTextSpec, spec.EditMaskSpec, spec.EditInpaintSpec, spec.EditCheckSpec, spec.EditModelRef):
        undocumented = [name for name, f in model.model_fields.items() if not f.description]
        assert not undocumented, (model.__name__, undocumented)
    assert spec.DataSpec.model_fields["category_from"].description


def test_scene_graph_gives_the_actual_value_and_the_box() -> None:
    from vseam_run.edit.text import load_scene_graphs

    graphs = load_scene_graphs(FIXTURES / "gqa_scene_graph_example.json")
    q = Question(
        qid="q1", image_id="2353884", image_path=FIXTURES / "2353884.jpg", question="Are the socks red?", answer="no",
        level="attribute", category="color", objects=["socks"], boxes=[],  # no object_positions: the graph has them
        extra={"semantic": [{"operation": "select", "dependencies": [], "argument": "socks (2795769)"},
                            {"operation": "verify color", "dependencies": [0], "argument": "red"}]},
    )  # fmt: skip
    p = plan_edit(q, scene_graphs=graphs)
    assert isinstance(p, EditPlan)
    assert (p.source, p.target, p.expected_answer, p.boxes) == ("white", "red", "yes", (Box(267, 207, 28, 19),))
    assert p.source_phrase == "white socks"
    assert isinstance(plan_edit(q), EditSkip)  # without the graph there is no box
