"""A loaded VLM behind one small interface.

Everything the stages need goes through here: building inputs, scoring the gold answer's
first token at the last position, and finding the language model's layers and o_proj
modules from the registry entry.

Fast paths replay the decoder exactly as the model's own wrapper calls it: `prepare` runs
`model(**inputs)` once and records, for every decoder layer, the hidden state entering
layer 0 and every other argument the layer receives (attention masks in whatever form the
wrapper built them — 2-D, 4-D prefix-LM, dicts per layer type —, position ids of any shape,
rotary tables). Scoring then runs layers [l:] with those arguments, the final norm and the
LM head; nothing is rebuilt, so batched, left-padded rows give the model's own numbers and
later layers can be run from a cached hidden state (see `run_from_layer`). `self_check`
compares this with `model(**inputs)` in every run before any number is computed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, NamedTuple, Sequence

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


class _Leaf(NamedTuple):
    """Placeholder for the i-th captured value in a layer call's arguments."""

    index: int


@dataclass
class LayerCall:
    """How the decoder called one layer: its arguments besides the hidden state, with every
    captured value replaced by a `_Leaf` (the values live in `Prepared.leaves`, shared)."""

    args: tuple  # positional arguments after the hidden state
    kwargs: dict[str, Any]
    hidden_as_kwarg: bool  # the hidden state was passed as `hidden_states=`


@dataclass
class Prepared:
    """A batch as the decoder stack saw it: the hidden state entering layer 0 and every
    argument the decoder passed to each layer (masks in any form, position ids of any shape,
    rotary tables, ...), captured from one `model(**inputs)` call and replayed as is.

    `leaves[i]` is a captured value, `batch_dims[i]` the dim that indexes rows in it (None: the
    value is shared by all rows, e.g. a batch-1 mask that broadcasts, or not a tensor).
    """

    embeds: torch.Tensor | None  # [B, T, D]; None in reference-only mode
    attention_mask: torch.Tensor | None  # [B, T] processor padding mask (informational)
    input_ids: torch.Tensor | None = None  # [B, T] token ids as the processor made them
    calls: list[LayerCall] = field(default_factory=list)
    leaves: list[Any] = field(default_factory=list)
    batch_dims: list[int | None] = field(default_factory=list)
    inputs: dict[str, torch.Tensor] | None = None  # processor inputs, kept in reference-only mode

    def __len__(self) -> int:
        ref = self.embeds if self.embeds is not None else self.attention_mask
        if ref is None and self.input_ids is not None:
            ref = self.input_ids
        return ref.shape[0]

    def _map_rows(self, fn: Callable[[torch.Tensor, int], torch.Tensor]) -> "Prepared":
        def row_tensor(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else fn(t, 0)

        leaves = [v if d is None else fn(v, d) for v, d in zip(self.leaves, self.batch_dims)]
        return replace(
            self, embeds=row_tensor(self.embeds), attention_mask=row_tensor(self.attention_mask),
            input_ids=row_tensor(self.input_ids), leaves=leaves, inputs=None,
        )

    def repeat_rows(self, n: int) -> "Prepared":
        """Each row repeated n times in place (row q → rows q*n .. q*n+n-1)."""
        return self._map_rows(lambda t, d: t.repeat_interleave(n, d))

    def rows(self, idx: torch.Tensor | slice) -> "Prepared":
        """The rows `idx` (a slice or an index tensor; repeats allowed) of every captured value."""
        if isinstance(idx, slice):
            return self._map_rows(lambda t, d: t[(slice(None),) * d + (idx,)])
        return self._map_rows(lambda t, d: t.index_select(d, idx.to(t.device)))

    def with_embeds(self, embeds: torch.Tensor) -> "Prepared":
        """The same batch entering layer 0 with other embeddings (e.g. ones that require grad)."""
        return replace(self, embeds=embeds)

    def call(self, layer: int, hidden: torch.Tensor) -> tuple[tuple, dict[str, Any]]:
        """(args, kwargs) to call decoder layer `layer` with `hidden`, as the decoder did."""
        c = self.calls[layer]
        args, kwargs = _fill(c.args, self.leaves), _fill(c.kwargs, self.leaves)
        if c.hidden_as_kwarg:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden,) + args, kwargs


def _fill(tree: Any, leaves: list[Any]) -> Any:
    if isinstance(tree, _Leaf):
        return leaves[tree.index]
    if isinstance(tree, dict):
        return {k: _fill(v, leaves) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_fill(v, leaves) for v in tree)
    return tree


