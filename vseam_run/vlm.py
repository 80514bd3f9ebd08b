"""A loaded VLM behind one small interface.

Everything the stages need goes through here: building inputs, scoring the gold answer's
first token at the last position, and finding the language model's layers and o_proj
modules from the registry entry. Scoring runs the *language model alone* on input
embeddings computed once (image features merged in), with explicit position ids, so a
left-padded batch gives the same numbers as batch-1 passes and later layers can be run
from a cached hidden state (see `run_from_layer`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from PIL import Image
from torch import nn

from vseam_run.errors import VseamError
from vseam_run.registry import ModelEntry


def get_module(root: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted path (`model.language_model.layers`, `layers.3`) on a module."""
    mod = root
    for part in path.split("."):
        if part.isdigit() and isinstance(mod, (nn.ModuleList, nn.Sequential)):
            mod = mod[int(part)]
        else:
            mod = getattr(mod, part)
    return mod


@dataclass
class Prepared:
    """Language-model inputs for a batch: embeddings with image features merged in."""

    embeds: torch.Tensor  # [B, T, D]
    attention_mask: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T]

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def repeat_rows(self, n: int) -> "Prepared":
        """Each row repeated n times in place (row q → rows q*n .. q*n+n-1)."""
        return Prepared(
            self.embeds.repeat_interleave(n, 0),
            self.attention_mask.repeat_interleave(n, 0),
            self.position_ids.repeat_interleave(n, 0),
        )

    def rows(self, idx: torch.Tensor | slice) -> "Prepared":
        return Prepared(self.embeds[idx], self.attention_mask[idx], self.position_ids[idx])


@dataclass
class Scores:
    """Per-question gold-token results at the last position."""

    gold_prob: torch.Tensor  # [B]
    pred_id: torch.Tensor  # [B]
    correct: torch.Tensor  # [B] bool (the paper's rule: argmax == gold first token)


class _Captured(Exception):
    def __init__(self, value: torch.Tensor) -> None:
        self.value = value


