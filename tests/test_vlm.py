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


def _metaspace_tokenizer():
    """A SentencePiece-style tokenizer: words carry a '▁' leading-space marker, newlines split off."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁answer:": 1, "▁yes": 2, "yes": 3, "\n": 4, "▁Yes": 5}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", "isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
    ])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>")


def test_gold_token_with_a_leading_space_marker():
    """After 'answer:' the model emits '▁yes'; after a newline (PaliGemma's processor ends every
    prompt with one) it emits 'yes' — tokenizing the answer alone would give '▁yes' both times."""
    from vseam_run.vlm import first_answer_token

    tok = _metaspace_tokenizer()
    assert first_answer_token(tok, "answer:", "yes") == 2
    assert first_answer_token(tok, "answer:\n", "yes") == 3
    assert tok("yes", add_special_tokens=False).input_ids == [2]  # the answer alone: the wrong one after "\n"
    assert first_answer_token(tok, "answer:", "zebra") is None  # <unk>
    assert first_answer_token(tok, "answer:", "") is None


def test_gold_token_without_a_marker_and_the_processed_prompt_tail(tiny_vlm):
    """Word-level tokenizer (no marker): the tail is the processed prompt's last tokens."""
    from vseam_run.vlm import first_answer_token

    tok = tiny_vlm.tokenizer
    assert tiny_vlm.prompt_tail.replace(" ", "") == "answer:"
    assert first_answer_token(tok, tiny_vlm.prompt_tail, "red") == tok.convert_tokens_to_ids("red")
    msg = tiny_vlm.explain_answer("zebra")
    assert "'answer : zebra'" in msg and "<unk>" in msg, msg


def test_image_positions_follow_image_token_attr(tiny_vlm, toy_examples):
    prep = tiny_vlm.prepare(tiny_vlm.encode([e.image for e in toy_examples], [e.question for e in toy_examples]))
    pos = tiny_vlm.image_positions(prep)
    assert pos.shape == prep.input_ids.shape
    counts = pos.sum(1)
    assert (counts == counts[0]).all() and counts[0] > 0  # the same number of image tokens in every row


def test_unknown_image_token_attr_names_the_field(tiny_llava_entry, tmp_path):
    data = yaml.safe_load(tiny_llava_entry.read_text())
    data["image_token_attr"] = "image_tok"
    (tmp_path / "ckpt").symlink_to(tiny_llava_entry.parent / "ckpt")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(VseamError, match="image_token_attr 'image_tok' is not an attribute of LlavaConfig") as e:
        load_vlm(path)
    assert "set image_token_attr: image_token_id" in str(e.value)


def test_batch_dims_of_captured_arguments():
    from vseam_run.vlm import batch_dim

    B, T = 3, 20
    assert batch_dim(torch.zeros(B, 1, T, T), B, T, "attention_mask") == 0
    assert batch_dim(torch.zeros(1, 1, T, T), B, T, "attention_mask") is None  # broadcast
    assert batch_dim(torch.zeros(3, B, T), B, T, "position_ids") == 1  # M-RoPE, even with B == 3
    assert batch_dim(torch.zeros(3, B, T, 8), B, T, "position_embeddings") == 1
    assert batch_dim(torch.zeros(B, T, 8), B, T, "position_embeddings") == 0
    assert batch_dim(torch.arange(T), B, T, "cache_position") is None


def test_encoder_decoder_language_model_is_refused(tmp_path):
    """InstructBLIP with a Flan-T5 language model: refused at load, saying why."""
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, T5Config

    from tests.conftest import WORDS
    from vseam_run.zoo.build import TinyVLMConfig, save, tiny_instructblip

    _, processor = tiny_instructblip(WORDS, TinyVLMConfig())
    base = InstructBlipConfig()
    t5 = T5Config(vocab_size=len(processor.tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                  decoder_start_token_id=0, pad_token_id=0)
    config = InstructBlipConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, image_size=32, patch_size=8),
                                qformer_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64, encoder_hidden_size=32),
                                text_config=t5.to_dict(), num_query_tokens=4, image_token_index=base.image_token_index)
    save(InstructBlipForConditionalGeneration(config), processor, tmp_path / "ckpt")
    path = write_entry(tmp_path, "t5", "instructblip")
    with pytest.raises(VseamError, match="encoder-decoder"):
        load_vlm(path)


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


def test_decoder_that_changes_the_hidden_state_between_layers_is_refused(tiny_llava_entry, toy_examples):
    """Like Qwen3-VL's deepstack (visual features added after some layers): a replay of the layers
    alone would miss it, so prepare refuses with the reason instead of giving other numbers."""
    vlm = load_vlm(tiny_llava_entry)
    handle = vlm.layers[1].register_forward_pre_hook(lambda _m, args: (args[0] + 1.0,) + tuple(args[1:]))
    try:
        with pytest.raises(VseamError, match="changes the hidden state between layers 0 and 1"):
            vlm.prepare(vlm.encode([e.image for e in toy_examples], [e.question for e in toy_examples]))
    finally:
        handle.remove()
