"""Runtimes: loading by suffix, ONNX Runtime == PyTorch on exported random-weights models, the
bad-model list (no metadata, truncated, batch beyond a fixed batch, baked threshold), TensorRT
sidecar checks, CUDA graphs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import COCO128, NO_COCO128
from test_serve_helpers import export_onnx, make_artifact, make_toy_onnx, toy_meta

from swdet.errors import MissingDependency, SwdetError
from swdet.serve.runtimes import load_runtime
from swdet.serve.runtimes.onnxruntime_runtime import OnnxRuntime
from swdet.serve.runtimes.torch_runtime import TorchRuntime

THR = 0.27  # random-weights scores span ~0.12-0.32: some images get fewer than max_det


def _has_tensorrt() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


requires_trt = pytest.mark.skipif(not _has_tensorrt(), reason="TensorRT is not installed")
requires_gpu = pytest.mark.skipif(not _has_cuda(), reason="no CUDA GPU")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_rt")
    art = make_artifact(root / "run")
    dyn = export_onnx(art, root / "dyn.onnx", score_threshold=THR)
    fixed = export_onnx(art, root / "fixed2.onnx", score_threshold=THR, batch=2)
    return {"root": root, "art": art, "dyn": dyn, "fixed": fixed}


def _images(n: int, seed: int = 0, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 3, size // 8, size // 8), dtype=np.uint8)
    return np.ascontiguousarray(base.repeat(8, axis=2).repeat(8, axis=3))  # blocky: real structure


def assert_same_detections(a: dict, b: dict, atol: float = 2e-3) -> None:
    np.testing.assert_array_equal(a["num_dets"], b["num_dets"])
    for i, n in enumerate(a["num_dets"].ravel()):
        np.testing.assert_array_equal(a["det_classes"][i, :n], b["det_classes"][i, :n])
        np.testing.assert_allclose(a["det_scores"][i, :n], b["det_scores"][i, :n], atol=1e-5)
        np.testing.assert_allclose(a["det_boxes"][i, :n], b["det_boxes"][i, :n], atol=atol)
        assert not b["det_scores"][i, n:].any() and not b["det_boxes"][i, n:].any()  # padding


# ----------------------------------------------------------------------------------------------
# loading


def test_load_runtime_picks_by_suffix(models, tmp_path):
    art = models["art"]
    for p in (art, art / "model.safetensors", art / "model.json"):
        rt = load_runtime(p, device="cpu")
        assert isinstance(rt, TorchRuntime) and rt.name == "torch"
    rt = load_runtime(models["dyn"])
    assert isinstance(rt, OnnxRuntime) and rt.name == "onnxruntime" and rt.max_batch is None
    assert rt.imgsz == 128 and rt.class_names == ["cat", "dog", "bird"] and rt.category_ids == [1, 3, 7]
    d = rt.describe()
    assert d["runtime"] == "onnxruntime" and d["device"] == "cpu" and d["precision"] == "fp32"
    with pytest.raises(SwdetError, match="unknown model file type .pt"):
        (tmp_path / "x.pt").write_bytes(b"0")
        load_runtime(tmp_path / "x.pt")
    with pytest.raises(SwdetError, match="no such file"):
        load_runtime(tmp_path / "missing.onnx")


def test_engine_suffix_goes_to_tensorrt(tmp_path):
    eng = tmp_path / "m.engine"
    eng.write_bytes(b"not really an engine")
    with pytest.raises(SwdetError, match="no sidecar m.engine.json next to it"):
        load_runtime(eng)
    (tmp_path / "m.engine.json").write_text(json.dumps({**toy_meta(64), "engine": {
        "tensorrt_version": "0.0.0", "gpu": "x", "compute_capability": "0.0"}}))
    if _has_tensorrt():
        with pytest.raises(SwdetError):  # version / GPU mismatch or no GPU: one line either way
            load_runtime(eng)
    else:
        with pytest.raises(MissingDependency, match=r'pip install "swdet\[tensorrt\]"'):
            load_runtime(eng)


# ----------------------------------------------------------------------------------------------
# ONNX Runtime == PyTorch


def test_onnxruntime_matches_torch_batch_1_and_3_dynamic(models):
    torch_rt = TorchRuntime(models["art"], device="cpu", score_threshold=THR)
    ort_rt = load_runtime(models["dyn"], score_threshold=THR)  # equal to the baked one: accepted
    for n, seed in ((1, 0), (3, 1)):  # one session, two batch sizes
        x = _images(n, seed)
        a, b = torch_rt.infer(x), ort_rt.infer(x)
        assert b["num_dets"].shape == (n, 1) and b["num_dets"].dtype == np.int32
        assert b["det_boxes"].shape == (n, 100, 4) and b["det_classes"].dtype == np.int32
        assert_same_detections(a, b)
    x = _images(3, 2)
    counts = ort_rt.infer(x)["num_dets"].ravel()
    assert (counts > 0).all() and (counts < 100).any(), "the threshold should leave some images below max_det"
    # float32 input and torch tensors give the same answer as uint8 numpy
    import torch

    np.testing.assert_array_equal(ort_rt.infer(x)["det_boxes"], ort_rt.infer(torch.from_numpy(x).float())["det_boxes"])


def test_fixed_batch_model_pads_smaller_batches_and_rejects_larger(models):
    fixed, dyn = load_runtime(models["fixed"]), load_runtime(models["dyn"])
    assert fixed.max_batch == 2 and fixed.describe()["fixed_batch"] == 2
    x = _images(2, 3)
    assert_same_detections(dyn.infer(x[:1]), fixed.infer(x[:1]))  # padded to 2, cut back to 1
    assert_same_detections(dyn.infer(x), fixed.infer(x))
    with pytest.raises(SwdetError, match=r"batch 3 is larger than the model's fixed batch \(max_batch = 2\)"):
        fixed.infer(_images(3))


# ----------------------------------------------------------------------------------------------
# bad model files


def test_onnx_without_swdet_metadata(tmp_path):
    p = make_toy_onnx(tmp_path / "plain.onnx", meta=False)
    with pytest.raises(SwdetError) as e:
        load_runtime(p)
    assert str(e.value) == f"{p}: not an swdet model (no swdet metadata); export it with swdet export"


def test_truncated_and_garbage_onnx(models, tmp_path):
    data = models["dyn"].read_bytes()
    for name, blob in (("trunc.onnx", data[: len(data) // 3]), ("junk.onnx", b"GIF89a not a model"),
                       ("empty.onnx", b"")):
        p = tmp_path / name
        p.write_bytes(blob)
        with pytest.raises(SwdetError) as e:
            load_runtime(p)
        msg = str(e.value)
        assert msg.startswith(str(p)) and "\n" not in msg
        assert "not a valid ONNX model" in msg or "empty file" in msg


def test_score_threshold_other_than_baked_is_refused(models):
    with pytest.raises(SwdetError, match=r"score threshold 0.27 is baked .* re-export with --score-threshold 0.3"):
        load_runtime(models["dyn"], score_threshold=0.3)


def test_wrong_input_shape_is_one_line(models):
    rt = load_runtime(models["dyn"])
    with pytest.raises(SwdetError, match=r"expected images of shape \[B, 3, 128, 128\], got \[1, 3, 64, 64\]"):
        rt.infer(np.zeros((1, 3, 64, 64), np.uint8))


def test_cuda_device_without_gpu_provider(models):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed")
    with pytest.raises(MissingDependency, match=r'onnxruntime-gpu is not installed .* pip install "swdet\[gpu\]"'):
        OnnxRuntime(models["dyn"], device="cuda")
    with pytest.raises(SwdetError, match="not available in this onnxruntime"):
        OnnxRuntime(models["dyn"], providers=["TensorrtExecutionProvider"])


def test_intra_op_threads_option(models):
    rt = OnnxRuntime(models["dyn"], intra_op_threads=1)
    x = _images(1, 5)
    assert_same_detections(load_runtime(models["dyn"]).infer(x), rt.infer(x))


# ----------------------------------------------------------------------------------------------
# TensorRT (sidecar logic runs everywhere; engines only with TensorRT + GPU)


def test_tensorrt_sidecar_checks():
    """The runtime's sidecar rules are core's (swdet.deploy.engine_meta), the ones swdet export writes for."""
    from swdet.deploy.engine_meta import check_engine_compat, split_sidecar

    def check(info, trt, gpu, cc):
        check_engine_compat(info, "e.json", tensorrt_version=trt, gpu=gpu, compute_capability=cc)

    meta = toy_meta(64)
    engine = {"tensorrt_version": "10.3.0", "gpu": "NVIDIA H100", "compute_capability": "9.0", "precision": "fp16",
              "input": {"name": "images", "min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]}}
    m, info = split_sidecar({**meta, "engine": engine}, "e.json")  # the layout swdet export writes
    assert m["model"]["imgsz"] == 64 and "engine" not in m and info["compute_capability"] == "9.0"
    check(info, "10.3.0", "NVIDIA H100", "9.0")
    with pytest.raises(SwdetError, match=r"built with TensorRT 10.3.0, this machine has TensorRT 10.4.0; rebuild"):
        check(info, "10.4.0", "NVIDIA H100", "9.0")
    with pytest.raises(SwdetError, match=r"compute capability 9.0\), this is NVIDIA A100 \(8.0\)"):
        check(info, "10.3.0", "NVIDIA A100", "8.0")
    with pytest.warns(UserWarning, match="same compute capability"):
        check(info, "10.3.0", "NVIDIA H100 NVL", "9.0")
    _, flat = split_sidecar({**meta, "tensorrt_version": "10.3.0", "gpu": "A"}, "e.json")
    with pytest.raises(SwdetError, match=r"built for GPU 'A', this is 'B'"):  # no capability recorded: names
        check(flat, "10.3.0", "B", "9.0")
    with pytest.raises(SwdetError, match="no swdet model description"):
        split_sidecar({"engine": engine}, "e.json")
    with pytest.raises(SwdetError, match="lacks 'tensorrt_version'"):
        split_sidecar(dict(meta), "e.json")


@pytest.mark.tensorrt
@requires_gpu
@requires_trt
def test_tensorrt_engine_matches_onnxruntime(models, tmp_path):
    from swdet.export.tensorrt_build import build_engine

    engine = tmp_path / "m.engine"
    build_engine(models["dyn"], engine, max_batch=4, progress=False)
    rt = load_runtime(engine)
    assert rt.name == "tensorrt" and rt.max_batch == 4
    x = _images(3, 7)
    assert_same_detections(load_runtime(models["dyn"]).infer(x), rt.infer(x), atol=0.05)
    with pytest.raises(SwdetError, match=r"max_batch = 4"):
        rt.infer(_images(5))


# ----------------------------------------------------------------------------------------------
# CUDA graphs


def test_cuda_graphs_need_cuda(models):
    with pytest.raises(SwdetError, match="--cuda-graphs: needs a CUDA device"):
        TorchRuntime(models["art"], device="cpu", cuda_graphs=True)


@pytest.mark.gpu
@requires_gpu
def test_cuda_graphs_match_eager(models):
    eager = TorchRuntime(models["art"], device="cuda")
    graphed = TorchRuntime(models["art"], device="cuda", cuda_graphs=True)
    assert graphed.name == "torch-cudagraphs"
    for n, seed in ((1, 0), (3, 1), (1, 2)):  # capture per batch size, replay on reuse
        x = _images(n, seed)
        assert_same_detections(eager.infer(x), graphed.infer(x), atol=1e-3)
    assert len(graphed._graphed.graphs) == 2


def test_onnx_file_can_be_copied_and_loaded_elsewhere(models, tmp_path):
    """Metadata travels inside the .onnx: no model.json needed next to it."""
    p = tmp_path / "alone" / "m.onnx"
    p.parent.mkdir()
    shutil.copy(models["dyn"], p)
    rt = load_runtime(p)
    assert rt.category_ids == [1, 3, 7] and rt.meta["export"]["score_threshold"] == pytest.approx(THR)


def test_serve_never_imports_train_or_export(tmp_path):
    """A deployed model needs neither swdet.train nor swdet.export (docs/design.md, Layout)."""
    from conftest import assert_layer_boundary

    toy = make_toy_onnx(tmp_path / "toy.onnx")
    code = f"""
