"""PyTorch eager runtime (the reference every exported runtime is compared with).

``cuda_graphs=True`` (CUDA only) captures the detector's forward (backbone, FPN, heads: a
static-shape graph) once per batch size and dtype on first use, into static input/output buffers
sharing one memory pool, and replays it afterwards; the post-processing (top-k, NMS: data
dependent shapes) stays eager. This removes the per-kernel launch cost of eager PyTorch, which
dominates small batches on a fast GPU.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

from swdet.errors import SwdetError
from swdet.serve.runtimes.base import Runtime


class _GraphedForward:
    """``model(x)`` through CUDA graphs captured per ``(batch, dtype)``.

    The returned outputs are the graph's static buffers: valid until the next call (the caller
    consumes them at once; a lock serializes callers).
    """

    def __init__(self, model: torch.nn.Module, device: torch.device, warmup: int = 3):
        self.model = model
        self.device = device
        self.warmup = warmup
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None

    def _capture(self, x: torch.Tensor):
        static_in = torch.empty_like(x)
        static_in.copy_(x)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up (cuDNN autotuning, lazy init) off the capture
            for _ in range(self.warmup):
                self.model(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = self.model(static_in)
        return graph, static_in, static_out

    def __call__(self, x: torch.Tensor):
        key = (tuple(x.shape), x.dtype)
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self._capture(x)
        graph, static_in, static_out = entry
        static_in.copy_(x, non_blocking=True)
        graph.replay()
        return static_out


class TorchRuntime(Runtime):
    """A run directory / ``.safetensors`` / ``model.json`` run by PyTorch.

    Args:
        path: the artifact.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        score_threshold: overrides the artifact's threshold (torch post-processing is not baked).
        cuda_graphs: replay the network forward from CUDA graphs (CUDA only; see module doc).
    """

    name = "torch"

    def __init__(self, path, device: str = "auto", score_threshold: float | None = None, cuda_graphs: bool = False):
        from swdet.artifact import load_artifact, postprocess_from_meta
        from swdet.models import Predictor

        try:
            dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                               ("cpu" if device == "auto" else device))
        except RuntimeError:
            raise SwdetError(f"--device {device}: expected auto, cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SwdetError(f"--device {device}: CUDA is not available on this machine")
        if cuda_graphs and dev.type != "cuda":
            raise SwdetError(f"--cuda-graphs: needs a CUDA device, got {dev}")
        model, meta = load_artifact(path, device=dev)
        super().__init__(meta, str(path))
        post = postprocess_from_meta(meta)
        if score_threshold is not None:
            post.score_threshold = float(score_threshold)
        self.predictor = Predictor(model, post, dev)
        self.device = dev
        self.cuda_graphs = bool(cuda_graphs)
        self._graphed = _GraphedForward(self.predictor.model, dev) if self.cuda_graphs else None
        self._lock = threading.Lock()
        if self.cuda_graphs:
            self.name = "torch-cudagraphs"

    @property
    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    def describe(self) -> dict:
        return {**super().describe(), "cuda_graphs": self.cuda_graphs}

    def infer(self, images) -> dict[str, np.ndarray]:
        x = torch.as_tensor(images)
        s = self.imgsz
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != s or x.shape[3] != s:
            raise SwdetError(f"{self.source}: expected images of shape [B, 3, {s}, {s}], got {list(x.shape)}")
        if self._graphed is None:
            out = self.predictor(x)
        else:
            with self._lock, torch.inference_mode():
                raw = self._graphed(x.to(self.device, non_blocking=True))
                out = self.predictor.postprocess(raw)
        return {k: v.cpu().numpy() for k, v in out.items()}

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
