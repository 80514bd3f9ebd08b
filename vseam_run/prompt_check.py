"""Does an entry's prompt carry the image placeholder its processor expects?

A prompt without the family's placeholder (`<image>` where InternVL's processor wants
`<IMG_CONTEXT>`, Mistral3's `[IMG]`) ends in the processor's ValueError from deep inside
encoding, or in a model that silently sees no image; a placeholder where the processor puts
the image tokens itself (BLIP-2, InstructBLIP) gives the model more image positions than
features. Both are found here from the processor alone (tokenizer and image-processor files,
no weights): by `vseam validate` and by `VLM.load` before the weights are read.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from vseam_run.registry import ModelEntry

#: Processor attributes that name what goes in the text for one image, most specific first
#: (Gemma3 expands its `boi_token`; the others their `image_token`).
PLACEHOLDER_ATTRS = ("boi_token", "image_token")


def _text(tok: Any) -> str | None:
    tok = getattr(tok, "content", tok)  # AddedToken
    return tok if isinstance(tok, str) and tok else None


def placeholder_of(processor: Any) -> str | None:
    """The text the processor expects for one image: its own attribute, else the tokenizer's
    named special token (None when neither names one)."""
    for owner in (processor, getattr(processor, "tokenizer", None)):
        for attr in PLACEHOLDER_ATTRS:
            try:
                found = _text(getattr(owner, attr, None))
            except Exception:  # noqa: BLE001 - some tokenizers raise for unset named tokens
                found = None
            if found:
                return found
    return None


def _image_token_id(processor: Any) -> int | None:
    tid = getattr(processor, "image_token_id", None)
    if isinstance(tid, int):
        return tid
    tok = _text(getattr(processor, "image_token", None))
    return processor.tokenizer.convert_tokens_to_ids(tok) if tok is not None else None


def _count(processor: Any, prompt: str) -> int:
    """Image tokens in the processor's output for one image and `prompt` (raises what the processor raises)."""
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    try:
        ids = processor(images=[image], text=[prompt], return_tensors="pt")["input_ids"]
    except ValueError:
        ids = processor(images=[[image]], text=[prompt], return_tensors="pt")["input_ids"]
    tid = _image_token_id(processor)
    return -1 if tid is None else int((ids == tid).sum())


def example_prompt(processor: Any, placeholder: str) -> str:
    """A prompt for the message: the checkpoint's chat template when it has one, else a plain one."""
    from vseam_run.inspect_model import _template_prompt

    return _template_prompt(processor, None) or f"{placeholder}\n{{question}}\nAnswer:"


def prompt_problems(entry: ModelEntry, processor: Any) -> list[str]:
    """`prompt: ...` lines for every way the entry's prompt does not fit its processor."""
    placeholder = placeholder_of(processor)
    prompt = entry.prompt.format(question="what is it")
    where = f"prompt: {entry.prompt!r} (registry entry '{entry.name}')"
    try:
        n = _count(processor, prompt)
    except Exception as e:  # noqa: BLE001 - the processor refusing the prompt is the finding
        said = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        if placeholder is None:
            return [f"{where}: {type(processor).__name__} cannot encode it with an image ({said})"]
        if placeholder in entry.prompt:
            return [f"{where}: {type(processor).__name__} cannot encode it with an image ({said})"]
        return [f"{where} lacks the image placeholder '{placeholder}' that {type(processor).__name__} expects "
                f"({said}); e.g. prompt: {example_prompt(processor, placeholder)!r}"]
    if placeholder and placeholder in entry.prompt:
        try:
            without = _count(processor, prompt.replace(placeholder, ""))
        except Exception:  # noqa: BLE001 - the processor needs the placeholder: the prompt is right
            without = 0
        if without > 0 and n > without:
            return [f"{where}: {type(processor).__name__} puts the image tokens in front itself; remove "
                    f"'{placeholder}' from the prompt (it gives {n} image positions for {without} image features), "
                    f"e.g. prompt: {entry.prompt.replace(placeholder, '').strip()!r}"]
    if n == 0:
        eg = example_prompt(processor, placeholder or "<image>")
        return [f"{where}: the processed prompt holds no image token, so the model would not see the image; "
                f"put the placeholder '{placeholder or '?'}' in it, e.g. prompt: {eg!r}"]
    return []


def load_processor(entry: ModelEntry) -> Any | None:
    """The entry's processor from local files, or None when it cannot be built here."""
    import os

    import transformers

    from vseam_run.vlm import weights_source

    try:
        source = weights_source(entry)
        cls = getattr(transformers, entry.processor_class)
        return cls.from_pretrained(source, revision=entry.revision, trust_remote_code=entry.trust_remote_code,
                                   local_files_only=os.environ.get("VSEAM_ALLOW_DOWNLOAD") != "1")
    except Exception:  # noqa: BLE001 - a missing processor is reported elsewhere (weights, load)
        return None
