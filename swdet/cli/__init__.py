"""The ``swdet`` command line: verbs in the style users know from Ultralytics and trtexec.

The face of the package and the only core module that imports the stages: one module per verb
group (:mod:`~swdet.cli.train`, :mod:`~swdet.cli.evaluate` for ``eval`` and ``predict``,
:mod:`~swdet.cli.export`, :mod:`~swdet.cli.calib`, :mod:`~swdet.cli.serve`,
:mod:`~swdet.cli.verify`, :mod:`~swdet.cli.data`) and the pipeline beside them
(:mod:`~swdet.cli.pipeline`). Each imports only click at module level and keeps the stage
imports inside its command, so ``swdet --help`` is instant.

Bad input ends with one line on stderr and a non-zero exit, never a traceback (set
``SWDET_DEBUG=1`` to see one); :func:`main` documents the exit statuses.
"""

from __future__ import annotations

import os
import sys

import click

from swdet.cli import calib, data, evaluate, export, pipeline, serve, train, verify
from swdet.cli.common import CONTEXT
from swdet.errors import Interrupted, SwdetError


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="swdet", message="swdet %(version)s")
def cli() -> None:
    """swdet: train detectors with sample-weighting losses, deploy them at zero test-time cost.

    \b
    Quick start (CPU, embedded synthetic data):
      swdet pipeline --out runs/pipeline
    Stages:
      swdet data synth --out data/synth
      swdet train --data data/synth --model retinanet_tiny --method pisa --iters 3000
      swdet eval runs/retinanet_tiny_pisa --data data/synth
      swdet export runs/retinanet_tiny_pisa --format onnx --out pisa.onnx
    """


for _command in (train.train_cmd, evaluate.eval_cmd, evaluate.predict_cmd, verify.verify_cmd, data.data,
                 export.export, calib.calib, serve.serve, pipeline.pipeline):
    cli.add_command(_command)


def exit_status(code) -> int:
    """The process exit status for ``sys.exit(code)`` semantics: None is 0, an int is itself,
    anything else (a message) is 1."""
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    return 1


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (the console script passes it to ``sys.exit``).

    0 on success; the code of a ``click.exceptions.Exit`` a command raises (``swdet verify``
    exits 1 when the candidate's cost differs); 2 for a usage error; the error's ``exit_code``
    for a :class:`~swdet.errors.SwdetError` (2 for bad input, 3 when training diverged), printed
    as one line; 130 when interrupted (SIGINT), 143 for a training run stopped by SIGTERM; 1 for anything unexpected (one line; the traceback with
    ``SWDET_DEBUG=1``).

    Click runs with ``standalone_mode=False`` so errors reach the handlers below; in that mode
    click *returns* the code of an ``Exit`` (and ``--help`` / ``--version`` return 0) instead of
    raising it, so the returned value is the exit status. Commands return None.
    """
    from swdet.report import installed

    with installed() as reporter:  # every warning: one line above the progress bar, repeats counted
        status = _main(argv)
        closing = reporter.summary()
        if closing:
            click.echo(closing, err=True)
        return status


def _main(argv: list[str] | None) -> int:
    debug = os.environ.get("SWDET_DEBUG", "") not in ("", "0")
    try:
        rv = cli.main(args=argv, prog_name="swdet", standalone_mode=False)
        return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    except click.exceptions.Abort as e:  # click turns KeyboardInterrupt and EOF into Abort
        click.echo("interrupted" if isinstance(e.__context__, KeyboardInterrupt) else "aborted", err=True)
        return 130
    except click.ClickException as e:  # usage errors (2) and the like: click's own message
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return exit_status(e.exit_code)
    except SystemExit as e:
        if e.code is not None and not isinstance(e.code, int):
            click.echo(f"error: {e.code}", err=True)
        return exit_status(e.code)
    except Interrupted as e:  # a clean stop on a signal: what was kept and how to go on, 128 + signum
        click.echo(str(e), err=True)
        return e.exit_code
    except SwdetError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - a bug: still one line, with a way to see the traceback
        if debug:
            raise
        if isinstance(e, ModuleNotFoundError) and (e.name or "").startswith("swdet."):
            click.echo(f"error: {e.name} is not installed here (a deployment without that stage)", err=True)
            return 2
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        click.echo(f"internal error: {type(e).__name__}: {msg} (rerun with SWDET_DEBUG=1 for the traceback)", err=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
