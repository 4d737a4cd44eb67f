"""Preemption: SIGTERM or SIGINT stops the work at its next safe point, with nothing lost.

A cluster preempts a job by sending SIGTERM, then SIGKILL after a grace period (SLURM's
``--signal=TERM@120`` makes that 120 s). The ``vitscope`` command installs :func:`install`;
the first SIGTERM or SIGINT only sets a flag, and the work stops at its next safe point: the
end of a training step (a mid-epoch checkpoint is saved), a finished analysis item (a
landscape grid point, a Hessian batch: the resumable store has just saved it) or the end of
an analysis. :func:`check` then raises :class:`Preempted`, the command prints one line saying
how to resume, and exits with :data:`EXIT_PREEMPTED`. Running the same command again
continues. A second signal while stopping interrupts at once (``KeyboardInterrupt``).

Library code only calls :func:`check` (a no-op until a signal arrived); a script that wants
the same behaviour calls :func:`install` itself.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

#: exit status of a preempted command: EX_TEMPFAIL ("try again"), unlike errors (2) and a
#: hard interrupt (130)
EXIT_PREEMPTED = 75

_received: int | None = None


class Preempted(Exception):
    """A SIGTERM or SIGINT stopped the work at a safe point; what was done is saved."""


def _handler(signum, frame) -> None:
    global _received
    if _received is not None:  # a second signal: stop now
        raise KeyboardInterrupt
    _received = signum


def install() -> None:
    """Catch SIGTERM and SIGINT (main thread only; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handler)


@contextmanager
def installed():
    """:func:`install` for the block, then the previous handlers back and the flag cleared
    (the CLI's ``main`` uses it, so calling it in-process leaves the caller as it was)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    install()
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        reset()


def requested() -> bool:
    """Whether a stop signal has arrived in this process."""
    return _received is not None


def signal_name() -> str:
    """The signal received here, or (under torchrun) what a rank that got none says."""
    return signal.Signals(_received).name if _received is not None else "a rank's stop signal"


def stop(where: str) -> None:
    """Raise :class:`Preempted`: the work stops after ``where`` (the safe point just reached
    and saved). Called where the ranks agreed to stop, also on a rank the signal missed."""
    raise Preempted(f"{signal_name()} received; stopped after {where}")


def check(where: str) -> None:
    """:func:`stop` if a stop signal has arrived in this process; a no-op otherwise."""
    if _received is not None:
        stop(where)


def reset() -> None:
    """Forget a received signal (tests, or a caller that handled it)."""
    global _received
    _received = None
