"""ONNX Runtime: runs the exported graph (post-processing baked in) on CPU or, with the optional
``onnxruntime-gpu`` package, on CUDA / TensorRT execution providers.

The model file must follow the ONNX contract of docs/design.md (section 4): input ``images`` float32
``[B, 3, S, S]`` (RGB 0-255), outputs ``num_dets``, ``det_boxes``, ``det_scores``,
``det_classes``, and ``model.json`` stored as JSON under the key ``swdet`` of the graph's
``metadata_props`` (with an ``export`` sub-dict: score_threshold, nms, precision, batch, opset,
imgsz; read by :func:`swdet.deploy.onnx_meta.parse_metadata`). Everything that can be wrong with the file is a one-line :class:`SwdetError`.

A model exported with a fixed batch ``N`` accepts any batch ``B <= N``: the input is padded to
``N`` with zero images and the outputs cut back to ``B`` (padding rows cost compute, which is why
dynamic batch is the default at export). ``B > N`` is an error that names ``max_batch``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from swdet.errors import MissingDependency, SwdetError
from swdet.deploy.onnx_meta import METADATA_KEY, check_score_threshold, parse_metadata
from swdet.serve.runtimes.base import OUTPUT_NAMES, Runtime

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(double)": np.float64}
_OUT_DTYPES = {"num_dets": np.int32, "det_boxes": np.float32, "det_scores": np.float32, "det_classes": np.int32}


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*", "", text)
    return text[:limit] + ("..." if len(text) > limit else "")


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError:  # a hard dependency, but give the one-line message anyway
        raise MissingDependency("onnxruntime", "onnxruntime", "running .onnx models") from None
    return ort


def _parse_device(device: str) -> tuple[str, int]:
    d = str(device or "auto").lower()
    if d in ("auto", "cpu", "cuda"):
        return d, 0
    m = re.fullmatch(r"cuda:(\d+)", d)
    if m:
        return "cuda", int(m.group(1))
    raise SwdetError(f"--device {device}: expected auto, cpu, cuda or cuda:N")


class OnnxRuntime(Runtime):
    """An exported ``.onnx`` model in an ONNX Runtime ``InferenceSession``.

    Args:
        path: the ``.onnx`` file.
        device: ``"auto"`` (CUDA when onnxruntime-gpu is installed and sees a GPU, else CPU),
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        score_threshold: must equal the threshold baked into the graph (or be None): the
            threshold is part of the exported post-processing, so a different one means
            re-exporting with ``--score-threshold``.
        providers: explicit ONNX Runtime execution providers (names or ``(name, options)``
            pairs, e.g. ``["TensorrtExecutionProvider", "CUDAExecutionProvider"]``); overrides
            ``device``.
        intra_op_threads: threads of one operator (ONNX Runtime's default: the physical cores).
    """

    name = "onnxruntime"

    def __init__(self, path, device: str = "auto", score_threshold: float | None = None, providers=None,
                 intra_op_threads: int | None = None):
        ort = _import_ort()
        p = Path(path)
        src = str(p)
        if not p.is_file():
            raise SwdetError(f"{p}: no such file" if not p.exists() else f"{p}: not a file")
        if p.stat().st_size == 0:
            raise SwdetError(f"{p}: empty file, not an ONNX model")
        kind, device_id = _parse_device(device)
        available = ort.get_available_providers()
        if providers is None:
            has_cuda = "CUDAExecutionProvider" in available
            if kind == "cuda" and not has_cuda:
                raise MissingDependency("onnxruntime-gpu", "gpu", f"running {p.name} on {device}")
            if kind == "cuda" or (kind == "auto" and has_cuda and _cuda_visible()):
                providers = [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
            else:
                providers = ["CPUExecutionProvider"]
        else:
            providers = list(providers)
            for prov in providers:
                pname = prov[0] if isinstance(prov, (tuple, list)) else prov
                if pname not in available:
                    raise SwdetError(f"{pname}: not available in this onnxruntime (available: "
                                     f"{', '.join(available)}); GPU providers need pip install \"swdet[gpu]\"")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only; ours are the one-line messages
        if intra_op_threads is not None:
            if int(intra_op_threads) < 0:
                raise SwdetError(f"intra_op_threads: must be >= 0, got {intra_op_threads}")
            opts.intra_op_num_threads = int(intra_op_threads)
        # Metadata first (cheap, from the session's model meta), but the session must parse the
        # file to get it; an unreadable file fails here.
        try:
            sess = ort.InferenceSession(src, sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own pybind exception types
            raise SwdetError(self._load_error(p, e)) from None
        meta = parse_metadata(sess.get_modelmeta().custom_metadata_map.get(METADATA_KEY), src)
        super().__init__(meta, src)
        self.session = sess
        self.providers = sess.get_providers()
        if kind == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise SwdetError(f"{p}: ONNX Runtime could not start its CUDA provider on {device} (is the CUDA "
                             "runtime of onnxruntime-gpu installed?)")
        self.device_id = device_id
        self.export_info = dict(meta.get("export") or {})
        self.precision = str(self.export_info.get("precision", "fp32"))
        check_score_threshold(meta, score_threshold, src)

        inputs = sess.get_inputs()
        if len(inputs) != 1:
            raise SwdetError(f"{p}: expected one input 'images', found {len(inputs)}")
        self.input_name = inputs[0].name
        self.input_dtype = _ORT_TYPES.get(inputs[0].type)
        if self.input_dtype is None:
            raise SwdetError(f"{p}: unsupported input type {inputs[0].type} (expected float32)")
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise SwdetError(f"{p}: input {self.input_name} has rank {len(shape)}, expected [B, 3, H, W]")
        self._fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        for axis, want in ((2, self.imgsz), (3, self.imgsz)):
            if isinstance(shape[axis], int) and shape[axis] != want:
                raise SwdetError(f"{p}: graph input is {shape[2]}x{shape[3]} but its metadata says {want}; "
                                 "re-export the model")
        outs = [o.name for o in sess.get_outputs()]
        missing = [n for n in OUTPUT_NAMES if n not in outs]
        if missing:
            raise SwdetError(f"{p}: missing output(s) {', '.join(missing)} (the ONNX contract needs "
                             f"{', '.join(OUTPUT_NAMES)}); re-export with swdet export")

    @staticmethod
    def _load_error(p: Path, e: BaseException) -> str:
        text = _one_line(e)
        low = text.lower()
        if "efficientnms_trt" in low:
            return (f"{p}: uses the TensorRT-only EfficientNMS_TRT op (exported with --nms efficient); "
                    "re-export with --nms onnx to run it in ONNX Runtime")
        if "protobuf parsing failed" in low or "invalid_protobuf" in low or "load model" in low and "failed" in low:
            return f"{p}: not a valid ONNX model (truncated or corrupt file; protobuf parsing failed)"
        return f"{p}: ONNX Runtime cannot load the model ({text})"

    # ------------------------------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        if "CUDAExecutionProvider" in self.providers or "TensorrtExecutionProvider" in self.providers:
            try:
                import torch

                if torch.cuda.is_available():
                    return torch.cuda.get_device_name(self.device_id)
            except Exception:  # noqa: BLE001 - a name for a table only
                pass
            return f"cuda:{self.device_id}"
        return "cpu"

    @property
    def max_batch(self) -> int | None:
        return self._fixed_batch

    def describe(self) -> dict:
        return {**super().describe(), "providers": list(self.providers), "fixed_batch": self._fixed_batch}

    def _prepare(self, images) -> np.ndarray:
        if hasattr(images, "detach"):
            images = images.detach().cpu().numpy()
        x = np.asarray(images)
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.imgsz or x.shape[3] != self.imgsz:
            raise SwdetError(f"{self.source}: expected images of shape [B, 3, {self.imgsz}, {self.imgsz}], "
                             f"got {list(x.shape)}")
        if x.shape[0] < 1:
            raise SwdetError(f"{self.source}: empty batch")
        if self._fixed_batch is not None and x.shape[0] > self._fixed_batch:
            raise SwdetError(f"{self.source}: batch {x.shape[0]} is larger than the model's fixed batch "
                             f"(max_batch = {self._fixed_batch}); re-export with a dynamic batch or split the input")
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def infer(self, images) -> dict[str, np.ndarray]:
        x = self._prepare(images)
        b = x.shape[0]
        if self._fixed_batch is not None and b < self._fixed_batch:
            pad = np.zeros((self._fixed_batch - b, *x.shape[1:]), dtype=x.dtype)
            x = np.concatenate([x, pad])
        results = self.session.run(list(OUTPUT_NAMES), {self.input_name: x})
        return {n: np.ascontiguousarray(r[:b], dtype=_OUT_DTYPES[n]) for n, r in zip(OUTPUT_NAMES, results)}


def _cuda_visible() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return True  # onnxruntime-gpu installed without torch CUDA: let ORT decide
