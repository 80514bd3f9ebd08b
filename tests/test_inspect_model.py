"""`vseam models new` and `vseam validate` on module trees built on the meta device: the shipped
entries of real models are checked offline against the real transformers classes (built from
their `arch:` presets), other families' layouts are found, and wrong paths are named."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import transformers
import yaml

from vseam_run import inspect_model as im
from vseam_run.cli.main import cli
from vseam_run.registry import available, get_entry, load_entry_file
from vseam_run.zoo.build import LLAVA_MODULES

REPO = Path(__file__).resolve().parents[1]

# name → (layers, heads, kv heads, head_dim) of the real checkpoints.
REAL = {
    "llava-1.5-7b": (32, 32, 32, 128),
    "llava-1.5-13b": (40, 40, 40, 128),
    "instructblip-vicuna-7b": (32, 32, 32, 128),
    "llava-next-mistral-7b": (32, 32, 8, 128),
    "qwen2-vl-7b-instruct": (28, 28, 4, 128),
    "paligemma2-3b-mix-224": (26, 8, 4, 256),
    "idefics3-8b-llama3": (32, 32, 8, 128),
}
NEW_SPECS = ["llava_next_attributes", "qwen2_vl_attributes", "paligemma2_attributes", "idefics3_attributes"]


def call(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = cli([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --- shipped entries of real models, verified offline --------------------------------------


def test_every_hub_entry_has_an_arch_preset():
    hub = [n for n in available() if get_entry(n).hf_id]
    assert set(REAL) <= set(hub)
    assert all(get_entry(n).arch is not None for n in hub)


@pytest.mark.parametrize("name", sorted(REAL))
def test_shipped_entry_matches_the_real_class(name):
    """The entry's paths are what the inspector finds on the real transformers class, built on meta
    from the preset; the preset has the real sizes."""
    entry = get_entry(name)
    config = entry.arch.build()
    ins = im.inspect("", config=config)
    assert ins.model_class == entry.model_class
    assert ins.modules == entry.modules.model_dump()
    assert ins.image_token_attr == entry.image_token_attr
    a = ins.arch
    assert (a.layers, a.heads, a.kv_heads, a.head_dim) == REAL[name]
    model = im.meta_model(getattr(transformers, entry.model_class), config)
    assert im.check_modules(model, a, entry.modules.model_dump()) == []


def test_llava_preset_has_576_image_tokens():
    config = get_entry("llava-1.5-7b").arch.build()
    v = config.vision_config
    assert (v.image_size // v.patch_size) ** 2 == config.image_seq_length == 576


@pytest.mark.parametrize("spec", NEW_SPECS)
def test_new_specs_stop_at_once_naming_the_weights(capsys, tmp_path, spec):
    t0 = time.perf_counter()
    rc, out, err = call(capsys, "run", REPO / "specs" / f"{spec}.yaml", "--db", tmp_path / "runs.db")
    assert rc == 2 and "Traceback" not in out + err
    entry = get_entry(yaml.safe_load((REPO / "specs" / f"{spec}.yaml").read_text())["model"])
    assert f"weights for {entry.hf_id} are not on this machine" in err
    assert "hf download" in err
    assert err.count("\n  ") <= 2  # the weights are the only problem (the data is generated)
    assert time.perf_counter() - t0 < 30


def test_validate_checks_shipped_entries_on_meta_trees(capsys):
    rc, out, err = call(capsys, "validate", *sorted((REPO / "registry").glob("*.yaml")))
    assert rc == 0, err
    lines = [l for l in out.splitlines() if l.startswith("ok")]
    assert len(lines) == len(list((REPO / "registry").glob("*.yaml")))
    assert all("module paths checked on a meta-device" in l for l in lines)
    assert "arch preset" in out and "the checkpoint's config" in out


# --- other families: the inspector finds their layouts -------------------------------------

FAMILIES = {
    # config class: (decoder, o_proj, final_norm, mlp)
    "Qwen2_5_VLConfig": ("model.language_model", "self_attn.o_proj", "model.language_model.norm", "mlp"),
    "SmolVLMConfig": ("model.text_model", "self_attn.o_proj", "model.text_model.norm", "mlp"),
    "Gemma3Config": ("model.language_model", "self_attn.o_proj", "model.language_model.norm", "mlp"),
    # InstructBLIP / BLIP-2 with their default OPT language model: other names for everything. OPT has
    # no MLP module; fc2 (wider → hidden) is its MLP's output, what tracing patches as "the MLP".
    "InstructBlipConfig": ("language_model.model.decoder", "self_attn.out_proj", "language_model.model.decoder.final_layer_norm", "fc2"),
    "Blip2Config": ("language_model.model.decoder", "self_attn.out_proj", "language_model.model.decoder.final_layer_norm", "fc2"),
}


@pytest.mark.parametrize("config_class", sorted(FAMILIES))
def test_inspector_finds_other_layouts(config_class):
    config = getattr(transformers, config_class)()
    ins = im.inspect("", config=config)
    decoder, o_proj, norm, mlp = FAMILIES[config_class]
    m = ins.modules
    assert (m["decoder"], m["o_proj"], m["final_norm"], m["mlp"]) == (decoder, o_proj, norm, mlp)
    assert m["layers"].startswith(decoder + ".")
    model = im.meta_model(getattr(transformers, ins.model_class), config)
    assert im.check_modules(model, ins.arch, m) == []
    if mlp == "fc2":  # not an MLP module: the user is told to check it
        assert any("modules.mlp 'fc2' is a guess" in n for n in ins.notes)


def test_output_projection_chosen_over_same_shaped_q_proj():
    """With heads × head_dim == hidden, q_proj has o_proj's shape; the name and order decide."""
    config = transformers.LlavaConfig()
    ins = im.inspect("", config=config)
    assert ins.arch.heads * ins.arch.head_dim == ins.arch.hidden
    assert ins.modules["o_proj"] == "self_attn.o_proj"


