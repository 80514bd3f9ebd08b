"""Tiny random edit-stage models built from configs and saved like real ones (no downloads): a
Stable Diffusion inpainting pipeline (9-channel UNet, AutoencoderKL, CLIPTextModel, a word-level
tokenizer), a SamModel + SamProcessor and a CLIPModel + CLIPProcessor."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "a photo of the an and made to left right in front behind above below on under linked not "
    "circle ring square cross triangle diamond red green blue yellow solid striped dotted "
    "low quality blurry"
).split()


def word_tokenizer(max_length: int):
    """A word-level fast tokenizer (saved as the generic PreTrainedTokenizerFast so it reloads as
    itself) that wraps every text in <bos> … <eos> (CLIP pools at the <eos>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<bos>", "<eos>", *WORDS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", model_max_length=max_length
    )


def tiny_inpaint_pipeline(folder: Path, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = word_tokenizer(12)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=12, pad_token_id=0, bos_token_id=2, eos_token_id=3,
    ))  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=8, sample_size=64,
    )  # fmt: skip
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=DDIMScheduler(steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def tiny_sam(folder: Path, seed: int = 0) -> Path:
    from transformers import SamConfig, SamImageProcessor, SamMaskDecoderConfig, SamModel, SamProcessor
    from transformers import SamPromptEncoderConfig, SamVisionConfig

    torch.manual_seed(seed)
    cfg = SamConfig(
        vision_config=SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                      image_size=64, patch_size=8, mlp_dim=64, global_attn_indexes=[1], window_size=4,
                                      num_pos_feats=8),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                                 iou_head_hidden_dim=16),
    )  # fmt: skip
    SamModel(cfg).save_pretrained(folder)
    proc = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                             mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})  # fmt: skip
    SamProcessor(proc).save_pretrained(folder)
    return folder


def tiny_clip(folder: Path, seed: int = 0) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tok = word_tokenizer(16)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=16, pad_token_id=0, bos_token_id=2, eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16, logit_scale_init_value=4.0,
    )  # fmt: skip
    CLIPModel(cfg).save_pretrained(folder)
    image_proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_proc, tokenizer=tok).save_pretrained(folder)
    return folder
