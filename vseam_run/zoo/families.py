"""Tiny random VLMs of several transformers families, built from configs, for tests.

Each builder returns (model, processor, entry) where `entry` holds the registry fields a
user would write for that family (class, prompt, module paths, image token attribute).
`write_family` saves the model with save_pretrained and writes the registry entry next to
it, so tests load it back exactly as a user's checkpoint would be loaded.

The families differ in what their wrappers hand the decoder stack: PaliGemma a prefix-LM
4-D mask built from token_type_ids (and Gemma's embedding scale), LLaVA-NeXT a variable
number of image tokens per image (tiles, `image_sizes`), Qwen2-VL 3-D multimodal-RoPE
positions computed from the image grid, Gemma3 a dict of masks per layer type (sliding and
full attention, bidirectional over the image). `scale_weights` makes single heads matter
(random init leaves head effects below any useful tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from PIL import Image

from vseam_run.zoo.build import LLAVA_MODULES, TinyVLMConfig, build_tokenizer, save, tiny_instructblip, tiny_llava

#: Families saved with save_pretrained and loaded back through a registry entry.
FAMILIES = ("llava", "instructblip", "paligemma", "llava_next", "gemma3", "idefics3", "blip2_opt", "aya_vision")
#: Families whose test entry is the one `vseam models new` writes (not the builder's hand-written one).
FROM_MODELS_NEW = ("blip2_opt", "aya_vision")
#: Families whose processor cannot be built here (no torchvision): used in memory, see Qwen2VLInputs.
IN_MEMORY = ("qwen2_vl", "qwen2_5_vl")


@dataclass
class Family:
    model: Any
    processor: Any
    entry: dict[str, Any]
    #: image sizes (w, h) to use; LLaVA-NeXT gets several shapes, so rows get different tile counts
    image_sizes: list[tuple[int, int]] = field(default_factory=lambda: [(32, 32)])


def _text_sizes(cfg: TinyVLMConfig) -> dict[str, int]:
    return dict(
        hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate, num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads, num_key_value_heads=cfg.text_kv_heads or cfg.text_heads,
        max_position_embeddings=512,
    )


def _tokenizer(words: list[str], extra: list[str]):
    tok = build_tokenizer(words)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": ["<image>"] + extra})
    return tok


def _named_tokenizer(words: list[str], named: dict[str, str]):
    """The word-level tokenizer with named special tokens (`tokenizer.boi_token` ...) that
    survive save_pretrained, as some processors look them up by attribute."""
    from transformers import PreTrainedTokenizerFast

    base = build_tokenizer(words)
    tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, pad_token="<pad>", unk_token="<unk>",
                                  bos_token="<s>", eos_token="</s>", extra_special_tokens=named)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"] + list(named.values())})
    return tok


def _entry(model_class: str, prompt: str, modules: dict[str, str], image_token_attr: str, **more) -> dict[str, Any]:
    return {**dict(model_class=model_class, processor_class="AutoProcessor", prompt=prompt, modules=modules,
                   image_token_attr=image_token_attr, answer_case="lower", dtype="float32"), **more}


def llava(words: list[str], cfg: TinyVLMConfig) -> Family:
    model, proc = tiny_llava(words, cfg)
    return Family(model, proc, _entry("LlavaForConditionalGeneration", "<image> {question} answer:", LLAVA_MODULES,
                                      "image_token_index"))


def instructblip(words: list[str], cfg: TinyVLMConfig) -> Family:
    from vseam_run.zoo.build import INSTRUCTBLIP_MODULES

    model, proc = tiny_instructblip(words, cfg)
    return Family(model, proc, _entry("InstructBlipForConditionalGeneration", "{question} answer:",
                                      INSTRUCTBLIP_MODULES, "image_token_index"))


def paligemma(words: list[str], cfg: TinyVLMConfig) -> Family:
    """PaliGemma: Gemma decoder with a prefix-LM mask (image + prompt attend both ways)."""
    from transformers import (GemmaConfig, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor,
                              SiglipImageProcessor, SiglipVisionConfig)

    torch.manual_seed(cfg.seed)
    tok = build_tokenizer(words)
    n_img = (cfg.image_size // cfg.patch_size) ** 2
    image_processor = SiglipImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size})
    image_processor.image_seq_length = n_img
    proc = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    text = GemmaConfig(vocab_size=len(tok), head_dim=cfg.text_hidden // cfg.text_heads, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=False, **_text_sizes(cfg))
    vision = SiglipVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                                num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                                image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.text_hidden)
    config = PaliGemmaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=proc.image_token_id,
                             projection_dim=cfg.text_hidden, hidden_size=cfg.text_hidden, tie_word_embeddings=False)
    config.text_config.num_image_tokens = n_img
    model = PaliGemmaForConditionalGeneration(config).eval()
    modules = dict(decoder="model.language_model", layers="model.language_model.layers",
                   final_norm="model.language_model.norm", lm_head="lm_head")
    # The processor adds the image tokens, <bos> and a final newline itself.
    return Family(model, proc, _entry("PaliGemmaForConditionalGeneration", "<image>{question} answer:", modules, "image_token_index"))


def llava_next(words: list[str], cfg: TinyVLMConfig) -> Family:
    """LLaVA-NeXT: images split into tiles by shape; rows get different numbers of image tokens."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration,
                              LlavaNextImageProcessor, LlavaNextProcessor)

    torch.manual_seed(cfg.seed)
    tok = build_tokenizer(words)
    s = cfg.image_size
    pinpoints = [[s, s], [s, 2 * s], [2 * s, s]]
    vision = CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                              image_size=s, patch_size=cfg.patch_size, projection_dim=cfg.vision_hidden)
    text = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **_text_sizes(cfg))
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                             image_grid_pinpoints=pinpoints, vision_feature_layer=-1,
                             vision_feature_select_strategy="default", tie_word_embeddings=False)
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                              image_grid_pinpoints=pinpoints)
    proc = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=cfg.patch_size,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1, image_token="<image>")
    return Family(model, proc, _entry("LlavaNextForConditionalGeneration", "<image> {question} answer:", LLAVA_MODULES,
                                      "image_token_index"),
                  image_sizes=[(s, s), (2 * s, s), (s, 2 * s)])


