"""Causal tracing and the logit lens: where, in layers and positions, the edited concept decides.

Takes clean/edited pairs (same question, two images that differ in the queried concept) and
patches activations of one run into the other, one (layer, component, position group) cell at
a time, in both directions:

- `clean_to_edited`: the run on the edited image, with clean activations patched in; the
  target is the clean answer, the source run is the clean image.
- `edited_to_clean`: the run on the clean image, with edited activations patched in; the
  target is the edited answer, the source run is the edited image.

In both, `p_source` / `p_base` are the target's probability (first token, last position) on
the source / base run, and a cell's normalised recovery is
`(p_patched − p_base) / (p_source − p_base)`: 1 when patching the cell alone restores the
source run's answer, 0 when it does nothing. Pairs whose `p_source − p_base` is below a
margin are counted and excluded (their recovery is a ratio of noise).

Components, at layer l: `resid` (the layer's output, the residual stream after it), `attn`
(the attention module's output, element 0 of its tuple) and `mlp` (the MLP's output). A
`window` > 1 patches the component in that many consecutive layers around l (ROME's window).

Position groups come from the model's inputs, by role (see `position_groups`), so questions
of different lengths average cell by cell.

Three ways to compute the same table: `reference_trace` (one batch-1 pass of the whole model
per cell and pair; ground truth for tests), `exact_trace` (same numbers: both images of a
batch prepared once, the layers before the patched one computed once per batch, every
layer's source activations cached once per batch and the cells run as rows) and
`attribution_trace` (first order: gradient × activation difference, one forward and one
backward pass per batch for both directions). This module reads no spec.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from vseam_run import dist
from vseam_run.errors import VseamError
from vseam_run.progress import progress
from vseam_run.vlm import VLM, Prepared, get_module
from vseam_run.search import Checkpointer  # the same load() / save(key, payload) protocol

COMPONENTS = ("resid", "attn", "mlp")
DIRECTIONS = ("clean_to_edited", "edited_to_clean")
#: Position roles, in sequence order. A role a pair lacks (no text before the image, a
#: one-word question) is left out of that pair's averages, not counted as zero.
ROLES = ("before_image", "image", "after_image", "q_first", "q_middle", "q_last", "q_punct", "prompt_tail", "last")
ROLE_HELP = {
    "before_image": "prompt tokens before the image (e.g. BOS, 'USER:')",
    "image": "image tokens (LLaVA patches, InstructBLIP Q-Former query outputs)",
    "after_image": "prompt tokens between the image and the question (e.g. a newline, InstructBLIP's BOS)",
    "q_first": "the question's first token",
    "q_middle": "question tokens between the first and the last word",
    "q_last": "the last token of the question's last word (often the queried noun)",
    "q_punct": "punctuation after the question's last word ('?')",
    "prompt_tail": "prompt tokens after the question, except the last token",
    "last": "the last token (where the answer is read)",
}
#: Bump when the numbers a trace produces change meaning; part of the checkpoint fingerprint.
TRACE_VERSION = 1


@dataclass
class TracePair:
    """One question on a clean image and on its counterfactual edit, with both answers' first tokens."""

    qid: str
    question: str
    clean_image: Image.Image
    edited_image: Image.Image
    clean_answer: str
    edited_answer: str
    clean_id: int
    edited_id: int


class PositionGroups(NamedTuple):
    names: tuple[str, ...]
    masks: torch.Tensor  # [B, G, T] bool


GroupFn = Callable[[VLM, dict, Sequence[str]], PositionGroups]


# ---- position groups ---------------------------------------------------------------------------


def image_token_id(vlm: VLM) -> int:
    """The placeholder id the processor puts where image features (or Q-Former queries) go."""
    attr = vlm.entry.image_token_attr
    value = getattr(vlm.model.config, attr, None)
    if not isinstance(value, int):
        raise VseamError(
            f"registry entry '{vlm.entry.name}': image_token_attr '{attr}' is not an integer attribute of the model config",
            hint="set image_token_attr to the config attribute holding the image token id (image_token_index / image_token_id)",
        )
    return value


