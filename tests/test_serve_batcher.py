"""DynamicBatcher: batching, back-pressure (reject / block with timeout), drain on close, bursts."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_serve_helpers import make_toy_onnx, toy_expected

from swdet.serve.batcher import BatcherClosed, DynamicBatcher, QueueFull

S = 64


class GatedToy:
    """A runtime whose ``infer`` waits for ``gate`` (so a test controls when the queue drains);
    outputs are :func:`toy_expected` (each image's rows depend on that image only)."""

    imgsz = S
    max_batch = None

    def __init__(self, gate: threading.Event | None = None):
        self.gate = gate or threading.Event()
        if gate is None:
            self.gate.set()
        self.calls: list[int] = []
        self.entered = threading.Event()

    def infer(self, images):
        self.entered.set()
        assert self.gate.wait(30), "test gate never opened"
        self.calls.append(len(images))
        return toy_expected(np.asarray(images))


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, S, S), dtype=np.uint8)


def _assert_row(result: dict, expected: dict, i: int) -> None:
    for k, v in expected.items():
        np.testing.assert_allclose(result[k], v[i], rtol=1e-5, atol=1e-6, err_msg=k)


def test_requests_are_grouped_into_batches_and_answered_in_order():
    gate = threading.Event()
    rt = GatedToy(gate)
    x = _images(10)
    with DynamicBatcher(rt, max_batch=4, max_wait_ms=10_000, max_queue=64) as b:
        futures = [b.submit(img) for img in x[:4]]
        assert rt.entered.wait(10)  # a full batch leaves at once, without waiting 10 s for company
        futures += [b.submit(img) for img in x[4:]]
        gate.set()
        futures[7].result(timeout=30)  # the second full batch is done; the last 2 wait for company
        assert not futures[8].done() and not futures[9].done()
    # leaving the block closed the batcher: the last two were drained without waiting 10 s
    results = [f.result(timeout=0) for f in futures]
    exp = toy_expected(x)
    for i, r in enumerate(results):
        _assert_row(r, exp, i)
    assert rt.calls == [4, 4, 2]
    assert b.stats()["max_batch_seen"] == 4


def test_nonblocking_submit_rejects_when_full_and_blocking_submit_times_out():
    gate = threading.Event()
    rt = GatedToy(gate)
    x = _images(8)
    b = DynamicBatcher(rt, max_batch=2, max_wait_ms=0, max_queue=3)
    try:
        running = b.submit(x[0])
        assert rt.entered.wait(10)  # worker busy with one batch; the queue is empty
        queued = [b.submit(x[i]) for i in (1, 2, 3)]
        with pytest.raises(QueueFull, match="queue full"):
            b.submit(x[4])
        with pytest.raises(QueueFull, match="for 0.05 s"):
            b.submit(x[4], block=True, timeout=0.05)
        # a blocking submit without a timeout waits for room and is accepted once it frees up
        box: dict = {}
        t = threading.Thread(target=lambda: box.setdefault("f", b.submit(x[5], block=True)))
        t.start()
        gate.set()
        t.join(30)
        assert not t.is_alive()
        exp = toy_expected(x)
        for i, f in zip((0, 1, 2, 3, 5), [running, *queued, box["f"]]):
            _assert_row(f.result(timeout=30), exp, i)
        assert b.stats()["rejected"] == 2
    finally:
        gate.set()
        b.close()


def test_close_drains_every_accepted_request_then_rejects():
    gate = threading.Event()
    rt = GatedToy(gate)
    x = _images(12)
    b = DynamicBatcher(rt, max_batch=5, max_wait_ms=50, max_queue=32)
    futures = [b.submit(img) for img in x]
    closer = threading.Thread(target=b.close)
    closer.start()
    gate.set()
    closer.join(30)
    assert not closer.is_alive()
    assert all(f.done() for f in futures)
    exp = toy_expected(x)
    for i, f in enumerate(futures):
        _assert_row(f.result(), exp, i)
    with pytest.raises(BatcherClosed):
        b.submit(x[0])


def test_runtime_error_reaches_every_request_of_the_batch_and_worker_survives():
    class Flaky(GatedToy):
        def infer(self, images):
            if len(self.calls) == 0:
                self.calls.append(-1)
                raise RuntimeError("boom")
            return super().infer(images)

    rt = Flaky()
    x = _images(3)
    with DynamicBatcher(rt, max_batch=8, max_wait_ms=0, max_queue=8) as b:
        f0 = b.submit(x[0])
        with pytest.raises(RuntimeError, match="boom"):
            f0.result(timeout=30)
        f1 = b.submit(x[1])
        _assert_row(f1.result(timeout=30), toy_expected(x), 1)


def test_submit_rejects_a_wrong_shape():
    with DynamicBatcher(GatedToy(), max_batch=2) as b:
        with pytest.raises(Exception, match=r"shape \[3, 64, 64\]"):
            b.submit(np.zeros((3, 32, 32), np.uint8))


def test_burst_from_many_threads_with_onnxruntime(tmp_path):
    """10x the queue size from 4 threads against a real ONNX Runtime model: every accepted request
    gets the row a direct batched infer gives, every rejected one gets QueueFull, no deadlock.

    The runtime holds its first batch until two of the client threads have finished, so the queue
    certainly overflows while the other two still submit as the worker drains."""
    from swdet.serve.runtimes import load_runtime

    ort_rt = load_runtime(make_toy_onnx(tmp_path / "toy.onnx", imgsz=S))
    max_queue, threads, per_thread = 8, 4, 20  # 80 requests = 10x the queue
    x = _images(threads * per_thread, seed=1)
    direct = ort_rt.infer(x)
    release = threading.Event()

    class Held:
        imgsz, max_batch = S, None

        def infer(self, images):
            assert release.wait(60)
            return ort_rt.infer(images)

    accepted: dict[int, object] = {}
    rejected: list[int] = []
    finished: list[int] = []
    lock = threading.Lock()
    b = DynamicBatcher(Held(), max_batch=4, max_wait_ms=2, max_queue=max_queue)
    start = threading.Barrier(threads)

    def client(t: int) -> None:
        start.wait()
        for j in range(per_thread):
            i = t * per_thread + j
            try:
                # mix the policies: even threads reject at once, odd ones wait up to 1 ms for room
                f = b.submit(x[i], block=bool(t % 2), timeout=0.001 if t % 2 else None)
            except QueueFull:
                with lock:
                    rejected.append(i)
                continue
            with lock:
                accepted[i] = f
        with lock:
            finished.append(t)
            if len(finished) == 2:
                release.set()

    workers = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert not any(w.is_alive() for w in workers), "a client deadlocked"
    b.close(timeout=60)
    assert len(accepted) + len(rejected) == threads * per_thread
    assert len(accepted) >= max_queue and len(rejected) > 0
    for i, f in accepted.items():
        assert f.done()
        _assert_row(f.result(), direct, i)
    s = b.stats()
    assert s["requests"] == len(accepted) and s["rejected"] == len(rejected) and s["images"] == len(accepted)
    assert s["queued"] == 0
