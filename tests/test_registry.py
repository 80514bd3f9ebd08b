"""Model registry: entries are validated data, lookups suggest close names, and the
`vseam models` command lists and shows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from vseam_run import registry
from vseam_run.cli.main import cli
from vseam_run.errors import SpecError, VseamError

REPO = Path(__file__).resolve().parents[1]
ENTRIES = sorted((REPO / "registry").glob("*.yaml"))
VALID = yaml.safe_load((REPO / "registry" / "toy-llava.yaml").read_text())


def write(tmp_path: Path, **changes) -> Path:
    """A copy of a valid entry with fields changed (None removes a field)."""
    data = {**VALID, **changes}
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "entry.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def entry_errors(path: Path) -> list[str]:
    with pytest.raises(SpecError) as info:
        registry.load_entry_file(path)
    assert info.value.source == str(path)
    return info.value.errors


# --- lookup ---------------------------------------------------------------------------------


def test_shipped_entries_are_available():
    names = set(registry.available())
    assert {"llava-1.5-7b", "instructblip-vicuna-7b", "toy-llava", "toy-instructblip"} <= names


def test_unknown_name_suggests_close_matches():
    with pytest.raises(VseamError) as info:
        registry.get_entry("llava-1.5-7")
    message = info.value.message
    assert message.startswith("unknown model 'llava-1.5-7': did you mean llava-1.5-7b")
    assert "known models: " in message and "instructblip-vicuna-7b" in message
    assert info.value.hint and "vseam models" in info.value.hint


def test_unknown_name_without_close_match_still_lists_known():
    with pytest.raises(VseamError) as info:
        registry.get_entry("zzzzqqq")
    assert "did you mean" not in info.value.message
    assert "llava-1.5-7b" in info.value.message


def test_lookup_by_name_and_by_path(tiny_llava_entry):
    assert registry.get_entry("llava-1.5-7b").hf_id == "llava-hf/llava-1.5-7b-hf"
    entry = registry.get_entry(str(tiny_llava_entry))
    assert entry.name == "tiny-llava"
    assert entry.resolved_path() == tiny_llava_entry.parent / "ckpt"  # relative to the entry file


def test_package_placeholder_in_path():
    entry = registry.get_entry("toy-llava")
    assert entry.resolved_path() == registry.PACKAGE_DIR / "zoo" / "toy-llava"


def test_vseam_registry_env_folder_comes_first(tmp_path, monkeypatch):
    folder = tmp_path / "reg"
    folder.mkdir()
    (folder / "llava-1.5-7b.yaml").write_text(yaml.safe_dump({**VALID, "name": "llava-1.5-7b", "description": "mine"}))
    monkeypatch.setenv("VSEAM_REGISTRY", str(folder))
    assert registry.get_entry("llava-1.5-7b").description == "mine"


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ["os.system", "NotAClass", "__import__('os')", "pipeline", "logging"])
def test_model_class_must_be_a_transformers_class(tmp_path, cls):
    errs = entry_errors(write(tmp_path, model_class=cls))
    assert len(errs) == 1
    assert errs[0].startswith("model_class: ") and "is not a class in the transformers namespace" in errs[0]


def test_model_class_typo_suggests(tmp_path):
    (err,) = entry_errors(write(tmp_path, model_class="LlavaForConditionalGen"))
    assert "did you mean LlavaForConditionalGeneration" in err


def test_processor_class_checked_too(tmp_path):
    (err,) = entry_errors(write(tmp_path, processor_class="os.path"))
    assert err.startswith("processor_class: ")


def test_prompt_needs_question_placeholder(tmp_path):
    (err,) = entry_errors(write(tmp_path, prompt="<image> answer:"))
    assert err.startswith("prompt: must contain {question}")
    assert err.endswith(")") and "(line " in err


def test_entry_needs_hf_id_or_path(tmp_path):
    (err,) = entry_errors(write(tmp_path, path=None))
    assert "needs hf_id or path" in err
    assert registry.load_entry_file(write(tmp_path, path=None, hf_id="org/model")).hf_id == "org/model"


def test_unknown_key_and_several_errors(tmp_path):
    errs = entry_errors(write(tmp_path, procesor_class="AutoProcessor", dtype="float8", modules={"decoder": "x"}))
    heads = sorted(e.split(":")[0] for e in errs)
    assert heads == ["dtype", "modules.final_norm", "modules.layers", "modules.lm_head", "procesor_class"]
    assert any("did you mean 'processor_class'" in e for e in errs)


def test_entry_must_be_a_mapping(tmp_path):
    path = tmp_path / "entry.yaml"
    path.write_text("- just\n- a list\n")
    assert entry_errors(path)[0].startswith("(top level)")


@pytest.mark.parametrize("path", ENTRIES, ids=lambda p: p.name)
def test_trust_remote_code_defaults_false_in_shipped_entries(path):
    raw = yaml.safe_load(path.read_text())
    assert raw.get("trust_remote_code", False) is False
    assert registry.load_entry_file(path).trust_remote_code is False


def test_trust_remote_code_default_is_false(tmp_path):
    assert registry.load_entry_file(write(tmp_path, trust_remote_code=None)).trust_remote_code is False


# --- the `vseam models` command -------------------------------------------------------------


def test_models_lists_every_entry(capsys):
    assert cli(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("llava-1.5-7b", "instructblip-vicuna-7b", "toy-llava", "toy-instructblip"):
        assert name in out


def test_models_json(capsys):
    assert cli(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert by_name["llava-1.5-7b"]["source"] == "llava-hf/llava-1.5-7b-hf"
    assert by_name["llava-1.5-7b"]["class"] == "LlavaForConditionalGeneration"


def test_models_show(capsys):
    assert cli(["models", "show", "llava-1.5-7b"]) == 0
    out = capsys.readouterr().out
    shown = yaml.safe_load(out)
    assert shown["name"] == "llava-1.5-7b" and shown["hf_id"] == "llava-hf/llava-1.5-7b-hf"
    assert shown["trust_remote_code"] is False


def test_models_show_json_by_path(capsys, tiny_llava_entry):
    assert cli(["models", "show", str(tiny_llava_entry), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "tiny-llava"


def test_models_show_unknown_exits_2(capsys):
    assert cli(["models", "show", "llava-1.5-7"]) == 2
    captured = capsys.readouterr()
    assert "did you mean llava-1.5-7b" in captured.err
    assert "Traceback" not in captured.out + captured.err


@pytest.mark.parametrize("cls", ["TrainingArguments", "AutoTokenizer", "LlavaProcessor"])
def test_model_class_must_be_a_model(tmp_path, cls):
    """A class in the namespace is not enough: only a model can be loaded as the VLM."""
    (err,) = entry_errors(write(tmp_path, model_class=cls))
    assert err.startswith("model_class: ") and f"'{cls}' is not a model class" in err


def test_auto_model_classes_are_models(tmp_path):
    assert registry.load_entry_file(write(tmp_path, model_class="AutoModelForImageTextToText")).model_class == "AutoModelForImageTextToText"
