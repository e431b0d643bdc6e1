"""benchmark(): result layout, real-image folders, device synchronization around each timing."""

from __future__ import annotations

import numpy as np
import pytest
from test_serve_helpers import make_toy_onnx, toy_expected, write_image

from swdet.errors import SwdetError
from swdet.serve.bench import benchmark, summarize_ms, synthetic_images


class CountingToy:
    """A runtime that records the order of infer / synchronize calls."""

    name, precision, imgsz, max_batch = "toy", "fp32", 64, None
    class_names, category_ids = ["cat", "dog", "bird"], [1, 3, 7]

    def __init__(self):
        self.events: list[str] = []

    def infer(self, images):
        self.events.append(f"infer{len(images)}")
        return toy_expected(np.asarray(images))

    def synchronize(self):
        self.events.append("sync")

    def describe(self):
        return {"runtime": self.name, "device": "toy-device", "precision": self.precision, "source": "toy"}


def test_every_timed_inference_is_followed_by_synchronize():
    rt = CountingToy()
    res = benchmark(rt, batch_sizes=(1, 2), iters=3, warmup=2)
    assert rt.events == ["infer1", "sync"] * 5 + ["infer2", "sync"] * 5
    assert res["runtime"] == "toy" and res["device"] == "toy-device" and res["images"] == "synthetic"
    assert [r["batch_size"] for r in res["results"]] == [1, 2] and res["results"][0]["iters"] == 3


def test_benchmark_on_a_folder_of_real_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"{i}.jpg", 80 + 8 * i, 60, seed=i)
    (folder / "notes.txt").write_text("ignored")
    rt_path = make_toy_onnx(tmp_path / "toy.onnx", imgsz=64)
    res = benchmark(rt_path, batch_sizes=[4], iters=2, warmup=0, images=folder)
    assert res["images"] == str(folder) and res["skipped_images"] == []
    assert res["runtime"] == "onnxruntime" and res["precision"] == "fp32" and res["imgsz"] == 64
    r = res["results"][0]
    parts = sum(r[k]["mean"] for k in ("preprocess_ms", "inference_ms", "postprocess_ms"))
    assert parts == pytest.approx(r["latency_ms"]["mean"], rel=0.05, abs=0.05)  # the split adds up
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SwdetError, match="no images found"):
        benchmark(rt_path, batch_sizes=[1], iters=1, images=empty)


def test_bad_arguments():
    rt = CountingToy()
    with pytest.raises(SwdetError, match="--iters"):
        benchmark(rt, iters=0)
    with pytest.raises(SwdetError, match="must be positive"):
        benchmark(rt, batch_sizes=(0,))
    rt.max_batch = 2
    with pytest.raises(SwdetError, match=r"--batch-sizes 8: larger than the model's fixed batch \(max_batch = 2\)"):
        benchmark(rt, batch_sizes=(1, 8))


def test_helpers():
    s = summarize_ms([0.001, 0.002, 0.003, 0.004])
    assert s == {"mean": 2.5, "p50": 2.5, "p90": pytest.approx(3.7), "p99": pytest.approx(3.97)}
    imgs = synthetic_images(3)
    assert len(imgs) == 3 and all(b[:2] == b"\xff\xd8" for _, b in imgs)  # JPEG
