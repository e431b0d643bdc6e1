"""User-facing errors.

Every problem caused by what the user gave us (a file, a config value, a CLI option) is raised as
:class:`SwdetError` with one line that names the file or value and the problem. The CLI turns it
into that one line on stderr and a non-zero exit, never a traceback. Programming errors stay
ordinary exceptions.
"""

from __future__ import annotations


class SwdetError(Exception):
    """A one-line, user-facing error (bad input, missing file, unsupported option)."""

    exit_code = 2

    def __init__(self, message: str):
        message = str(message)
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep our line
            last = [ln for ln in message.splitlines() if ln.strip()][-1]
            message = last.split("Error: ", 1)[-1] if "SwdetError" in last or "Error: " in last else last
        super().__init__(" ".join(message.split()))


class MissingDependency(SwdetError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, purpose: str = ""):
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(
            f"{package} is not installed{what}; install it with: pip install \"swdet[{extra}]\""
        )
        self.package = package
        self.extra = extra


class TrainingDiverged(SwdetError):
    """Too many non-finite losses in a row; the last good checkpoint is left intact."""

    exit_code = 3


class Interrupted(SwdetError):
    """The run was stopped by a signal (SIGINT, SIGTERM); the exit status is ``128 + signum``
    (130, 143), the shell's convention. The message says what was kept and how to go on."""

    def __init__(self, message: str, signum: int = 2):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
