"""End-to-end latency and throughput of a runtime (``swdet serve bench``), and the interleaved A/B
latency comparison behind ``swdet verify``.

:func:`benchmark` times, per batch size, ``iters`` batches after ``warmup`` untimed ones. One
batch is the whole serving path:

- ``preprocess_ms``: decode the encoded images (held in memory: the disk is not timed) and
  letterbox them into ``uint8 [B, 3, S, S]`` (:class:`swdet.preprocess.Preprocessor`);
- ``inference_ms``: ``runtime.infer`` (host->device copy, the network and, for exported models,
  the baked-in post-processing, device->host copy) followed by ``runtime.synchronize()``, so
  no queued device work leaks into the next measurement;
- ``postprocess_ms``: the host mapping back to original pixels and dataset ids
  (:func:`swdet.preprocess.map_detections`).

``latency_ms`` is the end-to-end time of one batch (``{mean, p50, p90, p99}`` over the
iterations), ``throughput_ips = batch_size / mean latency`` in images per second. Images come
from a folder (``images=DIR``, real files, decoded every iteration) or are synthetic: JPEGs of
640x480 and 480x640 scenes encoded once in memory, so both take the same path.
"""

from __future__ import annotations

import io
import os
import platform
import time
from typing import Any, Sequence

import numpy as np

from swdet.errors import SwdetError

__all__ = ["benchmark", "interleaved_latency", "synthetic_images", "summarize_ms", "host_info"]