class VLM:
    """A VLM loaded from a registry entry."""

    def __init__(self, entry: ModelEntry, model: nn.Module, processor, device: torch.device, dtype: torch.dtype) -> None:
        self.entry = entry
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.tokenizer = processor.tokenizer
        # Left padding puts every row's last real token at position -1.
        self.tokenizer.padding_side = "left"
        text_cfg = getattr(model.config, entry.text_config, None) or model.config
        self.num_layers: int = text_cfg.num_hidden_layers
        self.num_heads: int = text_cfg.num_attention_heads
        self.head_dim: int = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // self.num_heads
        self._check_paths()

    # ---- loading -------------------------------------------------------------------------

    @classmethod
    def load(cls, entry: ModelEntry, device: torch.device, dtype: torch.dtype) -> "VLM":
        """Load weights (safetensors only, local files unless VSEAM_ALLOW_DOWNLOAD=1) and check the entry."""
        import transformers

        source = weights_source(entry)
        model_cls = getattr(transformers, entry.model_class)
        proc_cls = getattr(transformers, entry.processor_class)
        kwargs = dict(
            revision=entry.revision,
            trust_remote_code=entry.trust_remote_code,
            local_files_only=os.environ.get("VSEAM_ALLOW_DOWNLOAD") != "1",
        )
        try:
            processor = proc_cls.from_pretrained(source, **kwargs)
            model = model_cls.from_pretrained(source, dtype=dtype, use_safetensors=True, **kwargs)
        except (OSError, ValueError) as e:
            raise VseamError(
                f"model '{entry.name}': cannot load weights from {source}: {str(e).splitlines()[0]}",
                hint=_weights_hint(entry),
            ) from e
        model.to(device).eval()
        model.requires_grad_(False)
        return cls(entry, model, processor, device, dtype)

    def _check_paths(self) -> None:
        """Every module path of the entry resolves, and o_proj's input is heads × head_dim wide."""
        m = self.entry.modules
        for field in ("decoder", "layers", "final_norm", "lm_head"):
            try:
                get_module(self.model, getattr(m, field))
            except AttributeError:
                raise VseamError(
                    f"registry entry '{self.entry.name}': modules.{field} = '{getattr(m, field)}' does not resolve "
                    f"on {type(self.model).__name__}",
                    hint="check the module path against the loaded class (print(model) lists them)",
                ) from None
        layers = self.layers
        if not isinstance(layers, nn.ModuleList) or len(layers) != self.num_layers:
            raise VseamError(f"registry entry '{self.entry.name}': modules.layers is not a ModuleList of {self.num_layers} layers")
        prefix, _, attr = m.layers.rpartition(".")
        if prefix != m.decoder:
            raise VseamError(f"registry entry '{self.entry.name}': modules.layers must be an attribute of modules.decoder ('{m.decoder}.<name>')")
        self._layers_attr = attr
        for field in ("attention", "o_proj", "mlp"):
            try:
                get_module(layers[0], getattr(m, field))
            except AttributeError:
                raise VseamError(
                    f"registry entry '{self.entry.name}': modules.{field} = '{getattr(m, field)}' does not resolve on a decoder layer",
                    hint="paths of attention, o_proj and mlp are relative to one layer",
                ) from None
        width = self.o_proj(0).in_features
        if width != self.num_heads * self.head_dim:
            raise VseamError(
                f"registry entry '{self.entry.name}': modules.o_proj input width {width} != heads × head_dim "
                f"({self.num_heads} × {self.head_dim})",
                hint="o_proj must be the attention output projection whose input is the concatenated heads",
            )

    # ---- modules -------------------------------------------------------------------------

    @property
    def decoder(self) -> nn.Module:
        return get_module(self.model, self.entry.modules.decoder)

    @property
    def layers(self) -> nn.ModuleList:
        return get_module(self.model, self.entry.modules.layers)

    @property
    def lm_head(self) -> nn.Module:
        return get_module(self.model, self.entry.modules.lm_head)

    def o_proj(self, layer: int) -> nn.Linear:
        return get_module(self.layers[layer], self.entry.modules.o_proj)

    # ---- inputs --------------------------------------------------------------------------

    def prompt(self, question: str) -> str:
        return self.entry.prompt.format(question=question)

    def encode(self, images: Sequence[Image.Image], questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Processor inputs for a batch, left-padded, on the model's device and dtype."""
        batch = self.processor(
            images=list(images), text=[self.prompt(q) for q in questions], return_tensors="pt", padding=True
        )
        out = {}
        for k, v in batch.items():
            v = v.to(self.device)
            out[k] = v.to(self.dtype) if v.is_floating_point() else v
        return out

    def answer_token_ids(self, answers: Sequence[str]) -> list[int | None]:
        """The first token the model would emit for each answer right after the prompt.

        Tokenizes `prompt tail + " " + answer` and takes the first token past the tail, so
        SentencePiece's leading-space variants ("▁Yes" vs "Yes") come out as the model sees
        them. None when the answer adds no token.
        """
        tail = self.entry.prompt.rsplit("{question}", 1)[-1].strip() or "?"
        base = self.tokenizer(tail, add_special_tokens=False).input_ids
        out: list[int | None] = []
        for a in answers:
            a = a.strip()
            a = {"lower": a.lower(), "capitalize": a[:1].upper() + a[1:]}.get(self.entry.answer_case, a)
            ids = self.tokenizer(f"{tail} {a}", add_special_tokens=False).input_ids
            k = 0
            while k < len(base) and k < len(ids) and ids[k] == base[k]:
                k += 1
            tok = ids[k] if k < len(ids) else None
            if tok is not None and tok == self.tokenizer.unk_token_id:
                tok = None
            out.append(tok)
        return out

    # ---- running -------------------------------------------------------------------------

    @torch.no_grad()
    def prepare(self, inputs: dict[str, torch.Tensor]) -> Prepared:
        """Run the vision side once and capture the language model's input embeddings."""

        def grab(_mod, _args, kwargs):
            raise _Captured(kwargs["inputs_embeds"])

        handle = self.decoder.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            self.model(**inputs)
        except _Captured as c:
            embeds = c.value
        else:  # pragma: no cover - a decoder that is never called is an entry error
            raise VseamError(f"registry entry '{self.entry.name}': modules.decoder was never called with inputs_embeds")
        finally:
            handle.remove()
        mask = inputs["attention_mask"]
        # Positions count real tokens only, so left padding does not shift them.
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return Prepared(embeds.detach(), mask, position_ids)

    def last_logits(
        self, prep: Prepared, start_layer: int = 0, hidden: torch.Tensor | None = None, *, tail_only: bool = True
    ) -> torch.Tensor:
        """Logits at the last position, running layers [start_layer:] from `hidden` (default: embeddings).

        `tail_only`: the last layer's MLP runs on the last position only (see `_last_mlp_tail_only`);
        the logits are the same, the work of one MLP over the whole sequence is saved.
        """
        x = prep.embeds if hidden is None else hidden
        tail = self._last_mlp_tail_only() if tail_only else contextlib.nullcontext()
        with self._layers_from(start_layer), tail:
            out = self.decoder(
                inputs_embeds=x, attention_mask=prep.attention_mask, position_ids=prep.position_ids, use_cache=False
            )
        return self.lm_head(out.last_hidden_state[:, -1]).float()

    def _last_mlp_tail_only(self):
        """Feed the last layer's MLP the last position only.

        Nothing after the last layer mixes positions (the final norm and the LM head act per
        position) and only the last position's logits are read, so the MLP's output at the
        other positions is never used. Its [B, 1, D] output broadcasts in the residual sum;
        the other positions' final states are then wrong but unread. `check_truncation`
        compares against a pass without this.
        """
        mlp = get_module(self.layers[self.num_layers - 1], self.entry.modules.mlp)
        return pre_hooks([(mlp, lambda _m, args: (args[0][:, -1:],) + tuple(args[1:]))])

    def run_from_layer(self, prep: Prepared, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.last_logits(prep, start_layer=layer, hidden=hidden)

    @contextlib.contextmanager
    def _layers_from(self, start: int) -> Iterator[None]:
        """Temporarily make the decoder's layer list start at `start`.

        The decoder then treats `inputs_embeds` as the hidden state entering layer `start`,
        computing masks and rotary embeddings exactly as in a full pass. `check_truncation`
        verifies this holds for the loaded architecture.
        """
        if start == 0:
            yield
            return
        full = self.layers
        setattr(self.decoder, self._layers_attr, nn.ModuleList(list(full)[start:]))
        try:
            yield
        finally:
            setattr(self.decoder, self._layers_attr, full)

    @torch.no_grad()
    def next_hidden(self, prep: Prepared, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The hidden state entering layer+1, given the one entering `layer` (runs one layer only)."""
        if layer + 1 >= self.num_layers:
            raise ValueError("no layer after the last one")

        def grab(_m, args, kwargs):
            raise _Captured((args[0] if args else kwargs["hidden_states"]).detach())

        handle = self.layers[layer + 1].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with self._layers_from(layer):
                self.decoder(inputs_embeds=hidden, attention_mask=prep.attention_mask, position_ids=prep.position_ids, use_cache=False)
        except _Captured as c:
            return c.value
        finally:
            handle.remove()
        raise RuntimeError("layer+1 was not reached")  # pragma: no cover

    @torch.no_grad()
    def layer_inputs(self, prep: Prepared) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The hidden state entering every layer, and the last-position logits, from one pass."""
        captured: list[torch.Tensor] = [None] * self.num_layers  # type: ignore[list-item]
        handles = []
        for i, layer in enumerate(self.layers):
            def hook(_m, args, kwargs, i=i):
                captured[i] = (args[0] if args else kwargs["hidden_states"]).detach()
            handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
        try:
            logits = self.last_logits(prep)
        finally:
            for h in handles:
                h.remove()
        return captured, logits

    @torch.no_grad()
    def check_truncation(self, prep: Prepared, atol: float = 1e-4) -> None:
        """Running from a cached middle-layer state must reproduce the full pass; else exact search is unsafe."""
        hidden, _ = self.layer_inputs(prep.rows(slice(0, 1)))
        full = self.last_logits(prep.rows(slice(0, 1)), tail_only=False)
        mid = self.num_layers // 2
        again = self.run_from_layer(prep.rows(slice(0, 1)), mid, hidden[mid])
        diff = (again.softmax(-1) - full.softmax(-1)).abs().max().item()
        if diff > atol:
            raise VseamError(
                f"model '{self.entry.name}': running layers {mid}.. from a cached hidden state differs from a full "
                f"pass (max prob diff {diff:.2e}); this architecture is not supported by the exact search",
                hint="use search.strategy: reference",
            )

    def score(self, logits: torch.Tensor, gold: torch.Tensor) -> Scores:
        """Gold-token probability and correctness (argmax == gold) from last-position logits."""
        probs = logits.float().softmax(-1)
        pred = probs.argmax(-1)
        return Scores(probs.gather(1, gold[:, None])[:, 0], pred, pred == gold)


@contextlib.contextmanager
def pre_hooks(hooks: Sequence[tuple[nn.Module, Callable]]) -> Iterator[None]:
    """Forward pre-hooks (module, fn) registered for the duration of the block."""
    handles = [module.register_forward_pre_hook(fn) for module, fn in hooks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def weights_source(entry: ModelEntry) -> str:
    """Where the weights are; fails at once, before any data work, when they are not there."""
    path = entry.resolved_path()
    if path is not None:
        if not (path / "config.json").is_file():
            raise VseamError(f"model '{entry.name}': no checkpoint at {path} (config.json missing)", hint=_weights_hint(entry))
        return str(path)
    assert entry.hf_id is not None
    if os.environ.get("VSEAM_ALLOW_DOWNLOAD") != "1":
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(entry.hf_id, "config.json", revision=entry.revision)
        if not isinstance(cached, str):
            raise VseamError(f"model '{entry.name}': weights for {entry.hf_id} are not on this machine", hint=_weights_hint(entry))
    return entry.hf_id


def _weights_hint(entry: ModelEntry) -> str:
    if entry.hf_id:
        return (
            f"download them once with `huggingface-cli download {entry.hf_id}` (or `hf download {entry.hf_id}`), "
            "or set VSEAM_ALLOW_DOWNLOAD=1 to let vseam fetch them, or point a registry entry's `path:` at a local "
            "checkpoint folder and use `model: path/to/entry.yaml`"
        )
    return "the entry's `path:` must be a folder saved with save_pretrained (config.json, *.safetensors, processor files)"
