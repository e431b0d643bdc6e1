"""Warnings reach the terminal through one reporter (``swdet.report``): one ``warning:`` line each,
shown once however often they recur (also from DataLoader workers), never Python's raw
``file:line: DataWarning:`` format."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings

from conftest import TINY_TRAIN


def test_train_over_bad_boxes_and_a_truncated_image(synth_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(synth_data, data)
    ann = data / "annotations" / "instances_train.json"
    coco = json.loads(ann.read_text())
    first = coco["annotations"][0]
    coco["annotations"] += [{**first, "id": 10_000 + k, "bbox": [5, 5, 0, 4]} for k in range(3)]  # zero-size
    ann.write_text(json.dumps(coco))
    victim = data / "train" / coco["images"][0]["file_name"]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # truncated
    args = [a for a in TINY_TRAIN if a != "--quiet"]
    args[args.index("--workers") + 1] = "2"  # the truncated image is met in worker processes
    res = subprocess.run([shutil.which("swdet"), "train", "--data", str(data), "--iters", "14", "--out",
                          str(tmp_path / "r"), "--no-eval", *args], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    err = res.stderr
    assert "DataWarning" not in err and "warnings.warn" not in err and "UserWarning" not in err
    lines = [ln.strip() for ln in err.replace("\r", "\n").splitlines() if "warning" in ln.lower()]
    shown = [ln for ln in lines if ln.startswith("warning:")]
    assert any("zero-size boxes" in ln and "skipped 3 annotations" in ln for ln in shown), err[-3000:]
    truncated = [ln for ln in shown if victim.name in ln]
    assert len(truncated) == 1, err[-3000:]  # 14 iterations of 4 cover the image more than once: shown once
    assert len(shown) == len(set(shown))
    assert all(ln.startswith(("warning:", "warnings:")) for ln in lines), lines


def test_reporter_deduplicates_and_counts(capsys):
    from swdet.report import installed

    with installed() as rep:
        for _ in range(3):
            warnings.warn("a.png: truncated; skipped", UserWarning)
        warnings.warn("something else", RuntimeWarning)
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: a.png: truncated; skipped", "warning: RuntimeWarning: something else"]
    assert rep.summary() == "warnings: 2 shown above, 2 repeats not shown"