def qwen2_vl(words: list[str], cfg: TinyVLMConfig) -> Family:
    """Qwen2-VL: 3-D multimodal-RoPE positions from the image grid (rope deltas cached on the model)."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLProcessor)

    torch.manual_seed(cfg.seed)
    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _tokenizer(words, specials)
    patch, merge = 4, 2
    text = _mrope_text(tok, cfg)
    vision = dict(depth=cfg.vision_layers, embed_dim=cfg.vision_hidden, hidden_size=cfg.text_hidden,
                  num_heads=cfg.vision_heads, mlp_ratio=2, patch_size=patch, spatial_merge_size=merge,
                  temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(text_config=text, vision_config=vision,
                           image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                           video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                           vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                           vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"), tie_word_embeddings=False)
    return _qwen_family(Qwen2VLForConditionalGeneration(config).eval(), tok, cfg, patch, merge,
                        "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor")


def _mrope_text(tok, cfg: TinyVLMConfig) -> dict:
    """Qwen-VL text config: 3-D multimodal RoPE over the head's rotary half (temporal, height, width)."""
    head_dim = cfg.text_hidden // cfg.text_heads
    third = head_dim // 2 // 3
    section = [head_dim // 2 - 2 * third, third, third]
    return dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id, rope_scaling={"type": "mrope", "mrope_section": section},
                **_text_sizes(cfg))


def _qwen_family(model, tok, cfg: TinyVLMConfig, patch: int, merge: int, model_class: str, processor_class: str) -> Family:
    """The part Qwen2-VL and Qwen2.5-VL share: a fixed-size image processor, module paths, entry."""
    from transformers import Qwen2VLImageProcessor

    px = cfg.image_size * cfg.image_size
    image_processor = Qwen2VLImageProcessor(min_pixels=px, max_pixels=px, patch_size=patch, merge_size=merge,
                                            temporal_patch_size=2)
    modules = dict(decoder="model.language_model", layers="model.language_model.layers",
                   final_norm="model.language_model.norm", lm_head="lm_head")
    return Family(model, Qwen2VLInputs(image_processor, tok), _entry(
        model_class, "<|vision_start|><|image_pad|><|vision_end|>{question} answer:", modules,
        "image_token_id", processor_class=processor_class), image_sizes=[(32, 32), (48, 32), (32, 48)])