def test_check_modules_names_each_wrong_path_and_what_was_found():
    config = get_entry("qwen2-vl-7b-instruct").arch.build()
    model = im.meta_model(transformers.Qwen2VLForConditionalGeneration, config)
    arch = im.arch_of(config)
    bad = dict(get_entry("qwen2-vl-7b-instruct").modules.model_dump(), o_proj="self_attn.q_proj",
               final_norm="model.norm", layers="model.language_model.embed_tokens")
    errs = im.check_modules(model, arch, bad)
    assert any(e.startswith("modules.final_norm: 'model.norm' does not resolve") and "found: 'model.language_model.norm'" in e for e in errs)
    assert any(e.startswith("modules.layers:") and "not a ModuleList of 28 layers" in e for e in errs)
    bad = dict(get_entry("qwen2-vl-7b-instruct").modules.model_dump(), o_proj="self_attn.k_proj")
    (err,) = im.check_modules(model, arch, bad)
    assert err.startswith("modules.o_proj:") and "heads × head_dim (28 × 128) to hidden 3584, got 3584 → 512" in err
    assert "(found: 'self_attn.o_proj')" in err


def test_model_class_must_be_a_transformers_model_class():
    config = transformers.LlavaConfig()
    with pytest.raises(im.VseamError, match="not a model class in the transformers namespace"):
        im.model_class_for(config, "LlavaConfig")
    config.architectures = ["os.system"]
    with pytest.raises(im.VseamError, match="not a model class"):
        im.model_class_for(config)
    config.architectures = None  # falls back to transformers' image-text-to-text mapping
    assert im.model_class_for(config)[0] is transformers.LlavaForConditionalGeneration


# --- the commands, on a saved checkpoint ---------------------------------------------------


def test_models_new_on_a_checkpoint_folder(capsys, tmp_path, tiny_llava_entry):
    ckpt = tiny_llava_entry.parent / "ckpt"
    out = tmp_path / "mine.yaml"
    rc, stdout, err = call(capsys, "models", "new", ckpt, "--name", "mine", "-o", out)
    assert rc == 0, err
    assert "warning: check the prompt template" in err
    entry = load_entry_file(out)
    assert entry.name == "mine" and entry.model_class == "LlavaForConditionalGeneration"
    assert entry.resolved_path() == ckpt.resolve()
    assert entry.modules.model_dump() == {**entry.modules.model_dump(), **LLAVA_MODULES}
    text = out.read_text()
    assert "4 heads, 2 KV heads" in text and "CHECK" in text  # heads as comments, the prompt flagged
    rc, stdout, err = call(capsys, "validate", out)
    assert rc == 0 and "module paths checked on a meta-device LlavaForConditionalGeneration built from the checkpoint's config" in stdout
    # The entry loads the model (the loader's own path checks pass too).
    from tests.conftest import load_vlm

    assert load_vlm(out).num_heads == 4
    # Not overwritten without --force.
    rc, _, err = call(capsys, "models", "new", ckpt, "-o", out)
    assert rc == 2 and "exists" in err and "--force" in err