class _Capture:
    """Turns the arguments of layer calls into templates with shared leaves and their batch dims."""

    def __init__(self, batch: int, seq: int) -> None:
        self.batch, self.seq = batch, seq
        self.leaves: list[Any] = []
        self.dims: list[int | None] = []
        self._index: dict[int, int] = {}
        self._keep: list[torch.Tensor] = []

    def template(self, tree: Any, name: str) -> Any:
        from transformers.cache_utils import Cache

        if isinstance(tree, torch.Tensor):
            key = id(tree)
            if key not in self._index:
                self._keep.append(tree)  # alive until the capture ends, so its id is not reused
                self._index[key] = len(self.leaves)
                self.leaves.append(tree.detach())
                self.dims.append(batch_dim(tree, self.batch, self.seq, name))
            return _Leaf(self._index[key])
        if isinstance(tree, dict):
            return {k: self.template(v, k if name == "" else name) for k, v in tree.items()}
        if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
            return type(tree)(self.template(v, name) for v in tree)
        if isinstance(tree, Cache):
            return None  # a replay runs the whole sequence; no key/value cache may carry over
        if tree is None or isinstance(tree, (bool, int, float, str, torch.dtype)):
            return tree
        raise _Unsupported(f"a decoder layer receives `{name}` of type {type(tree).__name__}, which cannot be replayed")


class _Unsupported(Exception):
    pass


def batch_dim(t: torch.Tensor, batch: int, seq: int, name: str) -> int | None:
    """The dim of a captured tensor that indexes the batch's rows, or None when it has none
    (shared by all rows, e.g. cache positions, or batch 1 broadcast over the rows).

    The batch dim comes before the sequence dims: masks [B, 1|heads, T, T], position ids
    [B, T], rotary tables [B, T, d]; multimodal-RoPE position ids are [3|4, B, T] (and tables
    can be [3, B, T, d]), so among the dims before the first one of length T the *last* of
    length B is taken. The self-check replays reordered rows, so a wrong guess cannot pass.
    """
    if batch == 1 or t.ndim == 0:
        return None
    if name == "position_ids" and t.ndim == 3:
        return 1 if t.shape[1] == batch else None
    seq_dims = [d for d in range(t.ndim) if t.shape[d] == seq]
    lead = range(seq_dims[0] if seq_dims else t.ndim)
    cands = [d for d in lead if t.shape[d] == batch]
    return cands[-1] if cands else None


@dataclass
class Scores:
    """Per-question gold-token results at the last position."""

    gold_prob: torch.Tensor  # [B]
    pred_id: torch.Tensor  # [B]
    correct: torch.Tensor  # [B] bool (the paper's rule: argmax == gold first token)


class _Captured(Exception):
    """Stops the capturing pass once the decoder reaches its final norm."""


