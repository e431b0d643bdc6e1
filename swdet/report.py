"""One reporter for what the command line tells the user besides results: warnings.

Every warning of a ``swdet`` command (the data layer's :class:`~swdet.data.coco.DataWarning`,
notices from methods, library warnings) becomes one line ``warning: ...`` on stderr, written
above the progress bar (``tqdm.write``), never Python's raw ``file:line: Category: ...`` format.
The same line is shown once: repeats are counted, and the command ends with a count when some
were held back. :func:`installed` routes :mod:`warnings` through it (the CLI's ``main`` does);
warnings raised in DataLoader worker processes travel back with the sample (``target["warnings"]``)
and :func:`relay` reports them from the main process, so two workers hitting the same file still
give one line.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

__all__ = ["Reporter", "installed", "relay", "report"]


class Reporter:
    def __init__(self):
        self.counts: dict[str, int] = {}

    def warn(self, message) -> None:
        line = " ".join(str(message).split())
        if line in self.counts:
            self.counts[line] += 1
            return
        self.counts[line] = 1
        _write(f"warning: {line}")

    def showwarning(self, message, category, filename, lineno, file=None, line=None) -> None:
        quiet = category is UserWarning or category.__name__ == "DataWarning"
        self.warn(str(message) if quiet else f"{category.__name__}: {message}")

    @property
    def repeats(self) -> int:
        return sum(n - 1 for n in self.counts.values())

    def summary(self) -> str | None:
        """The closing count, when some warning lines were held back as repeats."""
        if not self.repeats:
            return None
        return (f"warnings: {len(self.counts)} shown above, {self.repeats} repeat"
                f"{'s' if self.repeats != 1 else ''} not shown")


def _write(line: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(line, file=sys.stderr)


_current: Reporter | None = None


@contextlib.contextmanager
def installed():
    """Route :mod:`warnings` through a fresh :class:`Reporter` for the duration (restored after);
    yields it."""
    global _current
    old_show, old_current = warnings.showwarning, _current
    rep = Reporter()
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # the reporter deduplicates, and counts the repeats
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
        warnings.showwarning = rep.showwarning
        _current = rep
        try:
            yield rep
        finally:
            warnings.showwarning = old_show
            _current = old_current


def report(message: str) -> None:
    """One warning line through the active reporter (plain :func:`warnings.warn` without one)."""
    if _current is not None:
        _current.warn(message)
    else:
        warnings.warn(message, UserWarning, stacklevel=2)


def relay(targets) -> None:
    """Report the warnings DataLoader workers attached to samples (``target["warnings"]``)."""
    from swdet.data.coco import DataWarning

    for t in targets:
        for msg in t.get("warnings") or ():
            warnings.warn(msg, DataWarning, stacklevel=2)
