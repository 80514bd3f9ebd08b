"""A prompt without the family's image placeholder is found before the weights load.

`vseam validate`, a spec's preflight and `VLM.load` (before from_pretrained) all answer one
message naming the entry's `prompt`, the placeholder the processor expects, and an example;
`vseam models new` writes the processor's placeholder and an answer_case read from the
tokenizer's vocabulary.
"""

from __future__ import annotations

import types

import pytest
import torch
import yaml

from tests.conftest import WORDS
from tests.test_cli import call
from vseam_run.errors import SpecError
from vseam_run.inspect_model import answer_case_of, choose_prompt
from vseam_run.registry import load_entry_file


def _entry_with_prompt(tmp_path, entry_path, prompt: str):
    doc = yaml.safe_load(entry_path.read_text())
    doc["prompt"] = prompt
    doc["path"] = str((entry_path.parent / doc["path"]).resolve())
    out = tmp_path / "bad.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def test_validate_names_prompt_placeholder_and_example(capsys, tmp_path, tiny_llava_entry):
    bad = _entry_with_prompt(tmp_path, tiny_llava_entry, "{question}\nAnswer:")
    rc, out, err = call(capsys, "validate", bad)
    assert rc == 2
    assert "prompt: '{question}\\nAnswer:'" in err
    assert "lacks the image placeholder '<image>' that LlavaProcessor expects" in err
    assert "e.g. prompt: '<image>\\n{question}\\nAnswer:'" in err
    assert "Traceback" not in out + err


def test_load_refuses_before_reading_weights(tmp_path, tiny_llava_entry, monkeypatch):
    import transformers

    from vseam_run.vlm import VLM

    def must_not_load(*a, **k):
        raise AssertionError("the weights were read before the prompt was checked")

    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained", must_not_load)
    bad = _entry_with_prompt(tmp_path, tiny_llava_entry, "Question: {question} Answer:")
    with pytest.raises(SpecError) as e:
        VLM.load(load_entry_file(bad), torch.device("cpu"), torch.float32)
    assert any("'<image>'" in line and "e.g. prompt:" in line for line in e.value.errors)


def test_run_stops_at_preflight_with_one_message(capsys, tmp_path, tiny_llava_entry):
    bad = _entry_with_prompt(tmp_path, tiny_llava_entry, "{question} answer:")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: bad-prompt\nmodel: {bad}\ndevice: cpu\n"
                    "data: {source: toyworld, toyworld: {images: 8}, limit: 4}\n")
    rc, out, err = call(capsys, "run", spec, "--db", tmp_path / "runs.db")
    assert rc == 2
    assert "lacks the image placeholder '<image>'" in err and "Traceback" not in err


def test_placeholder_where_the_processor_adds_image_tokens_itself(capsys, tmp_path):
    """BLIP-2 puts its query tokens in front itself: `<image>` in the prompt is one too many."""
    from vseam_run.zoo.families import write_family

    path, _ = write_family("blip2_opt", tmp_path, WORDS)
    bad = _entry_with_prompt(tmp_path, path, "<image>\n{question}\nAnswer:")
    rc, out, err = call(capsys, "validate", bad)
    assert rc == 2 and "puts the image tokens in front itself; remove '<image>'" in err
    rc, out, err = call(capsys, "validate", path)  # what models new wrote is right
    assert rc == 0, err


def test_models_new_takes_the_processors_placeholder():
    proc = types.SimpleNamespace(image_token="[IMG]", chat_template=None, tokenizer=None)
    prompt, origin = choose_prompt("mistral3_unknown", proc)
    assert prompt.startswith("[IMG]") and "{question}" in prompt and "'[IMG]'" in origin
    gemma = types.SimpleNamespace(boi_token="<start_of_image>", image_token="<image_soft_token>", chat_template=None)
    assert choose_prompt("not_in_table", gemma)[0].startswith("<start_of_image>")


def test_answer_case_from_the_vocabulary():
    def tok(*words):
        return types.SimpleNamespace(get_vocab=lambda: {w: i for i, w in enumerate(words)})

    assert answer_case_of(tok("\u2581Yes", "no"), "x")[0] == "capitalize"
    assert answer_case_of(tok("\u0120yes", "yes"), "x")[0] == "lower"
    case, why = answer_case_of(tok("Yes", "yes"), "paligemma")
    assert case == "lower" and "both" in why  # both present: the family's default
    assert answer_case_of(tok("Yes", "yes"), "llava")[0] == "capitalize"


def test_models_new_writes_answer_case_from_tokenizer(capsys, tmp_path, tiny_llava_entry):
    out = tmp_path / "new.yaml"
    rc, _, err = call(capsys, "models", "new", tiny_llava_entry.parent / "ckpt", "-o", out)
    assert rc == 0, err
    text = out.read_text()
    # The test tokenizer lower-cases: only `yes` is in its vocabulary.
    assert "answer_case: lower  # the vocabulary holds yes but not Yes" in text
    assert load_entry_file(out).answer_case == "lower"