class _Recorder:
    """Hooks that record each decoder layer's call during one model(**inputs) pass."""

    def __init__(self, vlm: "VLM") -> None:
        self.vlm = vlm
        self.calls: list[LayerCall] = []
        self.order: list[int] = []
        self.embeds: torch.Tensor | None = None
        self.cap: _Capture | None = None
        self.last_out: torch.Tensor | None = None
        self.problem: str | None = None
        self.reached_norm = False

    def _same(self, x: torch.Tensor, where: str) -> None:
        prev = self.last_out
        if self.problem is None and not (x is prev or (prev is not None and x.shape == prev.shape and torch.equal(x, prev))):
            self.problem = f"the decoder changes the hidden state {where} (e.g. adds visual features there)"

    def pre(self, i: int):
        def hook(_m, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if i == 0 and not self.order:
                self.embeds = hidden.detach()
                self.cap = _Capture(hidden.shape[0], hidden.shape[1])
            else:
                self._same(hidden, f"between layers {i - 1} and {i}")
            self.order.append(i)
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            for k in rest:
                if ("cross_attention" in k or "encoder_hidden" in k) and rest[k] is not None:
                    raise _Unsupported(f"layer {i} attends to `{k}` (cross-attention layers)")
            self.calls.append(LayerCall(self.cap.template(tuple(args[1:]) if args else (), "args"),
                                        self.cap.template(rest, ""), not args))
        return hook

    def post(self, _m, _args, out) -> None:
        self.last_out = out if isinstance(out, torch.Tensor) else out[0]

    def norm_pre(self, _m, args, kwargs):
        self._same(args[0] if args else next(iter(kwargs.values())), "between the last layer and the final norm")
        self.reached_norm = True
        raise _Captured()

    @contextlib.contextmanager
    def hooks(self) -> Iterator[None]:
        handles = []
        for i, layer in enumerate(self.vlm.layers):
            handles.append(layer.register_forward_pre_hook(self.pre(i), with_kwargs=True))
            handles.append(layer.register_forward_hook(self.post))
        handles.append(self.vlm.final_norm.register_forward_pre_hook(self.norm_pre, with_kwargs=True))
        handles.append(self.vlm.decoder.register_forward_pre_hook(_positions_from_mask, with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def verify(self) -> None:
        n = self.vlm.num_layers
        if self.order != list(range(n)):
            why = (f"the decoder called its layers in the order {self.order[:12]} rather than once each, 0..{n - 1} "
                   "(e.g. cross-attention layers skipped without an image)")
            raise self.vlm._refusal(why)
        if not self.reached_norm:
            raise self.vlm._refusal(f"modules.final_norm '{self.vlm.entry.modules.final_norm}' was never called")
        if self.problem:
            raise self.vlm._refusal(self.problem)


def _positions_from_mask(_m, args, kwargs):
    """Give the decoder position ids that count real tokens only, where the wrapper left them
    to the decoder's default (0..T-1 over padding too).

    Some wrappers (InstructBLIP) call the decoder with a 2-D padding mask and no positions;
    the default then depends on how much padding a row got, and since their processors pad
    between the image tokens and the text, a row's numbers change with the batch it is in.
    Positions from the mask make every row exactly its batch-of-one self. Positions the
    wrapper computed itself (PaliGemma, M-RoPE) are left alone.
    """
    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is not None or not isinstance(mask, torch.Tensor) or mask.ndim != 2 or bool(mask.all()):
        return None
    return args, {**kwargs, "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0)}


#: The fast paths layered on the replay, by name: what each one skips. Every one is off until
#: the self-check has run it and compared it with the plain replay on the user's model.
SHORTCUTS: dict[str, str] = {
    "last_mlp_tail": "the last layer's MLP runs on the last position only",
}


@dataclass
class Shortcut:
    """One fast path's standing for this model: `on` once it matched the plain path, `off` with
    the reason when it raised or disagreed, `unchecked` (unused) until the self-check ran."""

    name: str
    what: str
    state: str = "unchecked"
    diff: float | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(state=self.state, what=self.what, diff=self.diff, reason=self.reason)


def _why(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


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
        self.text_config = text_cfg
        self.num_layers: int = text_cfg.num_hidden_layers
        self.num_heads: int = text_cfg.num_attention_heads
        self.head_dim: int = getattr(text_cfg, "head_dim", None) or text_cfg.hidden_size // self.num_heads
        # False after a failed self-check in a run that asked for the reference strategy:
        # then every number comes from model(**inputs) and the fast paths refuse to run.
        self.replay = True
        # Shortcuts on top of the replay are used only once the self-check has compared them
        # with the plain replay on this model (see `check_shortcuts`).
        self.shortcuts: dict[str, Shortcut] = {k: Shortcut(k, what) for k, what in SHORTCUTS.items()}
        self._plain = False  # True while the plain path is measured: no shortcut at all
        self._check_supported()
        self._check_paths()
        self.image_token_id: int | None = self._image_token_id()

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
        from vseam_run import placement

        placed = placement.load_kwargs(entry, device, dtype, source)  # device_map / quantization (placement.py)
        try:
            processor = proc_cls.from_pretrained(source, **kwargs)
            _check_prompt(entry, processor)  # before the weights are read
            model, loading_info = model_cls.from_pretrained(source, dtype=dtype, use_safetensors=True,
                                                            output_loading_info=True, **kwargs, **placed)
        except (OSError, ValueError, ImportError, RuntimeError) as e:
            if placed and not isinstance(e, (OSError, VseamError)):
                raise placement.load_error(entry, e) from e
            raise VseamError(
                f"model '{entry.name}': cannot load weights from {source}: {str(e).splitlines()[0]}",
                hint=_weights_hint(entry),
            ) from e
        from vseam_run.weights_check import refusal

        problem = refusal(entry, source, loading_info)  # a tensor left random: numbers that change per run
        if problem is not None:
            raise problem
        if placed:  # accelerate placed the weights; its hooks move each module's inputs
            device = placement.input_device(model, device)
        else:
            model.to(device)
        model.eval()
        model.requires_grad_(False)
        return cls(entry, model, processor, device, dtype)

    def _check_supported(self) -> None:
        """Refuse, with the reason, architectures whose language model is not a plain decoder stack."""
        cfgs = [self.model.config, self.text_config]
        if any(getattr(c, "is_encoder_decoder", False) for c in cfgs):
            raise self._refusal(
                "its language model is an encoder-decoder (T5-style); the answer is read by a decoder that "
                "cross-attends to an encoder, and only decoder-only language models can be replayed layer by layer"
            )
        vision = getattr(self.model.config, "vision_config", None)
        if getattr(vision, "deepstack_visual_indexes", None):
            raise self._refusal(
                "its decoder adds visual features to the hidden states inside its first layers (DeepStack, "
                f"vision_config.deepstack_visual_indexes = {list(vision.deepstack_visual_indexes)}); a replay from a "
                "cached layer input cannot add them as the model does"
            )
        if any(getattr(c, "cross_attention_layers", None) for c in cfgs):
            raise self._refusal(
                "its language model has cross-attention layers that read the image (Mllama-style); they have no "
                "self-attention heads to ablate and are skipped or fed differently per call"
            )

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
        for i in range(1, self.num_layers):
            try:
                other = self.o_proj(i).in_features
            except AttributeError:
                other = None
            if other != width:
                raise self._refusal(
                    f"decoder layer {i} ({type(layers[i]).__name__}) has no attention output projection "
                    f"'{m.o_proj}' like layer 0's (a mixed stack, e.g. cross-attention or state-space layers)"
                )

    def _image_token_id(self) -> int | None:
        """The image placeholder token id: model.config.<image_token_attr>, else the processor's."""
        attr = self.entry.image_token_attr
        if not hasattr(self.model.config, attr):
            near = [a for a in ("image_token_id", "image_token_index") if getattr(self.model.config, a, None) is not None]
            raise VseamError(
                f"registry entry '{self.entry.name}': image_token_attr '{attr}' is not an attribute of "
                f"{type(self.model.config).__name__}",
                hint=f"set image_token_attr: {near[0]}" if near else "name the config attribute holding the image token id",
            )
        value = getattr(self.model.config, attr)
        if value is None:  # e.g. InstructBLIP configs built without it: the processor knows the token
            value = getattr(self.processor, "image_token_id", None)
            token = getattr(self.processor, "image_token", None)
            if value is None and token is not None:
                value = self.tokenizer.convert_tokens_to_ids(str(token))
        return None if value is None else int(value)

    def image_positions(self, prep: Prepared) -> torch.Tensor:
        """[B, T] bool: where the image placeholder tokens (whose embeddings are image features) are."""
        if prep.input_ids is None or self.image_token_id is None:
            raise VseamError(f"model '{self.entry.name}': image positions need input_ids and an image token id",
                             hint="set the registry entry's image_token_attr")
        return prep.input_ids == self.image_token_id

    # ---- modules -------------------------------------------------------------------------

    @property
    def decoder(self) -> nn.Module:
        return get_module(self.model, self.entry.modules.decoder)

    @property
    def layers(self) -> nn.ModuleList:
        return get_module(self.model, self.entry.modules.layers)

    @property
    def final_norm(self) -> nn.Module:
        return get_module(self.model, self.entry.modules.final_norm)

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
        text = [self.prompt(q) for q in questions]
        try:
            batch = self.processor(images=list(images), text=text, return_tensors="pt", padding=True)
        except ValueError:
            # Some processors (Gemma3) take a list of images per prompt.
            batch = self.processor(images=[[im] for im in images], text=text, return_tensors="pt", padding=True)
        out = {}
        for k, v in batch.items():
            if k == "labels":  # training targets some processors add (PaliGemma); the scores do not use them
                continue
            v = v.to(self.device)
            out[k] = v.to(self.dtype) if v.is_floating_point() else v
        return out

    def answer_token_ids(self, answers: Sequence[str]) -> list[int | None]:
        """The first token the model would emit for each answer right after the prompt.

        Tokenizes the prompt's real tail (its last tokens as the processor builds them, e.g.
        with PaliGemma's closing newline) followed by the answer, and takes the first token past
        the tail, so SentencePiece's leading-space variants ("▁Yes" vs "Yes") come out as the
        model sees them. None when the answer adds no known token (see `explain_answer`).
        """
        tail = self.prompt_tail
        return [first_answer_token(self.tokenizer, tail, self._cased(a)) for a in answers]

    def explain_answer(self, answer: str) -> str:
        """One example tokenization, for messages about answers that give no token."""
        tail = self.prompt_tail
        text = join_answer(tail, self._cased(answer))
        toks = self.tokenizer.convert_ids_to_tokens(self.tokenizer(text, add_special_tokens=False).input_ids)
        return f"prompt end + answer {text!r} tokenizes to {toks}"

    def _cased(self, answer: str) -> str:
        a = answer.strip()
        return {"lower": a.lower(), "capitalize": a[:1].upper() + a[1:]}.get(self.entry.answer_case, a)

    @property
    def prompt_tail(self) -> str:
        """The text of the prompt's last tokens as the model sees them after the processor
        (which may add text, e.g. PaliGemma's newline), decoded from a processed dummy prompt."""
        if getattr(self, "_prompt_tail", None) is None:
            ids = self.encode([Image.new("RGB", (64, 64), (128, 128, 128))], ["x"])["input_ids"][0].tolist()
            special = set(self.tokenizer.all_special_ids)
            keep: list[int] = []
            for t in reversed(ids):  # the ordinary tokens at the end (stop at image/bos tokens)
                if t in special or len(keep) == 8:
                    break
                keep.append(t)
            self._prompt_tail = self.tokenizer.decode(keep[::-1], skip_special_tokens=False,
                                                      clean_up_tokenization_spaces=False)
        return self._prompt_tail

    # ---- running: capture once, replay the decoder's own layer calls ---------------------

    @torch.no_grad()
    def prepare(self, inputs: dict[str, torch.Tensor]) -> Prepared:
        """Run the model once on `inputs` and capture what its decoder layers receive.

        Every layer's call (hidden state aside) is recorded: the masks, position ids and
        rotary tables the wrapper and the decoder built, whatever their form. The pass stops
        at the final norm (no logits are computed). It also checks what a replay assumes: the
        layers are called once each, in order, each on the previous one's output, and the
        final norm reads the last layer's output; otherwise the model is refused.
        """
        mask, ids = inputs.get("attention_mask"), inputs.get("input_ids")
        if not self.replay:
            return Prepared(None, mask, ids, inputs=inputs)
        rec = _Recorder(self)
        try:
            with rec.hooks():
                self.model(**inputs, use_cache=False)
        except _Captured:
            pass
        except _Unsupported as e:
            raise self._refusal(str(e)) from None
        rec.verify()
        return Prepared(rec.embeds, mask, ids, rec.calls, rec.cap.leaves, rec.cap.dims)

    def _refusal(self, why: str) -> VseamError:
        return VseamError(
            f"model '{self.entry.name}' ({type(self.model).__name__}) is not supported by vseam's fast paths: {why}",
            hint="no search strategy can give this model's own numbers; use a decoder-only VLM",
        )

    def _run_layers(self, prep: Prepared, start: int, stop: int, x: torch.Tensor) -> torch.Tensor:
        for i in range(start, stop):
            args, kwargs = prep.call(i, x)
            out = self.layers[i](*args, **kwargs)
            x = out if isinstance(out, torch.Tensor) else out[0]
        # Under a device map the layers' own hooks moved x between devices; what vseam keeps
        # (cached hidden states, indexed by tensors on self.device) comes back to the input device.
        return x.to(self.device)

    def _logits_at_last(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head at the last position (both act per position), then the
        output transforms some language models apply to their logits."""
        logits = self.lm_head(self.final_norm(x[:, -1:]))[:, -1].to(self.device)  # lm_head may sit elsewhere
        if not getattr(self, "logit_transforms", True):  # the wrapper does not apply them (self-check)
            return logits.float()
        cfg = self.text_config
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        if getattr(cfg, "logit_scale", None) not in (None, 1, 1.0):  # Cohere
            logits = logits * cfg.logit_scale
        if getattr(cfg, "logits_scaling", None) not in (None, 1, 1.0):  # Granite
            logits = logits / cfg.logits_scaling
        return logits.float()

    def require_replay(self, what: str) -> None:
        """Fast paths need the replay; after a failed self-check only model(**inputs) is trusted."""
        if not self.replay:
            raise VseamError(
                f"model '{self.entry.name}': {what} needs the fast path, which failed this run's self-check",
                hint="use search.strategy: reference",
            )

    def last_logits(
        self, prep: Prepared, start_layer: int = 0, hidden: torch.Tensor | None = None, *, tail_only: bool = True
    ) -> torch.Tensor:
        """Logits at the last position, running layers [start_layer:] from `hidden` (default: embeddings).

        `tail_only`: the last layer's MLP runs on the last position only (see `_last_mlp_tail_only`);
        the logits are the same, the work of one MLP over the whole sequence is saved.
        """
        if not self.replay:
            if start_layer or hidden is not None:
                self.require_replay("running from a middle layer")
            return self.model(**prep.inputs, use_cache=False).logits[:, -1].float()
        x = prep.embeds if hidden is None else hidden
        tail = self._last_mlp_tail_only() if (tail_only and self.uses("last_mlp_tail")) else contextlib.nullcontext()
        with tail:
            x = self._run_layers(prep, start_layer, self.num_layers, x)
        return self._logits_at_last(x)

    def _last_mlp_tail_only(self):
        """Feed the last layer's MLP the last position only.

        Nothing after the last layer mixes positions (the final norm and the LM head act per
        position) and only the last position's logits are read, so the MLP's output at the
        other positions is never used. Its [B, 1, D] output broadcasts in the residual sum;
        the other positions' final states are then wrong but unread. The self-check compares
        this with a full last layer and turns it off for a model where they differ.
        """
        mlp = get_module(self.layers[self.num_layers - 1], self.entry.modules.mlp)

        def last_only(_m, args):
            return (args[0][:, -1:],) + tuple(args[1:]) if args else None

        return pre_hooks([(mlp, last_only)])

    def run_from_layer(self, prep: Prepared, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        return self.last_logits(prep, start_layer=layer, hidden=hidden)

    @torch.no_grad()
    def next_hidden(self, prep: Prepared, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """The hidden state entering layer+1, given the one entering `layer` (runs one layer only)."""
        if layer + 1 >= self.num_layers:
            raise ValueError("no layer after the last one")
        self.require_replay("running layer by layer")
        return self._run_layers(prep, layer, layer + 1, hidden)

    @torch.no_grad()
    def layer_inputs(self, prep: Prepared) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The hidden state entering every layer, and the last-position logits, from one pass."""
        self.require_replay("reading layer inputs")
        captured, x = [], prep.embeds
        for i in range(self.num_layers):
            captured.append(x)
            x = self._run_layers(prep, i, i + 1, x)
        return captured, self._logits_at_last(x)

    @torch.no_grad()
    def check_truncation(self, prep: Prepared, atol: float = 1e-4) -> None:
        """Running from a cached middle-layer state must reproduce the full pass; else exact search is unsafe."""
        self.require_replay("the exact search")
        one = prep.rows(slice(0, 1))
        hidden, full = self.layer_inputs(one)
        mid = self.num_layers // 2
        again = self.run_from_layer(one, mid, hidden[mid])
        diff = (again.softmax(-1) - full.softmax(-1)).abs().max().item()
        if diff > atol:
            raise VseamError(
                f"model '{self.entry.name}': running layers {mid}.. from a cached hidden state differs from a full "
                f"pass (max prob diff {diff:.2e}); this architecture is not supported by the exact search",
                hint="use search.strategy: reference",
            )

    # ---- self-check -------------------------------------------------------------------------

    def check_tolerance(self) -> float:
        """Largest allowed probability difference: float32 sums in another order differ by ~1e-7;
        half precision keeps ~3 significant digits."""
        from vseam_run.placement import check_tolerance

        return check_tolerance(self.entry, self.dtype)  # quantized weights: see placement.check_tolerance

    def uses(self, name: str) -> bool:
        """Whether shortcut `name` may be used now: it passed the self-check on this model."""
        return not self._plain and self.shortcuts[name].state == "on"

    @contextlib.contextmanager
    def plain(self) -> Iterator[None]:
        """No shortcut inside the block: the replay exactly as the decoder calls its layers."""
        was, self._plain = self._plain, True
        try:
            yield
        finally:
            self._plain = was

    @contextlib.contextmanager
    def _only(self, name: str) -> Iterator[None]:
        saved = {k: sc.state for k, sc in self.shortcuts.items()}
        for k, sc in self.shortcuts.items():
            sc.state = "on" if k == name else "off"
        try:
            yield
        finally:
            for k, sc in self.shortcuts.items():
                sc.state = saved[k]

    def _has_logit_transforms(self) -> bool:
        cfg = self.text_config
        return bool(getattr(cfg, "final_logit_softcapping", None)) or any(
            getattr(cfg, k, None) not in (None, 1, 1.0) for k in ("logit_scale", "logits_scaling"))

    def _choose_logit_transforms(self, prep: Prepared, own: torch.Tensor) -> None:
        """Whether the model's own forward applies its text config's logit transforms (softcap,
        Cohere's logit_scale, Granite's logits_scaling): some wrappers (Aya Vision over Cohere2)
        call their own LM head and skip them. Decided by comparing both with `own`, the model's
        batched probabilities; recorded as `check.logit_transforms`."""
        self.logit_transforms = True
        if not self._has_logit_transforms():
            return
        with_t = (self.last_logits(prep).softmax(-1) - own).abs().max().item()
        self.logit_transforms = False
        without = (self.last_logits(prep).softmax(-1) - own).abs().max().item()
        self.logit_transforms = without >= with_t

    def _replay_diffs(self, prep: Prepared, want: torch.Tensor, hidden: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Last-position probabilities of the replay, minus `want` (one row per question of
        `prep`): the whole batch, from a middle layer on rows out of order and repeated, and
        on repeated rows; with whatever shortcuts are on."""
        n, mid = len(prep), self.num_layers // 2
        idx = torch.tensor([n - 1, 0, n - 1, 1], device=self.device)
        return {
            "batch": self.last_logits(prep).softmax(-1) - want,
            f"from layer {mid}, rows reordered": self.run_from_layer(prep.rows(idx), mid, hidden[mid][idx]).softmax(-1) - want[idx],
            "repeated rows": self.last_logits(prep.repeat_rows(2)).softmax(-1) - want.repeat_interleave(2, 0),
        }

    @torch.no_grad()
    def check_shortcuts(self, prep: Prepared, plain: torch.Tensor, hidden: list[torch.Tensor]) -> dict[str, float]:
        """Try every shortcut alone on `prep` and compare it with the plain replay's
        probabilities `plain`; one that raises or differs by more than the tolerance is
        switched off for this model, with the reason (never an exception). Returns metrics
        `check.shortcut.<name>` (1 on, 0 off) and `check.shortcut.<name>.diff`."""
        tol, metrics = self.check_tolerance(), {}
        for name, sc in self.shortcuts.items():
            try:
                with self._only(name):
                    diff = max(d.abs().max().item() for d in self._replay_diffs(prep, plain, hidden).values())
            except Exception as e:  # noqa: BLE001 - a shortcut that raises is switched off, not fatal
                sc.state, sc.diff, sc.reason = "off", None, f"raised {_why(e)}"
            else:
                sc.diff = diff
                ok = diff <= tol  # NaN fails too
                sc.state = "on" if ok else "off"
                sc.reason = None if ok else f"differs from the plain replay by {diff:.3g} (tolerance {tol:g})"
            metrics[f"check.shortcut.{name}"] = 1.0 if sc.state == "on" else 0.0
            if sc.diff is not None:
                metrics[f"check.shortcut.{name}.diff"] = sc.diff
        return metrics

    def shortcut_report(self) -> dict[str, dict[str, Any]]:
        """The replay's and every shortcut's standing, for the run record (`check.shortcuts`)."""
        problem = getattr(self, "replay_problem", None)
        replay = dict(state="on" if self.replay else "off", what="layers replayed with the decoder's own arguments",
                      reason=problem)
        return {"replay": replay, **{k: sc.to_json() for k, sc in self.shortcuts.items()}}

    @torch.no_grad()
    def self_check(self, items: Sequence[Any], *, fallback: bool = False) -> dict[str, float]:
        """Before any number is computed: the fast paths must give the model's own numbers.

        On a padded batch of questions of unequal length (from `items`, objects with `.image`
        and `.question`), compares last-position probabilities of `model(**inputs)` on each
        question alone with the plain replay (no shortcut): the replayed batch, the replay from
        a middle layer on rows taken out of order and repeated, and repeated rows. Then every
        shortcut is tried alone on the same rows and compared with the plain replay
        (`check_shortcuts`); one that raises or disagrees is switched off, the rest stay on.

        When the plain replay itself raises or differs, no exact fast path is left: the run
        stops with the largest difference (or the error) — unless `fallback` (the run asked for
        the reference strategy): then the fast paths are switched off and every score comes
        from model(**inputs). Returns metrics for the run (`check.max_prob_diff`, how far the
        model's own batched forward is from its one-question forward, `check.model_batch_diff`,
        and `check.shortcut.*`); `shortcut_report()` says why a shortcut is off.
        """
        images, questions = self._check_batch(items)
        inputs = self.encode(images, questions)
        single = torch.cat([self.model(**self.encode([im], [q]), use_cache=False).logits[:, -1].float().softmax(-1)
                            for im, q in zip(images, questions)])
        batched = self.model(**inputs, use_cache=False).logits[:, -1].float().softmax(-1)
        tol = self.check_tolerance()
        n, failure, prep, plain_probs = len(images), None, None, None
        try:
            with self.plain():
                prep = self.prepare(inputs)
                self._choose_logit_transforms(prep, batched)
                hidden, _ = self.layer_inputs(prep)
                diffs = self._replay_diffs(prep, single, hidden)
                plain_probs = self.last_logits(prep).softmax(-1)
            worst_name, worst = max(((k, v.abs().max().item()) for k, v in diffs.items()), key=lambda kv: kv[1])
        except VseamError:
            raise  # a refusal that names its reason (prepare's checks of the layer calls)
        except Exception as e:  # noqa: BLE001 - the replay failing on this model is a finding, not a crash
            worst_name, worst, failure = f"the replay raised {_why(e)}", float("inf"), e
        metrics = {"check.max_prob_diff": worst, "check.model_batch_diff": (batched - single).abs().max().item(),
                   "check.tolerance": tol}  # per dtype / quantization (placement.check_tolerance)
        if self._has_logit_transforms():
            metrics["check.logit_transforms"] = 1.0 if getattr(self, "logit_transforms", True) else 0.0
        if not worst <= tol:
            for sc in self.shortcuts.values():
                sc.state, sc.reason = "off", "the plain replay failed the self-check"
            metrics.update({f"check.shortcut.{k}": 0.0 for k in self.shortcuts})
            how = (worst_name if failure is not None else
                   f"by {worst:.3g} in last-position probability ({worst_name}; tolerance {tol:g})")
            msg = (f"model '{self.entry.name}' ({type(self.model).__name__}): vseam's fast path differs from the model's own "
                   f"forward pass {how} on a padded batch of {n} questions; its numbers would be wrong"
                   if failure is None else
                   f"model '{self.entry.name}' ({type(self.model).__name__}): vseam's fast path cannot run this model: "
                   f"{how}, on a padded batch of {n} questions")
            if not fallback:
                raise VseamError(msg, hint="set `search.strategy: reference` in the spec (every number then comes from "
                                           "model(**inputs), slowly), and report the model class")
            self.replay = False
            metrics["check.fast_path_off"] = 1.0
            self.replay_problem = msg
            if failure is not None:  # nothing measured: the reason is in shortcut_report()["replay"]
                del metrics["check.max_prob_diff"]
                metrics["check.replay_raised"] = 1.0
            return metrics
        self.replay_problem = None
        # check.max_prob_diff is the plain replay against the model's own forward; each shortcut's
        # difference from the plain replay is its own metric.
        metrics.update(self.check_shortcuts(prep, plain_probs, hidden))
        return metrics

    def _check_batch(self, items: Sequence[Any]) -> tuple[list[Image.Image], list[str]]:
        """Up to 3 items with the shortest, longest and a middle prompt; padding guaranteed
        (a question is lengthened if all prompts tokenize to the same length)."""
        if not items:
            raise VseamError(f"model '{self.entry.name}': the self-check needs at least one question")
        lengths = [len(self.tokenizer(self.prompt(it.question), add_special_tokens=False).input_ids) for it in items]
        order = sorted(range(len(items)), key=lambda i: lengths[i])
        pick = list(dict.fromkeys([order[0], order[-1], order[len(order) // 2]]))
        images, questions = [items[i].image for i in pick], [items[i].question for i in pick]
        if len(pick) < 2 or lengths[pick[0]] == lengths[pick[1]]:
            images.append(images[0])
            questions.append(f"{questions[0]} {questions[0]}")
        return images, questions

    def score(self, logits: torch.Tensor, gold: torch.Tensor) -> Scores:
        """Gold-token probability and correctness (argmax == gold) from last-position logits."""
        probs = logits.float().to(gold.device).softmax(-1)
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


def join_answer(tail: str, answer: str) -> str:
    """Prompt tail and answer as the model would continue: after a space or newline the answer
    follows directly, after anything else a space separates them."""
    return tail + answer if (not tail or tail[-1].isspace()) else f"{tail} {answer}"


def first_answer_token(tokenizer, tail: str, answer: str) -> int | None:
    """The first token of `answer` as it is tokenized right after `tail`: tokenize tail and
    tail + answer, and take the first token past their common prefix. None when the answer
    adds nothing, maps to <unk>, or merges into the tail's last token (the model cannot emit
    a token that starts inside its prompt)."""
    if not answer:
        return None
    base = tokenizer(tail, add_special_tokens=False).input_ids if tail else []
    ids = tokenizer(join_answer(tail, answer), add_special_tokens=False).input_ids
    k = 0
    while k < len(base) and k < len(ids) and ids[k] == base[k]:
        k += 1
    if k < len(base) or k >= len(ids) or ids[k] == tokenizer.unk_token_id:
        return None
    return ids[k]


def _check_prompt(entry: ModelEntry, processor) -> None:
    from vseam_run.errors import SpecError
    from vseam_run.prompt_check import prompt_problems

    problems = prompt_problems(entry, processor)
    if problems:
        raise SpecError(str(entry._source or f"registry entry {entry.name}"), problems)


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
