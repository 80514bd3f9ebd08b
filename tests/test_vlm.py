"""The model wrapper: its decomposed scoring path must equal the model's own forward pass."""

from __future__ import annotations

import pytest
import torch
import yaml

from tests.conftest import load_vlm, write_entry
from vseam_run.errors import VseamError
from vseam_run.registry import load_entry_file
from vseam_run.vlm import VLM


def test_prepared_path_equals_full_forward_and_padding_is_harmless(tiny_vlm, toy_examples):
    """Batched, left-padded scoring through cached embeddings == batch-1 full-model logits."""
    vlm = tiny_vlm
    ex = toy_examples
    prep = vlm.prepare(vlm.encode([e.image for e in ex], [e.question for e in ex]))
    assert (prep.attention_mask == 0).any(), "questions of different lengths should produce padding"
    batched = vlm.last_logits(prep).softmax(-1)
    for i, e in enumerate(ex):
        inputs = vlm.encode([e.image], [e.question])
        with torch.no_grad():
            full = vlm.model(**inputs).logits[:, -1].softmax(-1)
        assert torch.allclose(full[0], batched[i], atol=1e-6)


def test_run_from_middle_layer_reproduces_full_pass(tiny_vlm, toy_examples):
    vlm = tiny_vlm
    prep = vlm.prepare(vlm.encode([e.image for e in toy_examples], [e.question for e in toy_examples]))
    hidden, logits = vlm.layer_inputs(prep)
    for layer in range(vlm.num_layers):
        again = vlm.run_from_layer(prep, layer, hidden[layer])
        assert torch.allclose(again, logits, atol=1e-5)
    # next_hidden advances exactly one layer.
    assert torch.allclose(vlm.next_hidden(prep, 0, hidden[0]), hidden[1], atol=1e-6)


def test_answer_token_is_first_token_after_prompt(tiny_vlm):
    tok = tiny_vlm.tokenizer
    ids = tiny_vlm.answer_token_ids(["yes", "Red", "", "zebra"])
    assert ids[0] == tok.convert_tokens_to_ids("yes")
    assert ids[1] == tok.convert_tokens_to_ids("red")  # answer_case: lower
    assert ids[2] is None and ids[3] is None  # empty, and a word the tokenizer does not know


def test_sentencepiece_leading_space_token():
    """For a SentencePiece (Llama) tokenizer the answer's first token is the '▁yes' variant."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁answer": 1, ":": 2, "▁yes": 3, "yes": 4, "▁": 5}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tk.decoder = decoders.Metaspace()
    # Metaspace splits on spaces, so "answer:" is one piece; give it as a unit.
    vocab2 = {**vocab, "▁answer:": 6}
    tk = Tokenizer(models.WordLevel(vocab2, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")

    class _Stub(VLM):
        def __init__(self):
            self.tokenizer = fast
            self.entry = type("E", (), {"prompt": "Q: {question} answer:", "answer_case": "as_is"})()

    assert _Stub().answer_token_ids(["yes"]) == [3]


def test_wrong_module_path_names_the_entry_field(tiny_llava_entry, tmp_path):
    data = yaml.safe_load(tiny_llava_entry.read_text())
    data["modules"]["lm_head"] = "model.lm_head_typo"
    (tmp_path / "ckpt").symlink_to(tiny_llava_entry.parent / "ckpt")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(VseamError, match="modules.lm_head"):
        load_vlm(path)


def test_o_proj_width_check(tiny_llava_entry, tmp_path):
    """Pointing o_proj at a module whose input is not heads × head_dim is rejected."""
    data = yaml.safe_load(tiny_llava_entry.read_text())
    data["modules"]["o_proj"] = "mlp.down_proj"
    (tmp_path / "ckpt").symlink_to(tiny_llava_entry.parent / "ckpt")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(VseamError, match="modules.o_proj input width"):
        load_vlm(path)


def test_missing_checkpoint_says_how_to_provide_it(tmp_path):
    path = write_entry(tmp_path, "nothing", "llava")
    with pytest.raises(VseamError, match="no checkpoint"):
        load_vlm(path)
