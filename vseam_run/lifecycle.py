"""An honest run lifecycle: signals end a run like Ctrl-C, and a heartbeat shows it is alive.

A cluster scheduler ends a job with SIGTERM (and a closed terminal sends SIGHUP); both are
turned into `RunInterrupted`, a KeyboardInterrupt, so the pipeline records the run as
`interrupted` and says how to resume, exactly as for Ctrl-C. The process then exits with
128 + the signal number (143 for SIGTERM), as a shell reports a signalled job.

While a run works, a daemon thread refreshes its heartbeat in the registry every few
seconds (one small UPDATE). A `running` run whose heartbeat is stale — or whose process is
gone from this host — was killed (SIGKILL, power loss) and is shown as `lost`
(`RunRecord.shown_status`); `--resume` refuses a run that still looks alive unless forced.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from vseam_run.store import RunStore
from vseam_run.store.records import HEARTBEAT_INTERVAL_S, STALE_AFTER_S

__all__ = ["HEARTBEAT_INTERVAL_S", "STALE_AFTER_S", "RunInterrupted", "exit_code", "heartbeat", "interrupt_cause",
           "signals_interrupt"]

#: Signals handled like Ctrl-C (SIGINT keeps Python's own KeyboardInterrupt).
HANDLED_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


class RunInterrupted(KeyboardInterrupt):
    """A run ended by a signal; `exit_code` is what the shell would report for it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interrupt_cause(exc: BaseException) -> str:
    """What ended the run, for its record: 'SIGTERM', 'SIGHUP' or 'Ctrl-C'."""
    return exc.signal_name if isinstance(exc, RunInterrupted) else "Ctrl-C"


def exit_code(exc: BaseException) -> int:
    """128 + signal number: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return exc.exit_code if isinstance(exc, RunInterrupted) else 128 + signal.SIGINT


class Signals:
    """The switch `signals_interrupt` yields: once the run's outcome is being recorded (`settle`),
    a signal no longer interrupts; it would cut the record short and leave the run 'running'
    (under torchrun a rank whose peer died gets a failed collective and then, a moment later,
    torchrun's SIGTERM, while it writes 'failed')."""

    def __init__(self) -> None:
        self.settled = False

    def settle(self) -> None:
        self.settled = True


@contextlib.contextmanager
def signals_interrupt() -> Iterator[Signals]:
    """Inside: SIGTERM and SIGHUP raise `RunInterrupted` in the main thread (once, and not after
    `settle()`: a signal while the outcome is being recorded is ignored). Outside the main thread,
    where Python allows no handlers, nothing changes."""
    state = Signals()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum: int, _frame: object) -> None:
        if state.settled:
            return
        state.settle()
        raise RunInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED_SIGNALS}
    try:
        yield state
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def heartbeat(store: RunStore, run_id: str, interval_s: float = HEARTBEAT_INTERVAL_S) -> Iterator[None]:
    """Refresh the run's heartbeat every `interval_s` seconds from a daemon thread while inside.

    A thread rather than the progress bars: model loading and single long forward passes
    report no progress, and a run is alive through them too. A failed beat (a registry
    briefly locked) is skipped; the next one will do.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                store.heartbeat(run_id)
            except Exception:  # noqa: BLE001 - best effort; staleness needs many missed beats
                pass

    thread = threading.Thread(target=beat, name=f"vseam-heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
