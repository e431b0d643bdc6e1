"""Dynamic batching: many single-image requests -> few batched ``runtime.infer`` calls.

One background thread owns the runtime. Requests wait in a bounded FIFO; the thread takes the
oldest request and waits until either ``max_batch`` requests are queued or ``max_wait_ms`` have
passed since that oldest request arrived (the latency budget a request may spend waiting for
company, as Triton's ``max_queue_delay``), then runs one batch and resolves each request's
:class:`concurrent.futures.Future` with its own slice of the outputs.

Back-pressure: at most ``max_queue`` requests wait. Per call, :meth:`DynamicBatcher.submit`
either rejects at once (``block=False``: :class:`QueueFull`) or waits for room
(``block=True``, up to ``timeout`` seconds, then :class:`QueueFull`).

Guarantees: every accepted request is answered exactly once, with its result or with the
exception its batch raised; :meth:`close` stops accepting, lets the thread drain everything
already queued, and joins it. Request order within the queue is preserved.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from swdet.errors import SwdetError

__all__ = ["DynamicBatcher", "QueueFull", "BatcherClosed"]


class QueueFull(SwdetError):
    """The batcher's queue is full (rejected at once, or no room within the timeout)."""


class BatcherClosed(SwdetError):
    """The batcher was closed; it accepts no new requests."""


@dataclass
class _Request:
    image: np.ndarray
    future: Future
    t_submit: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Group single images into batches for a :class:`~swdet.serve.runtimes.base.Runtime`.

    ``submit(image)`` takes one letterboxed image ``[3, S, S]`` (uint8 or float32, numpy or
    torch; see :mod:`swdet.preprocess`) and returns a Future whose result is that image's
    outputs without the batch axis: ``num_dets [1]``, ``det_boxes [K, 4]``, ``det_scores [K]``,
    ``det_classes [K]`` (exactly row ``i`` of a direct ``runtime.infer`` of the same batch).

    Args:
        runtime: anything with ``infer(images [B, 3, S, S]) -> dict of [B, ...] arrays``.
        max_batch: largest batch (capped at ``runtime.max_batch`` when the model has one).
        max_wait_ms: how long the oldest queued request may wait for the batch to fill.
        max_queue: most requests waiting (not counting the batch being run).
    """

    def __init__(self, runtime, max_batch: int = 8, max_wait_ms: float = 5.0, max_queue: int = 64):
        if int(max_batch) < 1:
            raise SwdetError(f"max_batch: must be >= 1, got {max_batch}")
        if int(max_queue) < 1:
            raise SwdetError(f"max_queue: must be >= 1, got {max_queue}")
        if float(max_wait_ms) < 0:
            raise SwdetError(f"max_wait_ms: must be >= 0, got {max_wait_ms}")
        limit = getattr(runtime, "max_batch", None)
        self.runtime = runtime
        self.max_batch = int(min(max_batch, limit) if limit else max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_queue = int(max_queue)
        self._pending: deque[_Request] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._stats = {"requests": 0, "rejected": 0, "batches": 0, "images": 0, "errors": 0, "max_batch_seen": 0}
        self._shape: tuple | None = None
        imgsz = getattr(runtime, "imgsz", None)
        if imgsz is not None:
            self._shape = (3, int(imgsz), int(imgsz))
        self._thread = threading.Thread(target=self._loop, name="swdet-batcher", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------
    def submit(self, image, block: bool = False, timeout: float | None = None) -> Future:
        """Queue one image; returns its Future.

        ``block=False``: raise :class:`QueueFull` at once when ``max_queue`` requests wait.
        ``block=True``: wait for room, at most ``timeout`` seconds (None: no limit), then raise
        :class:`QueueFull`. Raises :class:`BatcherClosed` after :meth:`close`.
        """
        if hasattr(image, "detach"):
            image = image.detach().cpu().numpy()
        image = np.asarray(image)
        if image.ndim != 3 or (self._shape is not None and tuple(image.shape) != self._shape):
            want = list(self._shape) if self._shape else "[3, S, S]"
            raise SwdetError(f"submit: expected one letterboxed image of shape {want}, got {list(image.shape)}")
        req = _Request(image, Future())
        with self._cv:
            if self._closed:
                raise BatcherClosed("batcher: closed, not accepting requests")
            if len(self._pending) >= self.max_queue:
                if not block:
                    self._stats["rejected"] += 1
                    raise QueueFull(f"batcher: queue full ({self.max_queue} requests waiting); retry later")
                deadline = None if timeout is None else time.monotonic() + float(timeout)
                while len(self._pending) >= self.max_queue and not self._closed:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        self._stats["rejected"] += 1
                        raise QueueFull(f"batcher: queue full ({self.max_queue} requests waiting) for "
                                        f"{float(timeout):g} s; retry later")
                    self._cv.wait(remaining)
                if self._closed:
                    raise BatcherClosed("batcher: closed while waiting for room")
            req.t_submit = time.perf_counter()
            self._pending.append(req)
            self._stats["requests"] += 1
            self._cv.notify_all()
        return req.future

    def infer(self, image, timeout: float | None = None) -> dict[str, np.ndarray]:
        """``submit(image, block=True).result(timeout)``."""
        return self.submit(image, block=True).result(timeout)

    # ------------------------------------------------------------------------------------------
    def _next_batch(self) -> list[_Request] | None:
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if not self._pending:  # closed and drained
                return None
            deadline = self._pending[0].t_submit + self.max_wait
            while len(self._pending) < self.max_batch and not self._closed:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._cv.wait(remaining)
            n = min(self.max_batch, len(self._pending))
            batch = [self._pending.popleft() for _ in range(n)]
            self._cv.notify_all()  # room for blocked submitters
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                images = np.stack([r.image for r in live])
                out = self.runtime.infer(images)
                results = [{k: np.asarray(v)[i] for k, v in out.items()} for i in range(len(live))]
            except BaseException as e:  # noqa: BLE001 - every accepted request gets an answer
                with self._cv:
                    self._stats["errors"] += 1
                for r in live:
                    r.future.set_exception(e)
                continue
            with self._cv:
                self._stats["batches"] += 1
                self._stats["images"] += len(live)
                self._stats["max_batch_seen"] = max(self._stats["max_batch_seen"], len(live))
            for r, res in zip(live, results):
                r.future.set_result(res)

    # ------------------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters: requests accepted, rejected, batches run, images, errors, largest batch,
        and the mean batch size."""
        with self._cv:
            s = dict(self._stats)
            s["queued"] = len(self._pending)
        s["mean_batch"] = s["images"] / s["batches"] if s["batches"] else 0.0
        return s

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting requests, answer every queued one, join the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