import sys, numpy as np
import swdet.serve, swdet.serve.bench, swdet.serve.batcher
import swdet.serve.verify, swdet.serve.runtimes.tensorrt_runtime, swdet.serve.runtimes.torch_runtime
from swdet.serve.runtimes import load_runtime
from swdet.serve.verify import verify
rt = load_runtime({str(toy)!r})
rt.infer(np.zeros((1, 3, 64, 64), np.uint8))
verify({str(toy)!r}, {str(toy)!r}, rounds=1, iters=1, warmup=0, batch_size=1)
bad = sorted(m for m in sys.modules if m.startswith(("swdet.train", "swdet.export")))
print("BAD", bad)
"""
    assert_layer_boundary(code, "swdet.serve", ("swdet.train", "swdet.export"))


COCO128_VAL = COCO128 / "val2017"


def _match_fraction(ref: dict, out: dict, iou_min: float = 0.95, score_tol: float = 0.01) -> tuple[int, int]:
    """``(matched, total)``: torch detections with an ONNX Runtime detection of the same class,
    box IoU >= ``iou_min`` and score within ``score_tol`` (greedy, one to one, per image)."""
    import torch
    from torchvision.ops import box_iou

    matched = total = 0
    for b, n in enumerate(ref["num_dets"].ravel()):
        m = int(out["num_dets"].ravel()[b])
        total += int(n)
        if n == 0 or m == 0:
            continue
        iou = box_iou(torch.from_numpy(ref["det_boxes"][b, :n]), torch.from_numpy(out["det_boxes"][b, :m])).numpy()
        ok = ((ref["det_classes"][b, :n, None] == out["det_classes"][b, None, :m])
              & (np.abs(ref["det_scores"][b, :n, None] - out["det_scores"][b, None, :m]) <= score_tol)
              & (iou >= iou_min))
        used = np.zeros(m, dtype=bool)
        for i in range(int(n)):
            cand = np.flatnonzero(ok[i] & ~used)
            if cand.size:
                used[cand[np.argmax(iou[i, cand])]] = True
                matched += 1
    return matched, total


@pytest.mark.skipif(not COCO128_VAL.is_dir(), reason=NO_COCO128)
def test_onnxruntime_matches_torch_on_real_photos(tmp_path):
    """docs/design.md, deploy acceptance: on the coco128 val photos >= 99 % of the PyTorch detections
    are matched by ONNX Runtime (same class, IoU >= 0.95, score within 0.01), through the host
    decode + letterbox every runtime shares, with the dynamic batch at 8 and a ragged last batch."""
    from swdet.data.image import load_image
    from swdet.inference import letterbox_batch

    art = make_artifact(tmp_path / "run", imgsz=320)
    onnx_path = export_onnx(art, tmp_path / "m.onnx", score_threshold=THR)
    rt_torch, rt_ort = load_runtime(art, device="cpu"), load_runtime(onnx_path)
    files = sorted(COCO128_VAL.glob("*.jpg"))[:60]  # 7 batches of 8 and one of 4
    matched = total = 0
    for i in range(0, len(files), 8):
        x, _ = letterbox_batch([load_image(f) for f in files[i:i + 8]], rt_torch.imgsz)
        m, t = _match_fraction(rt_torch.infer(x), rt_ort.infer(x))
        matched, total = matched + m, total + t
    assert total > 500  # real detections on every batch, not an empty comparison
    assert matched / total >= 0.99, f"{matched}/{total} torch detections matched by ONNX Runtime"
