"""Several processes, one run: `torchrun --nproc-per-node N -m vseam_run run SPEC`.

torchrun starts N copies of `vseam run` with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR set.
Every rank loads the model and walks the same stages; the heavy loops hand out WHOLE BATCHES
(the same batches, of the same questions, as a one-process run) round-robin — rank r takes
batches r, r+N, r+2N, … — and the results are gathered in batch order. A batch is computed by
exactly the same operations whichever rank holds it, so the gathered numbers are those of a
one-process run, bit for bit (tests/test_dist.py checks it).

Only rank 0 writes: the registry (through `MainOnlyStore` on the other ranks), the log, the
progress bars, the figures. Decisions that depend on what the registry holds (which stages
finished, which search layers are stored) are read by all ranks before anyone writes (a barrier
follows), so every rank takes the same path. A rank that dies makes the others' next collective
fail (gloo notices the closed connection; otherwise the group's timeout, VSEAM_DIST_TIMEOUT
seconds, default 1800, fires): rank 0 records the run as failed with that message, and
`vseam run --resume RUN` (under torchrun or not) continues from the finished stages and
search layers. NCCL on GPUs (each rank on cuda:LOCAL_RANK), gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import torch
import torch.distributed as tdist

from vseam_run.errors import VseamError

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def mine(self, n: int) -> list[int]:
        """The units (batch indices) of 0..n-1 this rank computes: round-robin, so ranks get
        batches from the whole list and a shorter last batch lands on one rank only."""
        return list(range(self.rank, n, self.size))


_WORLD = World()
_UNSHARDED = 0  # depth of `unsharded()` blocks


def world() -> World:
    """The run's processes (for who writes, logs and waits)."""
    return _WORLD


def current() -> World:
    """How work is split here: the run's processes, or this one alone inside `unsharded()`."""
    return World() if _UNSHARDED else _WORLD


@contextlib.contextmanager
def unsharded() -> Iterator[None]:
    """Inside, every rank computes all units itself, with no collectives: for a stage that one
    rank runs ahead of the others (`main_first`), e.g. one that writes a cache on disk."""
    global _UNSHARDED
    _UNSHARDED += 1
    try:
        yield
    finally:
        _UNSHARDED -= 1


def env_world() -> World:
    """The world torchrun describes in the environment (one process without it)."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def timeout_s() -> float:
    raw = os.environ.get("VSEAM_DIST_TIMEOUT", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = -1.0
    if value <= 0:
        raise VseamError(f"VSEAM_DIST_TIMEOUT={raw!r} is not a positive number of seconds", hint="e.g. VSEAM_DIST_TIMEOUT=600")
    return value


def device_for(device: torch.device, w: World) -> torch.device:
    """On GPUs each rank takes its own: cuda:LOCAL_RANK (the spec's cuda / cuda:N names the kind)."""
    if w.active and device.type == "cuda":
        if w.local_rank >= torch.cuda.device_count():
            raise VseamError(f"rank {w.rank}: no GPU cuda:{w.local_rank} on this node ({torch.cuda.device_count()} GPU(s))",
                             hint="start at most one process per GPU (torchrun --nproc-per-node)")
        return torch.device("cuda", w.local_rank)
    return device


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[World]:
    """Join the process group torchrun set up (for the duration of one run), if any."""
    global _WORLD
    w = env_world()
    if not w.active or tdist.is_initialized():
        _WORLD = w if tdist.is_initialized() else World()
        yield _WORLD
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device_for(device, w))  # NCCL's collectives run on this rank's GPU
    tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    _WORLD = w
    try:
        yield w
    finally:
        _WORLD = World()
        with contextlib.suppress(Exception):
            tdist.destroy_process_group()


def broadcast(obj: T) -> T:
    """Rank 0's `obj` on every rank."""
    if not _WORLD.active:
        return obj
    box = [obj if _WORLD.main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[return-value]


def barrier() -> None:
    if _WORLD.active:
        tdist.barrier()


def gather_units(n: int, local: dict[int, R], w: World | None = None) -> list[R]:
    """Every rank's results for its units (`{unit: result}`), as one list in unit order, on every
    rank. `w`: the split the units were made with (`current()` when they were handed out)."""
    w = current() if w is None else w
    if not w.active:
        return [local[i] for i in range(n)]
    parts: list[dict[int, R] | None] = [None] * w.size
    tdist.all_gather_object(parts, local)
    merged: dict[int, R] = {}
    for part in parts:
        merged.update(part or {})
    missing = [i for i in range(n) if i not in merged]
    if missing:  # a bug, not bad input: never hand on partial results
        raise RuntimeError(f"distributed gather is missing units {missing[:5]}")
    return [merged[i] for i in range(n)]


def map_units(units: Sequence[T], fn: Callable[[T], R]) -> list[R]:
    """`[fn(u) for u in units]`, each unit computed by one rank, gathered in order on all ranks."""
    w = current()
    return gather_units(len(units), {i: fn(units[i]) for i in w.mine(len(units))}, w)


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (filling caches on disk), then the others, which find them filled."""
    if _WORLD.active and not _WORLD.main:
        barrier()
    yield
    if _WORLD.active and _WORLD.main:
        barrier()


class MainOnlyStore:
    """The run registry as ranks other than 0 see it: reads go through, writes are dropped
    (rank 0 records the same values, gathered)."""

    WRITES = frozenset({
        "create_run", "set_status", "mark_resumed", "heartbeat", "update_spec", "set_summary", "delete_run",
        "log_metrics", "log_question_results", "add_artifact", "save_checkpoint", "delete_checkpoints", "put_document",
    })

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name in self.WRITES:
            return lambda *args, **kwargs: None
        return getattr(self._store, name)


def main_decides(fn: Callable[[], T]) -> T:
    """Rank 0 runs `fn` and every rank gets its result; when it fails there, the other ranks
    fail with its message instead of waiting for a result that never comes."""
    if not _WORLD.active:
        return fn()
    if _WORLD.main:
        try:
            value = fn()
        except BaseException as e:
            broadcast(("error", str(e) if isinstance(e, VseamError) else f"{type(e).__name__}: {e}"))
            raise
        return broadcast(("ok", value))[1]
    status, value = broadcast(None)
    if status == "error":
        raise VseamError(f"rank 0: {value}")
    return value
