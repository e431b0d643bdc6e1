"""Wall time of ``swdet pipeline``, two variants in interleaved rounds: the first-run goal.

Each round runs the baseline command, then the candidate command (each into its own fresh output
folder, so both synthesize their data and train from scratch), and reads each run's
``pipeline.json`` (``time_s``, ``stage_times_s``, the AP of each runtime). The table shows every
run and the speedup ``baseline time / candidate time`` per round, then the median and [min, max]
over the rounds. Nothing else should run on the machine meanwhile.

The two commands are shell strings with ``{out}`` for the output folder. The defaults compare
this checkout's pipeline with its defaults against the same code with the settings the pipeline
had when the goal was set (fp32, 2 loader workers, a 300-iteration candidate). To time an older
checkout exactly, install it into its own environment and pass its ``swdet``:

    python benchmarks/pipeline_time.py --rounds 2 --work /tmp/pipeline_time \\
        --baseline "/path/to/old-venv/bin/swdet pipeline --quiet --amp none --out {out}"

``--collect`` reads runs already in ``--work`` (``baseline_<r>`` and ``candidate_<r>``, made by
the same commands) instead of running them. Results: ``benchmarks/results/pipeline_time.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from _results import write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swdet.table import format_table  # noqa: E402

BASELINE = "swdet pipeline --quiet --amp none --workers 2 --candidate-iters 300 --out {out}"
CANDIDATE = "swdet pipeline --quiet --out {out}"


def run_one(cmd: str, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(shlex.split(cmd.format(out=out)), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"{cmd.format(out=out)}: exit {proc.returncode}: {tail[0]}")
    return read(out)  # its pipeline.json: time_s is the pipeline's own wall time


def read(out: Path) -> dict:
    path = out / "pipeline.json"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (run the pipeline first, or drop --collect)")
    return json.loads(path.read_text())


def row(which: str, r: int, s: dict) -> dict:
    stages = s.get("stage_times_s", {})
    ap = {x["runtime"]: x["AP"] for x in s["stages"]["runtimes"]}
    train = sum(v for k, v in stages.items() if k.startswith("train"))
    return {"variant": which, "round": r, "time s": s["time_s"], "train stages s": round(train, 1),
            "other stages s": round(s["time_s"] - train, 1), "train_amp": s.get("train_amp", "-"),
            "loader workers": s.get("train_workers", "-"),
            "candidate iters": s["stages"]["train_candidate"]["iters"],
            "AP torch": round(ap.get("torch", float("nan")), 4),
            "AP int8": round(ap.get("onnxruntime-int8", float("nan")), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=BASELINE, help="shell command with {out} (default: %(default)s)")
    ap.add_argument("--candidate", default=CANDIDATE, help="shell command with {out} (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/swdet_pipeline_time"))
    ap.add_argument("--collect", action="store_true", help="read existing runs in --work instead of running")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "pipeline_time")
    args = ap.parse_args()

    runs: list[tuple[str, int, dict]] = []
    for r in range(1, args.rounds + 1):
        for which, cmd in (("baseline", args.baseline), ("candidate", args.candidate)):
            out = args.work / f"{which}_{r}"
            s = read(out) if args.collect else run_one(cmd, out)
            runs.append((which, r, s))
            print(f"round {r} {which}: {s['time_s']} s", file=sys.stderr)
    rows = [row(w, r, s) for w, r, s in runs]
    times = {(w, r): s["time_s"] for w, r, s in runs}
    ratios = [times[("baseline", r)] / times[("candidate", r)] for r in range(1, args.rounds + 1)]
    base = [times[("baseline", r)] for r in range(1, args.rounds + 1)]
    cand = [times[("candidate", r)] for r in range(1, args.rounds + 1)]
    title = (f"swdet pipeline wall time, {args.rounds} interleaved rounds\n"
             f"baseline: {args.baseline}\ncandidate: {args.candidate}")
    text = format_table(rows, title=title)
    text += (f"\n\nspeedup (baseline / candidate, per round): median {statistics.median(ratios):.2f}x "
             f"[{min(ratios):.2f}, {max(ratios):.2f}]; baseline median {statistics.median(base):.1f} s, "
             f"candidate median {statistics.median(cand):.1f} s")
    print(text)
    write_results(args.out, {"title": title, "rows": rows, "speedup_per_round": ratios,
                             "stage_times_s": {f"{w}_{r}": s.get("stage_times_s") for w, r, s in runs}},
                  text, fenced=True, indent=1)


if __name__ == "__main__":
    main()
