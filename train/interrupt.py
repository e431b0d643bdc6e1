"""Stopping a training run cleanly on SIGINT (Ctrl-C) and SIGTERM (a scheduler's kill).

While :class:`GracefulStop` is active the first signal only sets a flag: the trainer finishes
the step it is in, writes an atomic checkpoint of that exact iteration (every DDP rank agrees on
the iteration, see :meth:`Trainer.fit <swdet.train.engine.Trainer.fit>`) and raises
:class:`~swdet.errors.Interrupted` (exit status 130 / 143). A second signal raises at once; the
checkpoint on disk is then the last one written (writes are atomic, so it is never half a file).

``SWDET_TEST_SIGNAL=K:SIG[,SIG...][@RANK]`` (a test hook) makes the trainer send itself the
named signals at the start of iteration ``K`` (on one DDP rank with ``@RANK``), so tests can
interrupt at an exact iteration.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from swdet.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class GracefulStop:
    """A context manager: SIGINT / SIGTERM set :attr:`signum` instead of killing the process."""

    def __init__(self, enabled: bool = True, announce: bool = True):
        self.signum: int | None = None
        self.iteration = 0  # kept up to date by the trainer, for the messages
        self.announce = announce
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self._old: dict = {}

    def __enter__(self) -> GracefulStop:
        if self.enabled:
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:  # the second signal: stop now
            raise Interrupted(f"{signal_name(signum)} again: stopped at once during iteration "
                              f"{self.iteration + 1}; the last checkpoint written is unchanged", signum)
        self.signum = signum
        if self.announce:
            print(f"\n{signal_name(signum)}: finishing iteration {self.iteration + 1}, then writing a checkpoint "
                  "(send it again to stop at once)", file=sys.stderr, flush=True)


def signal_hook() -> tuple[int, list[int], int | None] | None:
    """The ``SWDET_TEST_SIGNAL`` hook: ``(iteration, [signums], rank or None)`` or None.
    ``K:SIG[,SIG...][@R]``: at the start of iteration K, send the signals (to rank R only when
    ``@R`` is given: the other DDP ranks must then stop after the same iteration)."""
    spec = os.environ.get("SWDET_TEST_SIGNAL", "")
    if not spec:
        return None
    spec, _, rank = spec.partition("@")
    at, _, names = spec.partition(":")
    signums = [int(getattr(signal, n.strip())) for n in (names or "SIGINT").split(",") if n.strip()]
    return int(at), signums, (int(rank) if rank else None)