def test_models_new_prompt_from_the_chat_template(capsys, tmp_path, tiny_llava_entry):
    """The prompt is what the checkpoint's chat template produces, braces escaped; the template's BOS
    stays, as this tokenizer does not add one itself (one that does gets it removed)."""
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_llava_entry.parent / "ckpt", ckpt)
    proc = transformers.AutoProcessor.from_pretrained(ckpt)
    proc.chat_template = ("{{ bos_token }}{% for m in messages %}USER {'x'}: {% for c in m['content'] %}"
                          "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                          "{% endfor %}{% if add_generation_prompt %} ASSISTANT:{% endif %}")
    proc.save_pretrained(ckpt)
    out = tmp_path / "t.yaml"
    assert call(capsys, "models", "new", ckpt, "-o", out)[0] == 0
    entry = load_entry_file(out)
    assert proc.tokenizer("a").input_ids[0] != proc.tokenizer.bos_token_id
    assert entry.prompt == "<s>USER {{'x'}}: <image>\n{question} ASSISTANT:"
    assert entry.prompt.format(question="Is it red?") == "<s>USER {'x'}: <image>\nIs it red? ASSISTANT:"
    assert "the checkpoint's chat template" in out.read_text()
    # With a tokenizer that adds BOS itself, the template's BOS is dropped (no double BOS).
    assert im._template_prompt(proc, "<s>") == "USER {{'x'}}: <image>\n{question} ASSISTANT:"


def test_models_new_hub_id_not_cached_is_one_clear_error(capsys, tmp_path):
    rc, out, err = call(capsys, "models", "new", "nobody/no-such-vlm", "-o", tmp_path / "x.yaml")
    assert rc == 2 and "Traceback" not in out + err
    assert "cannot read the config of nobody/no-such-vlm" in err and "config.json" in err
    assert not (tmp_path / "x.yaml").exists()


def test_validate_wrong_path_fails_before_load(capsys, tmp_path, tiny_llava_entry):
    data = yaml.safe_load(tiny_llava_entry.read_text())
    data["path"] = str(tiny_llava_entry.parent / "ckpt")
    data["modules"] = {**data["modules"], "o_proj": "self_attn.out_proj", "final_norm": "model.norm"}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    rc, out, err = call(capsys, "validate", bad)
    assert rc == 2
    assert "modules.o_proj: 'self_attn.out_proj' does not resolve on a decoder layer (LlamaDecoderLayer) (found: 'self_attn.o_proj')" in err
    assert "modules.final_norm: 'model.norm' does not resolve" in err


def test_validate_without_config_says_schema_only(capsys, tmp_path):
    data = {k: v for k, v in yaml.safe_load((REPO / "registry" / "llava-1.5-7b.yaml").read_text()).items() if k != "arch"}
    data["hf_id"] = "nobody/not-cached"
    f = tmp_path / "e.yaml"
    f.write_text(yaml.safe_dump(data))
    rc, out, err = call(capsys, "validate", f)
    assert rc == 0
    assert "schema only" in out and "module paths were NOT checked" in out


def test_arch_preset_errors_are_named(tmp_path):
    data = yaml.safe_load((REPO / "registry" / "llava-1.5-7b.yaml").read_text())
    data["arch"]["model_type"] = "lava"
    f = tmp_path / "e.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(im.VseamError) as info:
        load_entry_file(f)
    assert any(e.startswith("arch.model_type: ") and "did you mean" in e for e in info.value.errors)


def test_models_new_json_free_listing_still_works(capsys):
    rc, out, _ = call(capsys, "models", "--json")
    names = {r["name"] for r in json.loads(out)}
    assert {"qwen2-vl-7b-instruct", "paligemma2-3b-mix-224", "llava-next-mistral-7b", "idefics3-8b-llama3"} <= names


def test_models_new_then_run(capsys, tmp_path, tiny_llava_entry):
    """A family added by `vseam models new` alone runs end to end (baseline and exact search)."""
    entry = tmp_path / "added.yaml"
    assert call(capsys, "models", "new", tiny_llava_entry.parent / "ckpt", "--name", "added", "-o", entry)[0] == 0
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: added-run\nmodel: {entry}\ndevice: cpu\nbatch_size: 4\n"
                    "data: {source: toyworld, toyworld: {images: 12}, limit: 8}\n"
                    "search: {strategy: exact, scoring: signed, top_k: 3}\nmodulation: {policy: none}\n")
    rc, out, err = call(capsys, "run", spec, "--db", tmp_path / "runs.db")
    assert rc == 0, err
    rc, out, err = call(capsys, "show", "latest", "--json", "--db", tmp_path / "runs.db")
    shown = json.loads(out)
    assert shown["model"] == "added" and shown["status"] == "succeeded"