def qwen2_5_vl(words: list[str], cfg: TinyVLMConfig) -> Family:
    """Qwen2.5-VL: Qwen2-VL's 3-D multimodal RoPE, and a vision tower with windowed attention."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(cfg.seed)
    tok = _tokenizer(words, ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"])
    patch, merge = 4, 2
    text = _mrope_text(tok, cfg)
    vision = dict(depth=cfg.vision_layers, hidden_size=cfg.vision_hidden, out_hidden_size=cfg.text_hidden,
                  intermediate_size=cfg.vision_hidden * 2, num_heads=cfg.vision_heads, patch_size=patch,
                  spatial_merge_size=merge, temporal_patch_size=2, in_channels=3, window_size=16,
                  fullatt_block_indexes=[cfg.vision_layers - 1])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                              image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
                              video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
                              vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
                              vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"), tie_word_embeddings=False)
    return _qwen_family(Qwen2_5_VLForConditionalGeneration(config).eval(), tok, cfg, patch, merge,
                        "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor")


class Qwen2VLInputs:
    """What Qwen2VLProcessor does for images and text, without its video processor.

    Qwen2VLProcessor cannot be built or loaded without torchvision (it insists on a video
    processor), so the Qwen2-VL test builds its inputs the same way by hand: the image
    processor's patches and grid, `<|image_pad|>` repeated grid/merge² times, and the
    multimodal token types the model needs for its 3-D positions. The model is used in memory
    (VLM(...)), not through save/load.
    """

    def __init__(self, image_processor, tokenizer) -> None:
        self.image_processor, self.tokenizer = image_processor, tokenizer
        self.image_token = "<|image_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, images, text, return_tensors="pt", padding=True):
        img = self.image_processor(images=images, return_tensors="pt")
        counts = (img["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist()
        text = [t.replace(self.image_token, self.image_token * int(n)) for t, n in zip(text, counts)]
        enc = self.tokenizer(text, return_tensors="pt", padding=padding)
        mm = (enc["input_ids"] == self.image_token_id).long()
        return {**enc, **img, "mm_token_type_ids": mm}


def gemma3(words: list[str], cfg: TinyVLMConfig) -> Family:
    """Gemma3: sliding-window and full-attention layers get different masks (a dict per layer type)."""
    from transformers import (Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessor, Gemma3Processor,
                              Gemma3TextConfig, SiglipVisionConfig)

    torch.manual_seed(cfg.seed)
    specials = dict(boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")
    tok = _named_tokenizer(words, specials)
    tok.boi_token_id, tok.eoi_token_id, tok.image_token_id = (tok.convert_tokens_to_ids(t) for t in specials.values())
    mm_tokens = 4
    text = Gemma3TextConfig(vocab_size=len(tok), head_dim=cfg.text_hidden // cfg.text_heads, pad_token_id=tok.pad_token_id,
                            tie_word_embeddings=False,
                            sliding_window=4, layer_types=["sliding_attention", "full_attention"] * (cfg.text_layers // 2)
                            + ["sliding_attention"] * (cfg.text_layers % 2), **_text_sizes(cfg))
    vision = SiglipVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                                num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                                image_size=cfg.image_size, patch_size=cfg.patch_size)
    config = Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=mm_tokens,
                          boi_token_index=tok.boi_token_id, eoi_token_index=tok.eoi_token_id,
                          image_token_index=tok.image_token_id, tie_word_embeddings=False)
    model = Gemma3ForConditionalGeneration(config).eval()
    image_processor = Gemma3ImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size}, do_pan_and_scan=False)
    proc = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=mm_tokens)
    modules = dict(decoder="model.language_model", layers="model.language_model.layers",
                   final_norm="model.language_model.norm", lm_head="lm_head")
    return Family(model, proc, _entry("Gemma3ForConditionalGeneration", "<start_of_image> {question} answer:", modules,
                                      "image_token_index"))


def idefics3(words: list[str], cfg: TinyVLMConfig) -> Family:
    """Idefics3: image features in <fake_token_around_image>-wrapped runs, pixel-shuffled."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor, LlamaConfig)

    torch.manual_seed(cfg.seed)
    tok = _tokenizer(words, ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"])
    scale = 2
    seq_len = (cfg.image_size // cfg.patch_size) ** 2 // scale**2
    image_processor = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": cfg.image_size},
                                             max_image_size={"longest_edge": cfg.image_size})
    proc = Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len)
    text = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, tie_word_embeddings=False, **_text_sizes(cfg))
    vision = dict(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2, num_hidden_layers=cfg.vision_layers,
                  num_attention_heads=cfg.vision_heads, image_size=cfg.image_size, patch_size=cfg.patch_size)
    config = Idefics3Config(text_config=text.to_dict(), vision_config=vision, scale_factor=scale,
                            image_token_id=tok.convert_tokens_to_ids("<image>"), pad_token_id=tok.pad_token_id)
    model = Idefics3ForConditionalGeneration(config).eval()
    modules = dict(decoder="model.text_model", layers="model.text_model.layers", final_norm="model.text_model.norm",
                   lm_head="lm_head")
    return Family(model, proc, _entry("Idefics3ForConditionalGeneration", "<image>{question} answer:", modules,
                                      "image_token_id"))


