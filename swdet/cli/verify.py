"""``swdet verify``: does a candidate cost exactly what a baseline costs at test time?

It composes export (run directories, artifacts and checkpoints are exported to ONNX first) and
serve (:func:`swdet.serve.verify.verify` compares the graphs), so it lives in the command line.
"""

from __future__ import annotations

from pathlib import Path

import click

from swdet.cli.common import CONTEXT, write_json
from swdet.errors import SwdetError


def _as_onnx(model: str, workdir: Path, tag: str, imgsz: int | None) -> tuple[str, str | None]:
    """``(onnx path, torch source or None)``: an ONNX file as is, anything else exported first."""
    if Path(model).suffix.lower() == ".onnx":
        if not Path(model).is_file():
            raise SwdetError(f"{model}: no such file")
        return model, None
    from swdet.export import export_onnx, to_artifact

    artifact = to_artifact(model, workdir / f"{tag}_artifact") if Path(model).suffix == ".pt" else Path(model)
    out = workdir / f"{tag}.onnx"
    export_onnx(artifact, out, imgsz=imgsz)
    return str(out), str(artifact)


@click.command("verify", context_settings=CONTEXT)
@click.argument("baseline", type=click.Path())
@click.argument("candidate", type=click.Path())
@click.option("--ann", type=click.Path(), help="COCO annotations: also check each runtime's mAP against its source.")
@click.option("--images", type=click.Path(), help="Images for --ann.")
@click.option("--rounds", default=20, show_default=True, type=click.IntRange(min=3),
              help="Interleaved latency rounds (A/B alternating).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--tolerance", default=0.002, show_default=True, type=float, help="Allowed |ΔAP| (AP as a fraction).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the report as JSON here.")
def verify_cmd(baseline, candidate, ann, images, rounds, batch_size, tolerance, device, json_out):
    """Does CANDIDATE cost exactly what BASELINE costs at test time?

    Compares the exported graphs (op histogram, initializer names and shapes, input size,
    post-processing settings), the parameter count and the latency (one interleaved A/B run,
    ratio with its noise band); with --ann/--images also each runtime's mAP against the PyTorch
    model it came from. Run directories, artifacts and checkpoints are exported to ONNX first.
    Exit 0 only when the cost is the same and every accuracy check holds.

    \b
    Examples:
      swdet verify runs/focal runs/swn
      swdet verify runs/focal runs/pisa --ann data/synth/annotations/instances_val.json --images data/synth/val
    """
    import tempfile

    from swdet.serve.verify import format_verify_report, verify

    if bool(ann) != bool(images):
        raise SwdetError("--ann and --images go together")
    with tempfile.TemporaryDirectory(prefix="swdet-verify-") as tmp:
        a, a_src = _as_onnx(baseline, Path(tmp), "baseline", None)
        b, b_src = _as_onnx(candidate, Path(tmp), "candidate", None)
        report = verify(a, b, baseline_source=a_src, candidate_source=b_src, ann=ann, images=images,
                        batch_size=batch_size, rounds=rounds, tolerance=tolerance, device=device)
    # the report names what the user passed, not the temporary ONNX files exported from it
    report.baseline, report.candidate = str(baseline), str(candidate)
    click.echo(format_verify_report(report))
    write_json(json_out, report.to_dict())
    if not report.ok:
        raise click.exceptions.Exit(1)
