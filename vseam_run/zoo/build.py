"""Build small LLaVA / InstructBLIP models from configs, with an offline word-level tokenizer.

Used by the toy-model training command and by the tests: both save with `save_pretrained`
(safetensors) and load back through a registry entry, the same path a real checkpoint takes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    BlipImageProcessor,
    CLIPImageProcessor,
    CLIPVisionConfig,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]

# Registry `modules:` for the transformers 5.x classes built here (and for the shipped entries).
LLAVA_MODULES = dict(
    decoder="model.language_model", layers="model.language_model.layers",
    final_norm="model.language_model.norm", lm_head="lm_head",
)
INSTRUCTBLIP_MODULES = dict(
    decoder="language_model.model", layers="language_model.model.layers",
    final_norm="language_model.model.norm", lm_head="language_model.lm_head",
)
PUNCTUATION = ["?", ":", ".", ","]


@dataclass
class TinyVLMConfig:
    """Sizes of a small VLM. Defaults give a model of a few hundred KB, for tests."""

    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    text_kv_heads: int | None = None
    text_intermediate: int = 128
    qformer_hidden: int = 32
    qformer_layers: int = 1
    num_query_tokens: int = 4
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over `words`; punctuation is split off as its own token.

    Word-level means an answer's first token is the whole word, with no SentencePiece
    leading-space variant, which keeps the toy world's answer scoring unambiguous.
    """
    vocab: dict[str, int] = {}
    for w in SPECIALS + PUNCTUATION + [w.lower() for w in words]:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tok


def _llama_config(cfg: TinyVLMConfig, vocab_size: int, pad_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_intermediate,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads or cfg.text_heads,
        max_position_embeddings=512,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
    )


def tiny_llava(words: list[str], cfg: TinyVLMConfig | None = None):
    """A randomly initialised LlavaForConditionalGeneration and its LlavaProcessor."""
    cfg = cfg or TinyVLMConfig()
    torch.manual_seed(cfg.seed)
    tok = build_tokenizer(words)
    image_token_id = tok.convert_tokens_to_ids("<image>")
    n_patches = (cfg.image_size // cfg.patch_size) ** 2
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_hidden * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_llama_config(cfg, len(tok), tok.pad_token_id),
        image_token_index=image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=n_patches,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": cfg.image_size},
        crop_size={"height": cfg.image_size, "width": cfg.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    return model, processor


def tiny_instructblip(words: list[str], cfg: TinyVLMConfig | None = None):
    """A randomly initialised InstructBlipForConditionalGeneration and its InstructBlipProcessor."""
    cfg = cfg or TinyVLMConfig()
    torch.manual_seed(cfg.seed)
    tok = build_tokenizer(words)
    qtok = build_tokenizer(words)
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size}),
        tokenizer=tok,
        qformer_tokenizer=qtok,
        num_query_tokens=cfg.num_query_tokens,
    )
    image_token_id = tok.convert_tokens_to_ids("<image>")
    vision = InstructBlipVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_hidden * 2,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        # The library default (1e-10) suits loading pretrained weights, not training from
        # scratch: position embeddings start at zero and the tower cannot tell patches apart.
        initializer_range=0.02,
    )
    qformer = InstructBlipQFormerConfig(
        vocab_size=len(qtok),
        hidden_size=cfg.qformer_hidden,
        num_hidden_layers=cfg.qformer_layers,
        num_attention_heads=2,
        intermediate_size=cfg.qformer_hidden * 2,
        encoder_hidden_size=cfg.vision_hidden,
        pad_token_id=qtok.pad_token_id,
        max_position_embeddings=128,
    )
    config = InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=_llama_config(cfg, len(tok), tok.pad_token_id).to_dict(),
        num_query_tokens=cfg.num_query_tokens,
        image_token_index=image_token_id,
    )
    model = InstructBlipForConditionalGeneration(config).eval()
    # The library initialises for loading pretrained weights, not for training from scratch:
    # zero query tokens (identical queries would stay identical under training) and a vision
    # tower at std 0.02, which learned shapes far slower (patch-kind accuracy 0.49 after 1,500
    # steps; 0.91 with this fan-in scaled init; CLIP's own init 0.75). Re-initialise both.
    with torch.no_grad():
        model.query_tokens.normal_(std=0.02)
        for m in model.vision_model.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                m.weight.normal_(std=m.weight[0].numel() ** -0.5)
                if m.bias is not None:
                    m.bias.zero_()
    return model, processor


def save(model, processor, out_dir: Path) -> Path:
    """Save weights as safetensors plus the processor files, as a real checkpoint folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