def blip2_opt(words: list[str], cfg: TinyVLMConfig) -> Family:
    """BLIP-2 with OPT: a Q-Former's query tokens in front of an OPT decoder, whose layers
    flatten hidden states to [batch × tokens, hidden] before their MLP (fc1/fc2, no `mlp`
    module), and whose decoder takes no position ids but computes them from the mask."""
    from transformers import (BlipImageProcessor, Blip2Config, Blip2ForConditionalGeneration, Blip2Processor,
                              Blip2QFormerConfig, Blip2VisionConfig, OPTConfig)

    torch.manual_seed(cfg.seed)
    tok = build_tokenizer(words)
    proc = Blip2Processor(image_processor=BlipImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size}),
                          tokenizer=tok, num_query_tokens=cfg.num_query_tokens)
    vision = Blip2VisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                               num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                               image_size=cfg.image_size, patch_size=cfg.patch_size, initializer_range=0.02)
    qformer = Blip2QFormerConfig(vocab_size=len(tok), hidden_size=cfg.qformer_hidden, num_hidden_layers=cfg.qformer_layers,
                                 num_attention_heads=2, intermediate_size=cfg.qformer_hidden * 2,
                                 encoder_hidden_size=cfg.vision_hidden, max_position_embeddings=128)
    text = OPTConfig(vocab_size=len(tok), hidden_size=cfg.text_hidden, ffn_dim=cfg.text_intermediate,
                     num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                     word_embed_proj_dim=cfg.text_hidden, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=cfg.num_query_tokens, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         tie_word_embeddings=False)
    model = Blip2ForConditionalGeneration(config).eval()
    modules = dict(decoder="language_model.model.decoder", layers="language_model.model.decoder.layers",
                   final_norm="language_model.model.decoder.final_layer_norm", lm_head="language_model.lm_head",
                   attention="self_attn", o_proj="self_attn.out_proj", mlp="fc2")
    return Family(model, proc, _entry("Blip2ForConditionalGeneration", "{question} answer:", modules, "image_token_index"))


def aya_vision(words: list[str], cfg: TinyVLMConfig) -> Family:
    """Aya Vision: SigLIP features pixel-shuffled into a Cohere2 decoder (sliding-window and full
    layers, parallel attention and MLP, logits scaled by `logit_scale`); `<image>` in the prompt
    is expanded by the processor into START/patch/line-break tokens."""
    from transformers import (AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor, Cohere2Config,
                              GotOcr2ImageProcessorPil, SiglipVisionConfig)

    torch.manual_seed(cfg.seed)
    specials = ["<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>", "TILE", "TILE_GLOBAL"]
    tok = _tokenizer(words, specials)
    down = 2
    image_processor = GotOcr2ImageProcessorPil(size={"height": cfg.image_size, "width": cfg.image_size},
                                               crop_to_patches=False)
    proc = AyaVisionProcessor(image_processor=image_processor, tokenizer=tok, patch_size=cfg.patch_size,
                              img_size=cfg.image_size, downsample_factor=down)
    text = Cohere2Config(vocab_size=len(tok), pad_token_id=tok.pad_token_id, tie_word_embeddings=False, logit_scale=0.5,
                         sliding_window=4, layer_types=["sliding_attention", "full_attention"] * (cfg.text_layers // 2)
                         + ["sliding_attention"] * (cfg.text_layers % 2), **_text_sizes(cfg))
    vision = SiglipVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=cfg.vision_hidden * 2,
                                num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                                image_size=cfg.image_size, patch_size=cfg.patch_size)
    config = AyaVisionConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), downsample_factor=down,
                             image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"), tie_word_embeddings=False)
    model = AyaVisionForConditionalGeneration(config).eval()
    modules = dict(decoder="model.language_model", layers="model.language_model.layers",
                   final_norm="model.language_model.norm", lm_head="lm_head")
    return Family(model, proc, _entry("AyaVisionForConditionalGeneration", "<image>{question} answer:", modules,
                                      "image_token_index"))


