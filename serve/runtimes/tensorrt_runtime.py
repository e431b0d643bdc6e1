"""TensorRT runtime (TensorRT 10 / 11 Python API), kept thin.

An engine ``model.engine`` comes with a sidecar JSON ``model.engine.json`` that holds the
``model.json`` metadata plus an ``"engine"`` section: ``tensorrt_version``, the ``gpu`` and its
``compute_capability``, the precision and the optimization-profile shapes. An engine only runs
on the TensorRT version and GPU architecture it was built for, so both are checked before
deserializing: a mismatch is a one-line error telling the user to rebuild. The sidecar and its
rules live in core (:mod:`swdet.deploy.engine_meta`), shared with ``swdet export`` which writes it:
serving never imports the export stage.

Device memory and the stream come from PyTorch (torch already owns the CUDA context; no
pycuda): input and output buffers are torch CUDA tensors whose ``data_ptr()`` go to
``context.set_tensor_address``, and ``context.execute_async_v3`` runs on
``torch.cuda.current_stream().cuda_stream``. Outputs keep the fixed ``[B, K, ...]`` shapes of the
ONNX contract, so they are known once the input shape is set.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from swdet.deploy.engine_meta import check_engine_compat, import_tensorrt, read_engine_sidecar, sidecar_path, split_sidecar
from swdet.errors import SwdetError
from swdet.serve.runtimes.base import OUTPUT_NAMES, Runtime
from swdet.deploy.onnx_meta import check_score_threshold


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine (``.engine`` / ``.plan``) with its sidecar JSON."""

    name = "tensorrt"

    def __init__(self, path, device: str = "cuda", score_threshold: float | None = None):
        p = Path(path)
        src = str(p)
        if not p.is_file():
            raise SwdetError(f"{p}: no such file")
        meta, info = split_sidecar(read_engine_sidecar(p), str(sidecar_path(p)))
        trt = import_tensorrt("running engines")
        import torch

        if str(device).lower() in ("cpu",):
            raise SwdetError(f"--device {device}: TensorRT engines run on CUDA only")
        if not torch.cuda.is_available():
            raise SwdetError(f"{p}: TensorRT engines need a CUDA GPU, none is available")
        dev = torch.device("cuda" if str(device).lower() in ("auto", "cuda") else device)
        major, minor = torch.cuda.get_device_capability(dev)
        check_engine_compat(info, src, tensorrt_version=trt.__version__, gpu=torch.cuda.get_device_name(dev),
                            compute_capability=f"{major}.{minor}")
        super().__init__(meta, src)
        check_score_threshold(meta, score_threshold, src)
        self.precision = str(info.get("precision") or (meta.get("export") or {}).get("precision", "fp32"))
        self.trt_info = info
        self.device = dev
        self._torch = torch
        self._lock = threading.Lock()

        self.logger = trt.Logger(trt.Logger.ERROR)
        try:
            trt.init_libnvinfer_plugins(self.logger, "")  # EfficientNMS_TRT and friends
        except Exception:  # noqa: BLE001 - plugins are optional for --nms onnx engines
            pass
        with torch.cuda.device(dev):
            self.trt_runtime = trt.Runtime(self.logger)
            self.engine = self.trt_runtime.deserialize_cuda_engine(p.read_bytes())
            if self.engine is None:
                raise SwdetError(f"{p}: TensorRT could not deserialize the engine (corrupt file, or built for "
                                 "another TensorRT/GPU); rebuild it")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self.inputs) != 1:
            raise SwdetError(f"{p}: expected one input 'images', found {self.inputs}")
        missing = [n for n in OUTPUT_NAMES if n not in self.outputs]
        if missing:
            raise SwdetError(f"{p}: missing output(s) {', '.join(missing)}; rebuild from an swdet ONNX export")
        self.input_name = self.inputs[0]
        self.dtypes = {n: _torch_dtype(trt, torch, self.engine.get_tensor_dtype(n)) for n in names}
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if shape[0] == -1:
            lo, _opt, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self._batch_range = (int(lo[0]), int(hi[0]))
        else:
            self._batch_range = (int(shape[0]), int(shape[0]))

    # ------------------------------------------------------------------------------------------
    @property
    def device_name(self) -> str:
        return self._torch.cuda.get_device_name(self.device)

    @property
    def max_batch(self) -> int | None:
        return self._batch_range[1]

    def describe(self) -> dict:
        return {**super().describe(), "tensorrt_version": self.trt_info.get("tensorrt_version"),
                "batch_range": list(self._batch_range)}

    def infer(self, images) -> dict[str, np.ndarray]:
        torch = self._torch
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != self.imgsz or x.shape[3] != self.imgsz:
            raise SwdetError(f"{self.source}: expected images of shape [B, 3, {self.imgsz}, {self.imgsz}], "
                             f"got {list(x.shape)}")
        b = int(x.shape[0])
        lo, hi = self._batch_range
        if b > hi:
            raise SwdetError(f"{self.source}: batch {b} is larger than the engine's optimization profile "
                             f"(max_batch = {hi}); rebuild with a larger --max-batch or split the input")
        pad = max(0, lo - b)  # a fixed/min-batch engine: pad with zero images, cut the outputs back
        with self._lock, torch.cuda.device(self.device):
            x = x.to(self.device, non_blocking=True).to(self.dtypes[self.input_name])
            if pad:
                x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
            x = x.contiguous()
            if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
                raise SwdetError(f"{self.source}: input shape {list(x.shape)} is outside the engine's profile")
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            outs = {}
            for n in self.outputs:
                shape = tuple(self.context.get_tensor_shape(n))
                if any(d < 0 for d in shape):
                    raise SwdetError(f"{self.source}: output {n} has a data-dependent shape {shape}; "
                                     "rebuild from an swdet ONNX export (fixed K outputs)")
                outs[n] = torch.empty(shape, dtype=self.dtypes[n], device=self.device)
                self.context.set_tensor_address(n, outs[n].data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"{self.source}: TensorRT execution failed")
            result = {n: outs[n][:b].cpu().numpy() for n in OUTPUT_NAMES}  # .cpu() syncs the stream
        return {
            "num_dets": result["num_dets"].astype(np.int32).reshape(b, 1),
            "det_boxes": result["det_boxes"].astype(np.float32),
            "det_scores": result["det_scores"].astype(np.float32),
            "det_classes": result["det_classes"].astype(np.int32),
        }

    def synchronize(self) -> None:
        self._torch.cuda.synchronize(self.device)


def _torch_dtype(trt, torch, dt):
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32,
             trt.int8: torch.int8, trt.bool: torch.bool}
    for attr, tdt in (("int64", torch.int64), ("uint8", torch.uint8), ("bfloat16", torch.bfloat16)):
        if hasattr(trt, attr):
            table[getattr(trt, attr)] = tdt
    if dt not in table:
        raise SwdetError(f"engine tensor type {dt} is not supported by swdet's TensorRT runtime")
    return table[dt]