def summarize_ms(samples_s: Sequence[float], keys=("mean", "p50", "p90", "p99")) -> dict[str, float]:
    """Seconds -> ``{mean, p50, p90, p99}`` in milliseconds (linear-interpolated percentiles)."""
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    out = {}
    for k in keys:
        out[k] = float(a.mean()) if k == "mean" else float(np.percentile(a, float(k[1:])))
    return {k: round(v, 4) for k, v in out.items()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "python": platform.python_version()}
    for mod in ("torch", "onnxruntime", "tensorrt"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional
            pass
    return info


def synthetic_images(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """``n`` JPEG-encoded synthetic scenes (smooth background + rectangles), alternating
    640x480 and 480x640, as ``(name, bytes)``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (640, 480) if i % 2 == 0 else (480, 640)
        yy, xx = np.mgrid[0:h, 0:w]
        c = rng.uniform(40, 200, size=3)
        bg = np.stack([(c[k] + 40 * np.sin(xx / (60 + 20 * k)) + 30 * np.cos(yy / 80)) for k in range(3)], -1)
        img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = rng.uniform(0, w - 40), rng.uniform(0, h - 40)
            bw, bh = rng.uniform(20, w / 3), rng.uniform(20, h / 3)
            draw.rectangle([x0, y0, min(w - 1, x0 + bw), min(h - 1, y0 + bh)],
                           fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append((f"<synthetic {i}>", buf.getvalue()))
    return out


def _image_pool(images, n: int, seed: int) -> tuple[list[tuple[str, bytes]], str, list[str]]:
    """Encoded images to cycle through: ``(pool, description, skipped files)``. Folder images are
    decoded once up front; unreadable ones are skipped (and listed), none readable is an error."""
    if images is None:
        return synthetic_images(max(1, min(n, 64)), seed), "synthetic", []
    from swdet.data.image import ImageDecodeError, decode_bytes
    from swdet.data.image import list_images

    pool, skipped = [], []
    for f in list_images(images):
        name = str(f)
        try:
            data = f.read_bytes()
        except OSError:
            skipped.append(name)
            continue
        try:
            decode_bytes(data, name)
        except ImageDecodeError:
            skipped.append(name)
            continue
        pool.append((name, data))
        if len(pool) >= max(n, 1):
            break
    if not pool:
        raise SwdetError(f"{images}: none of the {len(skipped)} images could be decoded (e.g. {skipped[0]})")
    return pool, str(images), skipped


def _check_batch_sizes(batch_sizes, max_batch: int | None) -> list[int]:
    sizes = [int(b) for b in batch_sizes]
    if not sizes:
        raise SwdetError("--batch-sizes: give at least one batch size")
    bad = [b for b in sizes if b < 1]
    if bad:
        raise SwdetError(f"--batch-sizes: must be positive, got {bad[0]}")
    if max_batch is not None:
        big = [b for b in sizes if b > max_batch]
        if big:
            raise SwdetError(f"--batch-sizes {big[0]}: larger than the model's fixed batch (max_batch = {max_batch}); "
                             "use smaller batches or re-export with a dynamic batch")
    return sizes


def _open(runtime_or_path, device: str, runtime_kwargs: dict | None):
    from swdet.serve.runtimes import load_runtime
    from swdet.serve.runtimes.base import Runtime

    if isinstance(runtime_or_path, Runtime) or hasattr(runtime_or_path, "infer"):
        return runtime_or_path, False
    return load_runtime(runtime_or_path, device=device, **(runtime_kwargs or {})), True


def benchmark(runtime_or_path, batch_sizes: Sequence[int] = (1, 8, 32), iters: int = 50, warmup: int = 10,
              images: str | os.PathLike | None = None, *, device: str = "auto", workers: int | None = None,
              seed: int = 0, progress: bool = False, runtime_kwargs: dict | None = None) -> dict:
    """Benchmark a runtime (or a model path, loaded with :func:`load_runtime`).

    Returns ``{"runtime", "device", "precision", "source", "imgsz", "images", "iters", "warmup",
    "host", "results": [per batch size: {"batch_size", "latency_ms": {mean, p50, p90, p99},
    "throughput_ips", "preprocess_ms": {mean, p50}, "inference_ms": {mean, p50},
    "postprocess_ms": {mean, p50}, "iters"}]}`` (see the module docstring for what each covers).
    """
    from swdet.preprocess import Preprocessor, map_detections

    if int(iters) < 1:
        raise SwdetError(f"--iters: must be >= 1, got {iters}")
    if int(warmup) < 0:
        raise SwdetError(f"--warmup: must be >= 0, got {warmup}")
    rt, owned = _open(runtime_or_path, device, runtime_kwargs)
    try:
        sizes = _check_batch_sizes(batch_sizes, rt.max_batch)
        pool, source, skipped = _image_pool(images, max(sizes), seed)
        names, cats = rt.class_names, rt.category_ids
        results = []
        with Preprocessor(rt.imgsz, workers) as pre:
            for b in sizes:
                pre_s, inf_s, post_s, total_s = [], [], [], []
                for it in range(int(warmup) + int(iters)):
                    start = (it * b) % len(pool)
                    chunk = [pool[(start + j) % len(pool)] for j in range(b)]
                    t0 = time.perf_counter()
                    batch = pre([c[1] for c in chunk], names=[c[0] for c in chunk])
                    t1 = time.perf_counter()
                    out = rt.infer(batch.images)
                    rt.synchronize()
                    t2 = time.perf_counter()
                    map_detections(out, batch.letterboxes, names, cats)
                    t3 = time.perf_counter()
                    if it >= warmup:
                        pre_s.append(t1 - t0)
                        inf_s.append(t2 - t1)
                        post_s.append(t3 - t2)
                        total_s.append(t3 - t0)
                lat = summarize_ms(total_s)
                row = {
                    "batch_size": b,
                    "latency_ms": lat,
                    "throughput_ips": round(b * 1000.0 / lat["mean"], 3) if lat["mean"] > 0 else None,
                    "preprocess_ms": summarize_ms(pre_s, ("mean", "p50")),
                    "inference_ms": summarize_ms(inf_s, ("mean", "p50")),
                    "postprocess_ms": summarize_ms(post_s, ("mean", "p50")),
                    "iters": int(iters),
                }
                results.append(row)
                if progress:
                    import click

                    click.echo(f"  batch {b}: {lat['mean']:.2f} ms/batch, {row['throughput_ips']:.1f} img/s", err=True)
        desc = rt.describe() if hasattr(rt, "describe") else {}
        return {
            "runtime": desc.get("runtime", getattr(rt, "name", "?")),
            "device": desc.get("device", getattr(rt, "device_name", "?")),
            "precision": desc.get("precision", getattr(rt, "precision", "fp32")),
            "source": desc.get("source"),
            "imgsz": rt.imgsz,
            "images": source,
            "skipped_images": skipped,
            "iters": int(iters),
            "warmup": int(warmup),
            "host": host_info(),
            "results": results,
        }
    finally:
        if owned:
            rt.close()


def _bootstrap_median_ci(values: np.ndarray, level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the median of ``values``."""
    if len(values) < 2:
        v = float(values[0]) if len(values) else float("nan")
        return v, v
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    meds = np.median(values[idx], axis=1)
    lo, hi = np.percentile(meds, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def interleaved_latency(runtime_a, runtime_b, batch_size: int = 8, rounds: int = 20, iters: int = 5,
                        warmup: int = 3, images: str | os.PathLike | None = None, seed: int = 0) -> dict:
    """Inference latency of B relative to A, measured alternately in one run.

    Both get the same images (from ``images`` or synthetic, letterboxed to each model's own
    input size). After ``warmup`` untimed calls each, every round times ``iters`` calls of A and
    ``iters`` of B (``infer`` + ``synchronize``), the order flipping every round (ABBA...), so a
    slow drift of the machine (clock, other load) hits both alike. Per round ``r``:
    ``ratio_r = median(B_r) / median(A_r)``. The result is ``ratio = median_r(ratio_r)`` and a
    95 % percentile-bootstrap interval of that median over the rounds (``band``): the noise band.
    """
    from swdet.preprocess import prepare_batch

    if int(rounds) < 1 or int(iters) < 1:
        raise SwdetError(f"rounds and iters must be >= 1, got {rounds}, {iters}")
    b = int(batch_size)
    for rt in (runtime_a, runtime_b):
        if rt.max_batch is not None and b > rt.max_batch:
            raise SwdetError(f"batch {b}: larger than {rt.source}'s fixed batch (max_batch = {rt.max_batch})")
    pool, _, _ = _image_pool(images, b, seed)
    items = [pool[j % len(pool)][1] for j in range(b)]
    xa = prepare_batch(items, runtime_a.imgsz).images
    xb = xa if runtime_b.imgsz == runtime_a.imgsz else prepare_batch(items, runtime_b.imgsz).images

    def timed(rt, x) -> float:
        t0 = time.perf_counter()
        rt.infer(x)
        rt.synchronize()
        return time.perf_counter() - t0

    for _ in range(int(warmup)):
        timed(runtime_a, xa)
        timed(runtime_b, xb)
    a_all, b_all, ratios = [], [], []
    for r in range(int(rounds)):
        order = ((runtime_a, xa, a_all), (runtime_b, xb, b_all))
        if r % 2:
            order = order[::-1]
        per = {}
        for rt, x, sink in order:
            ts = [timed(rt, x) for _ in range(int(iters))]
            sink.extend(ts)
            per[id(sink)] = float(np.median(ts))
        ratios.append(per[id(b_all)] / per[id(a_all)])
    ratios_arr = np.asarray(ratios)
    lo, hi = _bootstrap_median_ci(ratios_arr, seed=seed)
    a_arr, b_arr = np.asarray(a_all), np.asarray(b_all)
    return {
        "batch_size": b,
        "rounds": int(rounds),
        "iters": int(iters),
        "a_ms": {"median": round(float(np.median(a_arr)) * 1000, 4), "p90": round(float(np.percentile(a_arr, 90)) * 1000, 4)},
        "b_ms": {"median": round(float(np.median(b_arr)) * 1000, 4), "p90": round(float(np.percentile(b_arr, 90)) * 1000, 4)},
        "ratio": round(float(np.median(ratios_arr)), 4),
        "ratio_of_medians": round(float(np.median(b_arr) / np.median(a_arr)), 4),
        "band": [round(lo, 4), round(hi, 4)],
        "round_ratios": [round(float(v), 4) for v in ratios_arr],
    }