BUILDERS: dict[str, Callable[[list[str], TinyVLMConfig], Family]] = dict(
    llava=llava, instructblip=instructblip, paligemma=paligemma, llava_next=llava_next, qwen2_vl=qwen2_vl, gemma3=gemma3, idefics3=idefics3,
    blip2_opt=blip2_opt, qwen2_5_vl=qwen2_5_vl, aya_vision=aya_vision,
)


@torch.no_grad()
def scale_weights(model: torch.nn.Module, modules: dict[str, str], logit_std: float = 4.0) -> None:
    """Make single attention heads matter.

    Library init (std 0.02) leaves every layer's output tiny next to the residual stream and
    the answer distribution nearly flat, so ablating one head moves the gold probability by
    ~1e-4: below any useful tolerance. Here every linear map of the decoder layers is drawn
    with std 1/sqrt(fan_in) (each layer's output as large as its input) and the LM head gives
    logits of std `logit_std`, so answers are peaked and single heads move them by > 0.05.
    """
    from vseam_run.vlm import get_module

    for layer in get_module(model, modules["layers"]):
        for m in layer.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(std=m.in_features ** -0.5)
    head = get_module(model, modules["lm_head"])
    head.weight.normal_(std=logit_std * head.in_features ** -0.5)


def write_family(name: str, folder: Path, words: list[str], cfg: TinyVLMConfig | None = None, *,
                 scale: bool = True) -> tuple[Path, Family]:
    """Build family `name`, save it under folder/ckpt and write folder/<name>.yaml; returns the entry path."""
    cfg = cfg or TinyVLMConfig(text_layers=2, text_heads=4, text_kv_heads=2, seed=1)
    fam = BUILDERS[name](words, cfg)
    if scale:
        scale_weights(fam.model, fam.entry["modules"])
    save(fam.model, fam.processor, Path(folder) / "ckpt")
    path = Path(folder) / f"tiny-{name}.yaml"
    if name in FROM_MODELS_NEW:
        # The entry a user gets from `vseam models new ckpt` (its config, meta tree and processor).
        from vseam_run.inspect_model import entry_yaml, inspect

        path.write_text(entry_yaml(inspect(str(Path(folder) / "ckpt")), f"tiny-{name.replace('_', '-')}", path))
        return path, fam
    entry = dict(name=f"tiny-{name.replace('_', '-')}", path="ckpt", **fam.entry)
    path.write_text(yaml.safe_dump(entry, sort_keys=False))
    return path, fam


def memory_family(name: str, words: list[str], cfg: TinyVLMConfig | None = None):
    """(VLM, Family) for a family used in memory, with the same weight scaling as write_family."""
    from vseam_run.registry import ModelEntry
    from vseam_run.vlm import VLM

    cfg = cfg or TinyVLMConfig(text_layers=2, text_heads=4, text_kv_heads=2, seed=1)
    fam = BUILDERS[name](words, cfg)
    scale_weights(fam.model, fam.entry["modules"])
    entry = ModelEntry.model_validate(dict(name=f"tiny-{name.replace('_', '-')}", path="unused", **fam.entry))
    return VLM(entry, fam.model.eval().requires_grad_(False), fam.processor, torch.device("cpu"), torch.float32), fam


def family_images(fam: Family, n: int, seed: int = 0) -> list[Image.Image]:
    """n random images cycling through the family's image sizes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            for w, h in (fam.image_sizes[i % len(fam.image_sizes)] for i in range(n))]