def image_positions(vlm: VLM, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: where the image features sit (real tokens with the image placeholder id)."""
    return attention_mask.bool() & (input_ids == image_token_id(vlm))


def position_groups(vlm: VLM, inputs: dict, questions: Sequence[str]) -> PositionGroups:
    """Masks of every role in `ROLES`, per row, from the processor's inputs.

    Each row's text tokens (real, not image) are matched one to one with the tokenizer's
    tokens of the prompt, whose character offsets say which fall in the question. Works
    with padding anywhere (LLaVA pads on the left; InstructBLIP puts its query tokens before
    the padded text) because every row is read through its own attention mask.
    """
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    img = image_positions(vlm, ids, mask)
    B, T = ids.shape
    out = torch.zeros(B, len(ROLES), T, dtype=torch.bool, device=ids.device)
    for r, q in enumerate(questions):
        roles = _text_roles(vlm, q)
        text_pos = torch.nonzero(mask[r] & ~img[r]).flatten().tolist()
        row_ids = ids[r, text_pos].tolist()
        if row_ids != [t for t, _ in roles]:
            raise VseamError(
                f"model '{vlm.entry.name}': the processor's text tokens for question {q!r} do not match the tokenizer's "
                "tokens of the prompt, so position groups cannot be found",
                hint="the processor adds or changes text tokens; check the registry entry's prompt template",
            )
        img_pos = torch.nonzero(img[r]).flatten()
        first_img = int(img_pos[0]) if len(img_pos) else T
        out[r, ROLES.index("image")] = img[r]
        for p, (_, role) in zip(text_pos, roles):
            if role == "before_question":
                role = "before_image" if p < first_img else "after_image"
            out[r, ROLES.index(role), p] = True
        last = int(torch.nonzero(mask[r]).flatten()[-1])
        out[r, :, last] = False
        out[r, ROLES.index("last"), last] = True
    return PositionGroups(ROLES, out)


def _text_roles(vlm: VLM, question: str) -> list[tuple[int, str]]:
    """(token id, role) for the prompt's text tokens (image placeholders dropped), in order."""
    template = vlm.entry.prompt
    prefix = template.split("{question}", 1)[0].format()
    q0, q1 = len(prefix), len(prefix) + len(question)
    prompt = vlm.prompt(question)
    assert prompt[q0:q1] == question
    enc = vlm.tokenizer(prompt, return_offsets_mapping=True)
    img = image_token_id(vlm)
    toks = [(t, s, e) for t, (s, e) in zip(enc["input_ids"], enc["offset_mapping"]) if t != img]
    roles: list[str] = []
    for t, s, e in toks:
        if e > s and s < q1 and e > q0:
            roles.append("q")
        elif e > s and s >= q1:
            roles.append("prompt_tail")
        elif e <= s and roles and roles[-1] in ("q", "prompt_tail"):
            roles.append("prompt_tail")  # a special token after the question (e.g. EOS)
        else:
            roles.append("before_question")
    qpos = [i for i, r in enumerate(roles) if r == "q"]
    words = [i for i in qpos if any(ch.isalnum() for ch in prompt[toks[i][1] : toks[i][2]])]
    if qpos:
        last_word = words[-1] if words else qpos[-1]
        for i in qpos:
            roles[i] = "q_punct" if i > last_word else "q_last" if i == last_word else "q_first" if i == qpos[0] else "q_middle"
    return [(t, role) for (t, _, _), role in zip(toks, roles)]


# ---- hooks -------------------------------------------------------------------------------------


def component_module(vlm: VLM, layer: int, component: str) -> nn.Module:
    """The module whose output is `component` at `layer`."""
    if component == "resid":
        return vlm.layers[layer]
    path = vlm.entry.modules.attention if component == "attn" else vlm.entry.modules.mlp
    return get_module(vlm.layers[layer], path)


def _tensor_of(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _replace_tensor(out: Any, new: torch.Tensor) -> Any:
    return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new


@contextlib.contextmanager
def forward_hooks(hooks: Sequence[tuple[nn.Module, Callable]]) -> Iterator[None]:
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _capture(store: dict, key: Any, keep_graph: bool = False) -> Callable:
    def hook(_m, _args, out):
        x = _tensor_of(out)
        store[key] = x if keep_graph else x.detach()

    return hook


def _patch(mask: torch.Tensor, source: torch.Tensor) -> Callable:
    """Replace the output at `mask` ([R, T] bool) by `source` ([R, T, D]).

    A module that sees only the last positions (the last layer's MLP, run on the last
    position alone because nothing else is read) gets the masks' last positions.
    """

    def hook(_m, _args, out):
        x = _tensor_of(out)
        t = x.shape[1]
        # .to(x.device): under a device map the module may sit on another device than the mask / source.
        return _replace_tensor(out, torch.where(mask[:, -t:, None].to(x.device), source[:, -t:].to(x.device, x.dtype), x))

    return hook


def _window(layer: int, window: int, num_layers: int) -> range:
    lo = max(0, layer - (window - 1) // 2)
    return range(lo, min(num_layers, lo + window))


# ---- results -----------------------------------------------------------------------------------


@dataclass
class LensResult:
    """Logit lens at the last position: `prob[image, token, pair, layer]`, `rank` likewise (1 = top).

    image and token index (clean, edited): token 0 is the clean answer, 1 the edited answer.
    """

    prob: np.ndarray
    rank: np.ndarray

    def to_json(self) -> dict:
        out = {}
        for i, im in enumerate(("clean", "edited")):
            for j, tok in enumerate(("clean_answer", "edited_answer")):
                out[f"{im}_image.{tok}"] = {
                    "mean_prob": self.prob[i, j].mean(0).tolist(),
                    "median_rank": np.median(self.rank[i, j], 0).tolist(),
                }
        return out


@dataclass
class TraceResult:
    """Patched target probabilities of every cell, and what they are relative to.

    `patched[d, p, l, c, g]`: target probability on pair p's base run with component c at
    layer l (and its window) patched at position group g, direction d. NaN where not computed
    (the pair is excluded in that direction, the pair has no such position, or the direction
    or component was not asked for).
    """

    qids: list[str]
    directions: tuple[str, ...]
    components: tuple[str, ...]
    groups: tuple[str, ...]
    window: int
    margin: float
    p_source: np.ndarray  # [D, P]
    p_base: np.ndarray  # [D, P]
    eligible: np.ndarray  # [D, P] bool
    patched: np.ndarray  # [D, P, L, C, G]
    candidates: int = 0  # pairs offered before selection
    method: str = "exact"
    lens: LensResult | None = None
    seconds: float = 0.0
    answers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def num_layers(self) -> int:
        return self.patched.shape[2]

    def recovery(self) -> np.ndarray:
        """[D, P, L, C, G] normalised recovery, NaN where excluded."""
        denom = self.p_source - self.p_base
        return (self.patched - self.p_base[:, :, None, None, None]) / denom[:, :, None, None, None]

    def summary(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean recovery and mean patched probability over included pairs, [D, L, C, G]; and n, [D, L, C, G]."""
        rec, prob = self.recovery(), self.patched
        n = np.isfinite(prob).sum(1)
        with np.errstate(invalid="ignore"):
            mean_rec = np.where(n > 0, np.nansum(rec, 1) / np.maximum(n, 1), np.nan)
            mean_prob = np.where(n > 0, np.nansum(prob, 1) / np.maximum(n, 1), np.nan)
        return mean_rec, mean_prob, n

    def to_json(self) -> dict:
        """The registry document: per-cell summaries, per-pair baselines and the lens."""
        rec, prob, n = self.summary()
        tables = {}
        for d, dname in enumerate(self.directions):
            for c, cname in enumerate(self.components):
                if not np.isfinite(prob[d, :, c]).any():
                    continue
                tables[f"{dname}.{cname}"] = {
                    "recovery": _nan_to_none(rec[d, :, c]), "patched_prob": _nan_to_none(prob[d, :, c]),
                    "n": n[d, :, c].tolist(),
                }
        return {
            "method": self.method, "window": self.window, "margin": self.margin, "groups": list(self.groups),
            "group_help": {g: ROLE_HELP.get(g, "") for g in self.groups}, "layers": self.num_layers,
            "candidates": self.candidates, "pairs": len(self.qids),
            "eligible": {d: int(self.eligible[i].sum()) for i, d in enumerate(self.directions)},
            "excluded": {d: int((~self.eligible[i]).sum()) for i, d in enumerate(self.directions)},
            "tables": tables,
            "per_pair": [
                {"qid": q, "clean_answer": a[0], "edited_answer": a[1],
                 **{f"{d}.p_source": float(self.p_source[i, p]) for i, d in enumerate(self.directions)},
                 **{f"{d}.p_base": float(self.p_base[i, p]) for i, d in enumerate(self.directions)},
                 **{f"{d}.eligible": bool(self.eligible[i, p]) for i, d in enumerate(self.directions)}}
                for p, (q, a) in enumerate(zip(self.qids, self.answers or [("", "")] * len(self.qids)))
            ],
            "lens": self.lens.to_json() if self.lens is not None else None,
            "seconds": self.seconds,
        }

    def peaks(self) -> list[dict]:
        """The strongest cell (highest mean recovery) of every direction and component."""
        rec, _, n = self.summary()
        out = []
        for d, dname in enumerate(self.directions):
            for c, cname in enumerate(self.components):
                m = rec[d, :, c]
                if not np.isfinite(m).any():
                    continue
                l, g = np.unravel_index(np.nanargmax(m), m.shape)
                out.append({"direction": dname, "component": cname, "layer": int(l), "group": self.groups[g],
                            "recovery": float(m[l, g]), "n": int(n[d, l, c, g])})
        return out


def _nan_to_none(a: np.ndarray) -> list:
    return [[None if not math.isfinite(v) else float(v) for v in row] for row in np.asarray(a, dtype=float)]


# ---- batches -----------------------------------------------------------------------------------


@dataclass
class _Batch:
    """Both images of a batch of pairs as one Prepared: rows 0..n-1 clean, n..2n-1 edited."""

    prep: Prepared
    n: int
    offset: int
    groups: torch.Tensor  # [n, G, T] bool
    target: torch.Tensor  # [2n]: the target token of the row when it is the base run
    p_base: torch.Tensor  # [2n]
    p_source: torch.Tensor  # [2n]

    def base_row(self, d: int, q: int) -> int:
        return self.n + q if d == 0 else q

    def source_row(self, d: int, q: int) -> int:
        return q if d == 0 else self.n + q


def _encode_pairs(vlm: VLM, pairs: Sequence[TracePair]) -> dict:
    qs = [p.question for p in pairs]
    return vlm.encode([p.clean_image for p in pairs] + [p.edited_image for p in pairs], qs + qs)


def _prepare_batch(vlm: VLM, pairs: Sequence[TracePair], offset: int, group_fn: GroupFn) -> _Batch:
    inputs = _encode_pairs(vlm, pairs)
    n = len(pairs)
    groups = group_fn(vlm, {k: v[:n] for k, v in inputs.items()}, [p.question for p in pairs])
    edited_ids = inputs["input_ids"][n:]
    if not torch.equal(inputs["input_ids"][:n], edited_ids):
        raise VseamError("trace: a clean and an edited image gave different token sequences for the same question")
    prep = vlm.prepare(inputs)
    # Base clean rows trace edited→clean (target: edited answer); base edited rows the reverse.
    target = torch.tensor([p.edited_id for p in pairs] + [p.clean_id for p in pairs], device=vlm.device)
    with torch.no_grad():
        probs = vlm.last_logits(prep).float().softmax(-1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(vlm.device)
    rows = torch.arange(2 * n, device=vlm.device)
    return _Batch(prep, n, offset, groups.masks, target, probs[rows, target], probs[partner, target])


def _chunks(seq: Sequence, n: int) -> list[Sequence]:
    return [seq[i : i + n] for i in range(0, len(seq), n)]


# ---- exact -------------------------------------------------------------------------------------


@torch.no_grad()
def _step(vlm: VLM, prep: Prepared, layer: int, hidden: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Run one layer from the hidden state entering it: its components' outputs and the state entering the next."""
    acts: dict[str, torch.Tensor] = {}
    with forward_hooks([(component_module(vlm, layer, c), _capture(acts, c)) for c in COMPONENTS]):
        if layer + 1 < vlm.num_layers:
            nxt = vlm.next_hidden(prep, layer, hidden)
        else:
            vlm.last_logits(prep, start_layer=layer, hidden=hidden)
            nxt = None
    return acts, nxt


class _TraceBatches:
    """This rank's batches of pairs (whole batches, round-robin under torchrun: `vseam_run.dist`).

    Held: prepared once and kept, each with the hidden state entering the layer reached so far.
    Streamed: prepared again whenever needed and carried from the embeddings, one batch in
    memory at a time. The same operations on the same batches either way: the same numbers."""

    def __init__(self, vlm: VLM, pairs: Sequence[TracePair], batch_size: int, group_fn: GroupFn, *, stream: bool = False) -> None:
        self.vlm, self.pairs, self.batch_size, self.group_fn, self.stream = vlm, pairs, batch_size, group_fn, stream
        self.world = dist.current()
        self.starts = list(range(0, len(pairs), batch_size))
        self.mine = self.world.mine(len(self.starts))
        self._held = {} if stream else {i: self.prepare(i) for i in self.mine}
        self._hidden = {i: b.prep.embeds for i, b in self._held.items()}
        self._at = {i: 0 for i in self._held}

    def span(self, i: int) -> slice:
        return slice(self.starts[i], min(self.starts[i] + self.batch_size, len(self.pairs)))

    def prepare(self, i: int) -> _Batch:
        return _prepare_batch(self.vlm, self.pairs[self.span(i)], self.starts[i], self.group_fn)

    def each(self) -> Iterator[tuple[int, _Batch]]:
        for i in self.mine:
            yield i, self._held[i] if i in self._held else self.prepare(i)

    def entering(self, layer: int) -> Iterator[tuple[_Batch, torch.Tensor]]:
        """Each batch with the hidden state entering `layer`."""
        for i, b in self.each():
            if self.stream:
                hidden = b.prep.embeds
                for k in range(layer):
                    hidden = self.vlm.next_hidden(b.prep, k, hidden)
                yield b, hidden
                continue
            while self._at[i] < layer:  # the kept state moves forward only
                self._hidden[i] = self.vlm.next_hidden(b.prep, self._at[i], self._hidden[i])
                self._at[i] += 1
            yield b, self._hidden[i]

    def gather(self, values: np.ndarray, axis: int = 0) -> None:
        """Fill `values` (pairs along `axis`) with what the other ranks computed for their batches."""
        if not self.world.active:
            return
        index = lambda i: (slice(None),) * axis + (self.span(i),)  # noqa: E731
        local = {i: values[index(i)].copy() for i in self.mine}
        for i, part in enumerate(dist.gather_units(len(self.starts), local, self.world)):
            values[index(i)] = part


def _batch_baselines(src: _TraceBatches, P: int, G: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[D, P] p_source and p_base, and [P, G] which position groups each pair has, gathered."""
    p_src, p_base, present = np.zeros((2, P)), np.zeros((2, P)), np.zeros((P, G), dtype=bool)
    for i, b in src.each():
        for d in range(2):
            rows = [b.base_row(d, q) for q in range(b.n)]
            p_src[d, b.offset : b.offset + b.n] = b.p_source[rows].cpu().numpy()
            p_base[d, b.offset : b.offset + b.n] = b.p_base[rows].cpu().numpy()
        present[b.offset : b.offset + b.n] = b.groups.any(-1).cpu().numpy()
    src.gather(p_src, axis=1)
    src.gather(p_base, axis=1)
    src.gather(present)
    return p_src, p_base, present


@torch.no_grad()
def exact_trace(
    vlm: VLM,
    pairs: Sequence[TracePair],
    *,
    window: int = 1,
    margin: float = 0.1,
    directions: Sequence[str] = DIRECTIONS,
    components: Sequence[str] = COMPONENTS,
    batch_size: int = 8,
    batch_rows: int = 64,
    group_fn: GroupFn = position_groups,
    checkpoint: Checkpointer | None = None,
    key_prefix: str = "exact",
    stream: bool = False,
) -> TraceResult:
    """Every cell's patched probability, fast: see the module docstring.

    For each batch the hidden state entering the first layer of the current window is kept;
    at each layer the window's source activations are computed once (one layer pass per
    window layer for both images), then every (direction, component, group, pair) cell is a
    row of a batched run from the window's first layer. Finished layers are saved to
    `checkpoint` under `<key_prefix>:<layer>` and skipped when found there.

    `stream`: one batch in memory at a time, prepared again for each layer. Under torchrun
    each rank computes its whole batches and every layer is gathered before it is saved.
    """
    if not pairs:
        raise ValueError("trace needs at least one pair")
    L, P = vlm.num_layers, len(pairs)
    names = _group_names(vlm, group_fn, pairs[0])
    G = len(names)
    src = _TraceBatches(vlm, pairs, batch_size, group_fn, stream=stream)
    p_src, p_base, present = _batch_baselines(src, P, G)
    eligible = (p_src - p_base) >= margin
    dir_idx = [DIRECTIONS.index(d) for d in directions]
    comp_idx = [COMPONENTS.index(c) for c in components]
    patched = np.full((2, P, L, 3, G), np.nan)
    saved = checkpoint.load() if checkpoint else {}
    done = {int(k.rsplit(":", 1)[1]): np.array(v, dtype=float) for k, v in saved.items() if k.startswith(key_prefix + ":")}

    def rows_of(offset: int, n: int) -> list[tuple[int, int, int, int]]:
        return [(d, q, c, g) for d in dir_idx for q in range(n) if eligible[d, offset + q]
                for c in comp_idx for g in range(G) if present[offset + q, g]]

    mine_rows = sum(len(rows_of(src.starts[i], src.span(i).stop - src.starts[i])) for i in src.mine)
    with progress("trace (exact)", mine_rows * sum(1 for l in range(L) if l not in done)) as advance:
        for l in range(L):
            if l in done:
                patched[:, :, l] = done[l]
                continue
            win = _window(l, window, L)
            # Each batch from the state entering the window's first layer, then the window's activations.
            for b, hidden in src.entering(win.start):
                acts, h = {}, hidden
                for k in win:
                    acts[k], h = _step(vlm, b.prep, k, h)
                for chunk in _chunks(rows_of(b.offset, b.n), batch_rows):
                    probs = _run_rows(vlm, b, hidden, win, acts, chunk)
                    for (d, q, c, g), p in zip(chunk, probs):
                        patched[d, b.offset + q, l, c, g] = p
                    advance(len(chunk))
            layer = np.ascontiguousarray(patched[:, :, l])
            src.gather(layer, axis=1)
            patched[:, :, l] = layer
            if checkpoint:
                checkpoint.save(f"{key_prefix}:{l}", _nan_to_none_nested(patched[:, :, l]))
    return _result(pairs, names, window, margin, p_src, p_base, eligible, patched, directions, components, "exact")


def _run_rows(vlm: VLM, b: _Batch, hidden: torch.Tensor, win: range, acts: dict, chunk: Sequence) -> list[float]:
    dev = vlm.device
    base = torch.tensor([b.base_row(d, q) for d, q, _, _ in chunk], device=dev)
    src = torch.tensor([b.source_row(d, q) for d, q, _, _ in chunk], device=dev)
    q_idx = torch.tensor([q for _, q, _, _ in chunk], device=dev)
    g_idx = torch.tensor([g for _, _, _, g in chunk], device=dev)
    c_idx = torch.tensor([c for _, _, c, _ in chunk], device=dev)
    group_mask = b.groups[q_idx, g_idx]  # [R, T]
    hooks = []
    for c, name in enumerate(COMPONENTS):
        mask = group_mask & (c_idx == c)[:, None]
        if mask.any():
            hooks += [(component_module(vlm, k, name), _patch(mask, acts[k][name][src.to(acts[k][name].device)])) for k in win]
    with forward_hooks(hooks):
        logits = vlm.run_from_layer(b.prep.rows(base), win.start, hidden[base])
    probs = logits.float().softmax(-1)
    return probs[torch.arange(len(chunk), device=dev), b.target[base]].tolist()


def _group_names(vlm: VLM, group_fn: GroupFn, pair: TracePair) -> tuple[str, ...]:
    return tuple(group_fn(vlm, vlm.encode([pair.clean_image], [pair.question]), [pair.question]).names)


def _nan_to_none_nested(a: np.ndarray) -> Any:
    """Nested lists with None for NaN (strict JSON has no NaN)."""
    return np.where(np.isfinite(a), a, None).tolist()


def _result(pairs, names, window, margin, p_src, p_base, eligible, patched, directions, components, method) -> TraceResult:
    """Keep the asked-for directions and components and the groups some pair has."""
    d_idx = [DIRECTIONS.index(d) for d in directions]
    c_idx = [COMPONENTS.index(c) for c in components]
    patched = patched[d_idx][:, :, :, c_idx]
    present = np.isfinite(patched).any(axis=(0, 1, 2, 3)) if np.isfinite(patched).any() else np.ones(len(names), bool)
    keep = [g for g in range(len(names)) if present[g]]
    return TraceResult(
        qids=[p.qid for p in pairs], directions=tuple(directions), components=tuple(components),
        groups=tuple(names[g] for g in keep), window=window, margin=margin, p_source=p_src[d_idx], p_base=p_base[d_idx],
        eligible=eligible[d_idx], patched=patched[..., keep], method=method,
        answers=[(p.clean_answer, p.edited_answer) for p in pairs],
    )


# ---- reference ---------------------------------------------------------------------------------


@torch.no_grad()
def reference_trace(
    vlm: VLM,
    pairs: Sequence[TracePair],
    *,
    window: int = 1,
    margin: float = 0.1,
    directions: Sequence[str] = DIRECTIONS,
    components: Sequence[str] = COMPONENTS,
    group_fn: GroupFn = position_groups,
    cells: Sequence[tuple[int, int, int, int, int]] | None = None,
) -> TraceResult:
    """The plain method: per pair, the full model at batch 1 on each image, once per cell.

    `cells` (direction, pair, layer, component, group) limits the work to those cells (used by
    the run-time spot check); by default every cell of the asked directions and components.
    """
    L, P = vlm.num_layers, len(pairs)
    names = _group_names(vlm, group_fn, pairs[0])
    G = len(names)
    patched = np.full((2, P, L, 3, G), np.nan)
    p_src, p_base = np.zeros((2, P)), np.zeros((2, P))
    want = None if cells is None else set(cells)
    # Under torchrun (every cell asked for) each rank traces its share of the pairs, gathered below.
    w = dist.current() if want is None else dist.World()
    for p in w.mine(P):
        pair = pairs[p]
        if want is not None and not any(c[1] == p for c in want):
            continue
        inputs = [vlm.encode([im], [pair.question]) for im in (pair.clean_image, pair.edited_image)]
        groups = group_fn(vlm, inputs[0], [pair.question]).masks[0]  # [G, T]
        runs = [_full_run(vlm, x) for x in inputs]  # (probs, acts[(layer, comp)])
        for d in range(2):
            base, src = (1, 0) if d == 0 else (0, 1)
            target = pair.clean_id if d == 0 else pair.edited_id
            p_src[d, p], p_base[d, p] = runs[src][0][target], runs[base][0][target]
            for l in range(L):
                for c, cname in enumerate(COMPONENTS):
                    for g in range(G):
                        cell = (d, p, l, c, g)
                        if want is not None and cell not in want:
                            continue
                        if want is None and (DIRECTIONS[d] not in directions or cname not in components):
                            continue
                        if not groups[g].any():
                            continue
                        hooks = [(component_module(vlm, k, cname), _patch(groups[g][None], runs[src][1][(k, cname)]))
                                 for k in _window(l, window, L)]
                        with forward_hooks(hooks):
                            logits = vlm.model(**inputs[base]).logits[:, -1]
                        patched[cell] = float(logits.float().softmax(-1)[0, target])
    if w.active:
        local = {p: (patched[:, p].copy(), p_src[:, p].copy(), p_base[:, p].copy()) for p in w.mine(P)}
        for p, (pt, ps, pb) in enumerate(dist.gather_units(P, local, w)):
            patched[:, p], p_src[:, p], p_base[:, p] = pt, ps, pb
    eligible = (p_src - p_base) >= margin
    if want is None:
        patched[~np.broadcast_to(eligible[:, :, None, None, None], patched.shape)] = np.nan
    return _result(pairs, names, window, margin, p_src, p_base, eligible, patched, directions, components, "reference")


def _full_run(vlm: VLM, inputs: dict) -> tuple[np.ndarray, dict]:
    acts: dict = {}
    hooks = [(component_module(vlm, l, c), _capture(acts, (l, c))) for l in range(vlm.num_layers) for c in COMPONENTS]
    with forward_hooks(hooks):
        logits = vlm.model(**inputs).logits[:, -1]
    return logits.float().softmax(-1)[0].cpu().numpy(), acts


def spot_check(vlm: VLM, pairs: Sequence[TracePair], result: TraceResult, *, window: int, group_fn: GroupFn = position_groups,
               atol: float | None = None) -> float:
    """Recompute a few cells of `result` with the plain batch-1 method; raise if they differ.

    The cells: the first traced pair, in each direction it is included in, one cell per
    component, spread over the layers and groups. Returns the largest difference.
    """
    cells, where = [], []
    for di, dname in enumerate(result.directions):
        d = DIRECTIONS.index(dname)
        for p in range(len(pairs)):
            if not result.eligible[di, p]:
                continue
            for ci, cname in enumerate(result.components):
                finite = np.argwhere(np.isfinite(result.patched[di, p, :, ci]))
                if len(finite):
                    l, g = finite[(ci * 7 + di * 3) % len(finite)]
                    names = _group_names(vlm, group_fn, pairs[p])
                    cells.append((d, p, int(l), COMPONENTS.index(cname), names.index(result.groups[g])))
                    where.append((di, p, int(l), ci, int(g)))
            break
    if not cells:
        return 0.0
    ref = reference_trace(vlm, pairs, window=window, margin=-math.inf, group_fn=group_fn, cells=cells)
    worst = 0.0
    for (d, _, _, c, _), (di, p, l, ci, g) in zip(cells, where):
        want = ref.patched[d, p, l, c, ref.groups.index(result.groups[g])]
        worst = max(worst, abs(float(result.patched[di, p, l, ci, g]) - float(want)))
    tol = atol if atol is not None else (1e-4 if vlm.dtype == torch.float32 else 2e-2)
    if not worst <= tol:
        raise VseamError(
            f"trace: the fast path differs from the plain batch-1 pass by {worst:.2e} (tolerance {tol:.0e}) on model "
            f"'{vlm.entry.name}'; its numbers would be wrong",
            hint="use trace.method: reference for this model, and report the model's architecture",
        )
    return worst


# ---- attribution -------------------------------------------------------------------------------


def attribution_trace(
    vlm: VLM,
    pairs: Sequence[TracePair],
    *,
    window: int = 1,
    margin: float = 0.1,
    directions: Sequence[str] = DIRECTIONS,
    components: Sequence[str] = COMPONENTS,
    batch_size: int = 8,
    group_fn: GroupFn = position_groups,
) -> TraceResult:
    """First-order estimate of every cell: p_patched ≈ p_base + Σ_window Σ_group <∂p/∂a, a_source − a_base>.

    One forward and one backward pass per batch gives both directions, since the batch holds
    both images: each row is the base run of one direction and the source of the other.
    Gradients flow through activations only (the weights are frozen).
    """
    L, P = vlm.num_layers, len(pairs)
    names = _group_names(vlm, group_fn, pairs[0])
    G = len(names)
    patched = np.full((2, P, L, 3, G), np.nan)
    # One batch in memory at a time (each is used once); under torchrun this rank's whole batches.
    src = _TraceBatches(vlm, pairs, batch_size, group_fn, stream=True)
    p_src, p_base = np.zeros((2, P)), np.zeros((2, P))
    groups_present = np.zeros((P, G), dtype=bool)
    with progress("trace (attribution)", len(src.mine)) as advance:
        for _, b in src.each():
            est = _first_order(vlm, b)  # [2n, L, 3, G]: estimated p change with the row as base run
            for d in range(2):
                for q in range(b.n):
                    patched[d, b.offset + q] = b.p_base[b.base_row(d, q)].item() + est[b.base_row(d, q)]
                    p_src[d, b.offset + q] = b.p_source[b.base_row(d, q)].item()
                    p_base[d, b.offset + q] = b.p_base[b.base_row(d, q)].item()
            groups_present[b.offset : b.offset + b.n] = b.groups.any(-1).cpu().numpy()
            advance(1)
    for values, axis in ((patched, 1), (p_src, 1), (p_base, 1), (groups_present, 0)):
        src.gather(values, axis)
    eligible = (p_src - p_base) >= margin
    # The same windows as exact patching: a window's first-order effect is the sum of its layers'.
    summed = np.zeros_like(patched)
    for l in range(L):
        for k in _window(l, window, L):
            summed[:, :, l] += patched[:, :, k] - p_base[:, :, None, None]
    patched = p_base[:, :, None, None, None] + summed
    patched[~np.broadcast_to(eligible[:, :, None, None, None], patched.shape)] = np.nan
    patched[np.broadcast_to(~groups_present[None, :, None, None, :], patched.shape)] = np.nan
    return _result(pairs, names, window, margin, p_src, p_base, eligible, patched, directions, components, "attribution")


def _first_order(vlm: VLM, b: _Batch) -> np.ndarray:
    L, n2 = vlm.num_layers, 2 * b.n
    acts: dict = {}
    hooks = [(component_module(vlm, l, c), _capture(acts, (l, c), keep_graph=True)) for l in range(L) for c in COMPONENTS]
    hidden = b.prep.embeds.detach().clone().requires_grad_(True)
    with torch.enable_grad(), forward_hooks(hooks):
        probs = vlm.last_logits(b.prep, hidden=hidden).float().softmax(-1)
        p = probs[torch.arange(n2, device=vlm.device), b.target]
        keys = list(acts)
        grads = torch.autograd.grad(p.sum(), [acts[k] for k in keys], allow_unused=True)
    partner = torch.cat([torch.arange(b.n, n2), torch.arange(b.n)]).to(vlm.device)
    masks = torch.cat([b.groups, b.groups]).float()  # [2n, G, T]
    out = np.zeros((n2, L, 3, masks.shape[1]))
    for (l, c), g in zip(keys, grads):
        a = acts[(l, c)].detach().float()
        if g is None:
            continue
        per_pos = (g.float() * (a[partner.to(a.device)] - a)).sum(-1).to(masks.device)  # [2n, T']
        t = per_pos.shape[1]
        out[:, l, COMPONENTS.index(c)] = torch.einsum("rgt,rt->rg", masks[:, :, -t:], per_pos).cpu().numpy()
    return out


# ---- logit lens --------------------------------------------------------------------------------


@torch.no_grad()
def logit_lens(vlm: VLM, pairs: Sequence[TracePair], *, batch_size: int = 8) -> LensResult:
    """Per layer: the residual stream after it, at the last position, read through the final
    norm and the LM head; the clean and the edited answer's probability and rank, on both images.
    One batch at a time; under torchrun each rank its whole batches, gathered."""
    L, P = vlm.num_layers, len(pairs)
    prob, rank = np.zeros((2, 2, P, L)), np.zeros((2, 2, P, L))
    norm = get_module(vlm.model, vlm.entry.modules.final_norm)
    w = dist.current()
    starts = list(range(0, P, batch_size))
    mine = w.mine(len(starts))
    for i in (starts[j] for j in mine):
        chunk = pairs[i : i + batch_size]
        n = len(chunk)
        prep = vlm.prepare(_encode_pairs(vlm, chunk))
        outs: dict = {}
        with forward_hooks([(vlm.layers[l], _capture(outs, l)) for l in range(L)]):
            vlm.last_logits(prep)
        tokens = torch.tensor([[p.clean_id, p.edited_id] for p in chunk], device=vlm.device)  # [n, 2]
        for l in range(L):
            logits = vlm.lm_head(norm(outs[l][:, -1])).float().to(vlm.device)  # [2n, V]
            probs = logits.softmax(-1)
            for im in range(2):
                lg, pr = logits[im * n : (im + 1) * n], probs[im * n : (im + 1) * n]
                for tok in range(2):
                    t = tokens[:, tok]
                    own = lg.gather(1, t[:, None])
                    prob[im, tok, i : i + n, l] = pr.gather(1, t[:, None])[:, 0].cpu().numpy()
                    rank[im, tok, i : i + n, l] = (1 + (lg > own).sum(-1)).cpu().numpy()
    if w.active:
        spans = [slice(i, min(i + batch_size, P)) for i in starts]
        local = {j: (prob[:, :, spans[j]].copy(), rank[:, :, spans[j]].copy()) for j in mine}
        for span, (pr, rk) in zip(spans, dist.gather_units(len(spans), local, w)):
            prob[:, :, span], rank[:, :, span] = pr, rk
    return LensResult(prob, rank)


# ---- selection and fingerprint -----------------------------------------------------------------


@torch.no_grad()
def select_pairs(vlm: VLM, pairs: Sequence[TracePair], *, margin: float, limit: int | None, batch_size: int = 8,
                 directions: Sequence[str] = DIRECTIONS) -> list[TracePair]:
    """The first `limit` pairs included (p_source − p_base ≥ margin) in at least one asked direction."""
    keep: list[TracePair] = []
    d_idx = [DIRECTIONS.index(d) for d in directions]
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        prep = vlm.prepare(_encode_pairs(vlm, chunk))
        probs = vlm.last_logits(prep).float().softmax(-1)
        n = len(chunk)
        for q, p in enumerate(chunk):
            gain = [float(probs[q, p.clean_id] - probs[n + q, p.clean_id]), float(probs[n + q, p.edited_id] - probs[q, p.edited_id])]
            if any(gain[d] >= margin for d in d_idx):
                keep.append(p)
                if limit is not None and len(keep) >= limit:
                    return keep
    return keep


def fingerprint(pairs: Sequence[TracePair], **settings: Any) -> str:
    """A hash of everything that determines a trace's numbers besides the model: the pairs
    (ids, questions, answer tokens, image pixels) and the settings."""
    h = hashlib.sha256(repr((TRACE_VERSION, sorted(settings.items()))).encode())
    for p in pairs:
        h.update(repr((p.qid, p.question, p.clean_id, p.edited_id)).encode())
        for im in (p.clean_image, p.edited_image):
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            h.update(hashlib.sha256(buf.getvalue()).digest())
    return h.hexdigest()[:16]
