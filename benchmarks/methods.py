"""Every method on the embedded default, over several seeds: accuracy with paired intervals,
diagnostics and training step time.

Accuracy (phase 1): each (method, seed) trains for the same iterations on the same data and is
evaluated on the val split, at the model's own score threshold and at 0.001 (so a ranking is
not decided by the threshold cut). Each run's numbers are kept in one JSON record,
``benchmarks/results/methods/<arch>[-<tag>]/<method>__seed<k>.json``: a later session adds
seeds or methods and reuses every record whose settings match (iterations, overrides, config).
Runs go in parallel (``--jobs``, each process single-threaded: on a 2-core CPU two such
trainings finish ~1.7x sooner in total than one on two threads).

Table (phase 3): per method, mean ± sample std over its seeds of AP, AP50, AP75 and AP at score
threshold 0.001, and the paired difference to the baseline (``focal`` for RetinaNet, ``random``
for Faster R-CNN) over the seeds both have: mean and 95 % t-interval (``t_{0.975, n-1}·s/√n``).
An interval that excludes 0 is a measured difference; 3 seeds give a wide interval. The column
``AP / <baseline>`` is the mean of the per-seed quotients with the same t-interval.

Step time (phase 2, skipped with ``--accuracy-only``): the trainers of all methods step on the
*same* batches, round-robin, so machine noise hits them equally; each is a median, its ratio to
the baseline's is reported. Host-side anchor assignment runs in the loader workers during
training, so it is excluded here too.

Diagnostics: mean score of positives with IoU >= 0.9 vs 0.5-0.6 after regression (IoU-balanced
Fig. 2, PISA Fig. 9), score-IoU correlation over training positives and before NMS on val (noisy
anchors Table 7), SWN's mean weights (SWN Fig. A.2) and the cls/reg loss ratio at the end.

    python benchmarks/methods.py --data data/synth --seeds 0,1,2 --jobs 2
    python benchmarks/methods.py --data data/synth --arch faster_rcnn --iters 1000 --seeds 0,1,2 --jobs 2

A method is a ``--method`` spec (``pisa,swn``), optionally with config overrides after ``@``
(``sampling_free@methods.sampling_free.bias_init=false``, several joined by ``+``). Its config is
``configs/<model>_<last method>.yaml`` when that file exists (the shipped, tuned settings), else
the baseline's ``configs/<model>.yaml``, with ``loss.method`` set to the spec.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from _results import result_paths, write_results

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from swdet.config import load_config  # noqa: E402
from swdet.table import format_table  # noqa: E402

RETINA_METHODS = ["focal", "bce", "ghm", "sampling_free", "pisa", "iou_balanced", "noisy_anchors", "swn", "pisa,swn"]
RCNN_METHODS = ["random", "ohem", "pisa", "swn", "sampling_free", "noisy_anchors"]
MODELS = {"retinanet": "retinanet_tiny", "faster_rcnn": "faster_rcnn_tiny"}
# two-sided 95 % quantiles of Student's t, df = 1..30 (then the normal's 1.96)
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def split_spec(spec: str) -> tuple[str, list[str]]:
    """``"pisa,swn@a=1+b=2"`` -> ``("pisa,swn", ["a=1", "b=2"])``."""
    method, _, rest = spec.partition("@")
    return method, [s for s in rest.split("+") if s]


def slug(spec: str) -> str:
    return spec.replace(",", "+").replace("@", "__").replace("=", "-").replace("/", "_")


def config_file(arch: str, method: str) -> Path:
    model = MODELS[arch]
    own = ROOT / "configs" / f"{model}_{method.split(',')[-1]}.yaml"
    return own if own.is_file() else ROOT / "configs" / f"{model}.yaml"


def config(arch: str, spec: str, data: Path, iters: int | None, extra: list[str], seed: int | None = None):
    method, overrides = split_spec(spec)
    sets = [f"loss.method={method}", *overrides, *extra]
    if not any(s.startswith(("data.root=", "data.train_ann=")) for s in extra):
        sets.insert(0, f"data.root={data}")
    if iters:
        sets.append(f"train.iters={iters}")
    if seed is not None:
        sets.append(f"train.seed={seed}")
    return load_config(config_file(arch, method), sets)


def t975(df: int) -> float:
    return T975[df - 1] if 1 <= df <= len(T975) else 1.96


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def paired(a: dict[int, float], b: dict[int, float], ratio: bool = False) -> dict:
    """Paired difference a - b (``ratio``: quotient a / b, over the seeds where b > 0) over the
    seeds both have: mean, 95 % t-interval, n. The quotient's interval is the t-interval of the
    per-seed ratios ``a_s / b_s``, so "at least 0.8x the baseline" is a statement its lower end can make."""
    seeds = sorted(s for s in set(a) & set(b) if not ratio or b[s] > 0)
    d = [a[s] / b[s] if ratio else a[s] - b[s] for s in seeds]
    if len(d) < 2:
        return {"n": len(d), "mean": d[0] if d else None, "lo": None, "hi": None}
    m, sd = statistics.fmean(d), statistics.stdev(d)
    half = t975(len(d) - 1) * sd / math.sqrt(len(d))
    return {"n": len(d), "mean": m, "lo": m - half, "hi": m + half}


# ---------------------------------------------------------------------------------------------
# Phase 1: one (method, seed) run -> one record


def record_path(args, spec: str, seed: int) -> Path:
    return args.records / f"{slug(spec)}__seed{seed}.json"


# Config entries added after records were written, with their values then (frozen here: a later
# change of the default must change the hash): at those values they leave the hash as it was (the
# recipe is the same), so the committed records stay reusable; at any other value they are hashed
# like every other entry.
ADDED_LATER = {("methods", "ghm_r"): {"mu": 0.02, "bins": 10, "momentum": 0.7}}


def settings(args, spec: str) -> dict:
    """What a record must match to be reused: iterations, overrides, the config file and a hash
    of the resolved config (so a changed recipe is rerun, not mixed in). Left out of the hash:
    the seed (a record's own), the data location and loader workers, the time-based checkpoint
    cadence, and the :data:`ADDED_LATER` entries at their values then."""
    cfg = config(args.arch, spec, args.data, args.iters, args.sets).to_dict()
    for (section, key), value in ADDED_LATER.items():
        if cfg[section].get(key) == value:
            cfg[section].pop(key)
    cfg["train"].pop("seed", None)
    cfg["train"].pop("ckpt_minutes", None)  # checkpoint cadence does not change the trained weights
    cfg["data"] = {k: v for k, v in cfg["data"].items() if k not in ("root", "workers")}
    digest = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    return {"iters": args.iters, "sets": list(args.sets),
            "config": str(config_file(args.arch, split_spec(spec)[0]).relative_to(ROOT)), "config_hash": digest}


def have_record(args, spec: str, seed: int) -> bool:
    p = record_path(args, spec, seed)
    if not p.is_file():
        return False
    rec = json.loads(p.read_text())
    return all(rec.get(k) == v for k, v in settings(args, spec).items())


def log_tail_means(log: Path, keys=("cls", "reg", "swn/w_cls_pos", "swn/w_cls_neg", "swn/w_reg")) -> dict:
    if not log.is_file():
        return {}
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    tail = rows[-max(1, len(rows) // 10):]
    out = {}
    for k in keys:
        vals = [r[k] for r in tail if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


def run_one(args, spec: str, seed: int) -> dict:
    """Train and evaluate one (method, seed); write and return its record."""
    from swdet.inference import evaluate_runtime
    from swdet.serve.runtimes import load_runtime
    from swdet.train.engine import train

    cfg = config(args.arch, spec, args.data, args.iters, args.sets, seed)
    cfg.name = spec
    run = args.runs / slug(spec) / f"seed{seed}"
    t0 = time.perf_counter()
    summary = train(cfg, run, progress=not args.quiet, evaluate=True)
    wall = time.perf_counter() - t0
    metrics = json.loads((run / "metrics.json").read_text())
    # AP with the score threshold at 0.001: the ranking without the threshold's cut
    rt = load_runtime(run, device="cpu", score_threshold=0.001)
    low = evaluate_runtime(rt, dataset=_val_dataset(cfg, rt.imgsz), batch_size=8, progress=False).result.stats
    rec = {
        "arch": args.arch, "method": spec, "seed": seed, **settings(args, spec),
        **{k: metrics.get(k) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
        "at_0.001": {k: low.get(k) for k in ("AP", "AP50", "AP75")},
        "score_threshold": metrics.get("threshold", {}).get("theta"),
        "diagnostics": metrics.get("diagnostics", {}),
        "loss_tail": log_tail_means(run / "log.jsonl"),
        "train_time_s": summary.get("train_time_s"), "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    path = record_path(args, spec, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rec, indent=2))
    return rec


def _val_dataset(cfg, imgsz: int):
    from swdet.data.coco import CocoDetection
    from swdet.data.splits import find_split

    ann, images = find_split(cfg.data, "val")
    return CocoDetection(ann, images, imgsz=imgsz, train=False)


def run_all(args, specs: list[str], seeds: list[int]) -> None:
    """Every missing (method, seed) record, ``--jobs`` single-threaded processes at a time."""
    # seed-major: every method gets seed 0 before any gets seed 1 (a cut-short run still ranks them)
    todo = [(s, k) for k in seeds for s in specs if not have_record(args, s, k)]
    if not todo:
        return
    if args.jobs <= 1:
        for spec, seed in todo:
            run_one(args, spec, seed)
        return
    base = [sys.executable, str(Path(__file__).resolve()), "--data", str(args.data), "--arch", args.arch,
            "--runs", str(args.runs), "--records", str(args.records), "--quiet"]
    base += ["--iters", str(args.iters)] if args.iters else []
    for s in args.sets:
        base += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    running: list[tuple[subprocess.Popen, str, int]] = []
    logs = args.runs / "_logs"
    logs.mkdir(parents=True, exist_ok=True)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    while todo or running:
        while todo and len(running) < args.jobs:
            spec, seed = todo.pop(0)
            name = f"{slug(spec)}__seed{seed}"
            slot = min(set(range(args.jobs)) - {r[2] for r in running})
            with open(logs / f"{name}.log", "w") as fh:
                proc = subprocess.Popen([*base, "--one", spec, "--seeds", str(seed)], env=env, stdout=fh,
                                        stderr=subprocess.STDOUT)
            if len(cpus) >= args.jobs:  # one core per job: single-threaded trainings do not share one
                os.sched_setaffinity(proc.pid, {cpus[slot]})
            running.append((proc, name, slot))
            print(f"started {name}", flush=True)
        time.sleep(5)
        for proc, name, slot in list(running):
            if proc.poll() is not None:
                running.remove((proc, name, slot))
                print(f"finished {name}: exit {proc.returncode}", flush=True)


# ---------------------------------------------------------------------------------------------
# Phase 2: step time, round-robin on the same batches


def time_steps(args, specs: list[str]) -> dict[str, float]:
    from swdet.data.loader import build_loader, iterate_batches
    from swdet.train.engine import Trainer

    trainers = {}
    for spec in specs:
        tr = Trainer(config(args.arch, spec, args.data, 10**6, [*args.sets, "data.workers=0"]),
                     args.runs / "_timing" / slug(spec), progress=False)
        tr.setup()
        tr.module.train()
        trainers[spec] = tr
    first = next(iter(trainers.values()))
    loader = build_loader(first.train_set, first.cfg.train.batch_size, train=True, workers=0, seed=1)
    stream = iter(iterate_batches(loader))
    batches = [next(stream)[1] for _ in range(args.timing_steps)]
    assigned = {m: [(im, tr.loss.assigner.assign(t)) for im, t in batches] for m, tr in trainers.items()}
    times: dict[str, list[float]] = {m: [] for m in specs}
    for r in range(args.timing_rounds):
        order = specs if r % 2 == 0 else specs[::-1]
        for m in order:
            tr = trainers[m]
            for i, (im, a) in enumerate(assigned[m]):
                t = time.perf_counter()
                tr.step(im, a, 1000 + i)  # past the warmup: full learning rate
                if tr.device.type == "cuda":
                    torch.cuda.synchronize()
                if r > 0 or i > 1:  # the first steps of the first round warm up
                    times[m].append(time.perf_counter() - t)
    return {m: statistics.median(v) * 1e3 for m, v in times.items()}


# ---------------------------------------------------------------------------------------------
# Phase 3: the table


def table_stem(out: Path, name: str, specs: list[str]) -> str:
    """``methods_<name>``, unless that table holds another method set (a diagnostic run must not
    replace the campaign's table): then ``methods_<name>__<hash of the specs>``."""
    stem = f"methods_{name}"
    prev = out / f"{stem}.json"
    if prev.is_file():
        held = [r.get("method") for r in json.loads(prev.read_text()).get("rows", [])]
        if held and held != specs:
            stem += "__" + hashlib.sha1(";".join(specs).encode()).hexdigest()[:8]
            print(f"notice: {prev.name} holds another method set; this table goes to {stem}.md "
                  "(--table to name it)", file=sys.stderr)
    return stem


def load_records(args, spec: str, seeds: list[int] | None = None) -> list[dict]:
    """The records of ``spec`` under this recipe, of ``seeds`` only (None: every seed recorded):
    a table titled "seeds 3,4,5" holds no other seed, even where a method has more."""
    out = []
    for p in sorted(args.records.glob(f"{glob.escape(slug(spec))}__seed*.json")):  # specs may hold [ ]
        rec = json.loads(p.read_text())
        if all(rec.get(k) == v for k, v in settings(args, spec).items()) and (seeds is None or rec.get("seed") in seeds):
            out.append(rec)
    return out


def _pm(m: float | None, sd: float | None, scale: float = 100.0) -> str | None:
    if m is None:
        return None
    return f"{m * scale:.1f}" + (f" ± {sd * scale:.1f}" if sd is not None else "")


def _delta(d: dict, scale: float = 100.0) -> str | None:
    if d["mean"] is None:
        return None
    if d["lo"] is None:
        return f"{d['mean'] * scale:+.1f}"
    mark = " *" if d["lo"] > 0 or d["hi"] < 0 else ""
    return f"{d['mean'] * scale:+.1f} [{d['lo'] * scale:+.1f}, {d['hi'] * scale:+.1f}]{mark}"


def _ratio(d: dict) -> str | None:
    if d["mean"] is None:
        return None
    return f"{d['mean']:.2f}x" + ("" if d["lo"] is None else f" [{d['lo']:.2f}, {d['hi']:.2f}]")


def summarize(specs: list[str], base: str, recs: dict[str, list[dict]], step: dict[str, float]) -> list[dict]:
    def by_seed(spec, key, low=False):
        return {r["seed"]: (r["at_0.001"] if low else r)[key] for r in recs[spec]
                if isinstance((r["at_0.001"] if low else r).get(key), (int, float))}

    rows = []
    for spec in specs:
        rs = recs[spec]
        row: dict = {"method": spec, "seeds": len(rs)}
        for key, label in (("AP", "AP"), ("AP50", "AP50"), ("AP75", "AP75")):
            row[label] = _pm(*mean_sd(list(by_seed(spec, key).values())))
        row["AP@.001"] = _pm(*mean_sd(list(by_seed(spec, "AP", low=True).values())))
        row["ΔAP vs " + base] = _delta(paired(by_seed(spec, "AP"), by_seed(base, "AP"))) if spec != base else None
        row["ΔAP@.001"] = (_delta(paired(by_seed(spec, "AP", True), by_seed(base, "AP", True)))
                           if spec != base else None)
        row["AP / " + base] = _ratio(paired(by_seed(spec, "AP"), by_seed(base, "AP"), ratio=True)) if spec != base else None
        diag = [r["diagnostics"] for r in rs]

        def dmean(key):
            vals = [d[key] for d in diag if isinstance(d.get(key), (int, float))]
            return statistics.fmean(vals) if vals else None

        hi, lo = dmean("diag/score_iou_0.9-1.0"), dmean("diag/score_iou_0.5-0.6")
        row["score hiIoU/loIoU"] = round(hi / lo, 2) if hi and lo else None
        row["corr train"] = dmean("diag/score_iou_corr")
        row["corr preNMS"] = dmean("eval/prenms_score_iou_corr")
        tails = [r.get("loss_tail", {}) for r in rs]
        sw = [t for t in tails if "swn/w_reg" in t]
        row["SWN w cls(pos,neg), reg"] = (
            ", ".join(f"{statistics.fmean(t[k] for t in sw):.2f}" for k in ("swn/w_cls_pos", "swn/w_cls_neg", "swn/w_reg"))
            if sw else None)
        row["step ms"] = round(step[spec], 1) if spec in step else None
        row["step / " + base] = round(step[spec] / step[base], 3) if spec in step and base in step else None
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--arch", choices=sorted(MODELS), default="retinanet")
    ap.add_argument("--methods", help="';'-separated method specs (default: every method of the detector)")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    ap.add_argument("--iters", type=int, default=0, help="training iterations (0: the config's recipe)")
    ap.add_argument("--jobs", type=int, default=1, help="trainings in parallel, one thread each")
    ap.add_argument("--timing-steps", type=int, default=6)
    ap.add_argument("--timing-rounds", type=int, default=4)
    ap.add_argument("--accuracy-only", action="store_true", help="no step timing")
    ap.add_argument("--timing-only", action="store_true", help="no training: step timing and the table")
    ap.add_argument("--table-only", action="store_true",
                    help="no training, no timing: the table from the records (step times from the last timing run)")
    ap.add_argument("--tag", default="", help="a name for this set of records (e.g. a tuning split)")
    ap.add_argument("--runs", type=Path, default=None, help="run directories (default runs/methods/<arch>[-tag])")
    ap.add_argument("--records", type=Path, default=None)
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--table", default=None,
                    help="table file stem under --out (default methods_<arch>[-tag]; a run of another "
                         "method set than the table there gets methods_<arch>[-tag]__<hash> instead)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    name = args.arch + (f"-{args.tag}" if args.tag else "")
    args.runs = args.runs or ROOT / "runs" / "methods" / name
    args.records = args.records or ROOT / "benchmarks" / "results" / "methods" / name
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.one:  # a worker of run_all
        run_one(args, args.one, seeds[0])
        return
    specs = args.methods.split(";") if args.methods else (RETINA_METHODS if args.arch == "retinanet"
                                                          else RCNN_METHODS)
    base = specs[0]
    if not (args.timing_only or args.table_only):
        run_all(args, specs, seeds)
    step = {} if (args.accuracy_only or args.table_only) else time_steps(args, specs)
    stem = args.out / (args.table or table_stem(args.out, name, specs))
    step_from = "this run" if step else None
    prev_json = result_paths(stem)[0]
    if not step and prev_json.is_file():  # no timing now: keep the last timing run's
        prev = json.loads(prev_json.read_text())
        step = {k: v for k, v in prev.get("step_ms", {}).items() if k in specs}
        step_from = prev.get("step_from") if prev.get("step_from") not in (None, "this run") else prev.get("command")
    recs = {s: load_records(args, s, seeds) for s in specs}
    rows = summarize(specs, base, recs, step)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    iters = args.iters or config(args.arch, base, args.data, 0, args.sets).train.iters
    title = (f"{MODELS[args.arch]}, {iters} iterations, seeds {args.seeds}, {device}; AP in points (x100), "
             f"mean ± std over seeds; Δ: paired difference to {base} with its 95 % t-interval (* excludes 0)"
             + (f"; overrides: {' '.join(args.sets)}" if args.sets else ""))
    table = format_table(rows, title=title)
    print(table)
    write_results(
        stem,
        {"rows": rows, "iters": iters, "seeds": seeds, "device": device, "sets": args.sets,
         "command": "python " + " ".join(sys.argv), "torch": torch.__version__, "step_ms": step,
         "step_from": step_from,
         "records": str(args.records.relative_to(ROOT)) if args.records.is_relative_to(ROOT) else str(args.records)},
        format_table(rows, title=title, markdown=True) + "\n\n`python " + " ".join(sys.argv) + "`\n"
        + (f"\nStep times from: `{step_from}`\n" if step and step_from != "this run" else ""), quiet=True)


if __name__ == "__main__":
    main()
