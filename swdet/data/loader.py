"""Batching: collate, a deterministic resumable (and DDP-sharded) batch sampler, the DataLoader
factory and an endless batch stream for iteration-based training.

Determinism contract
--------------------
- The order of epoch ``e`` is ``permutation(N)`` drawn from ``torch.Generator`` seeded with
  ``seed + 1_000_003·e`` (shuffle) or ``0..N-1`` (no shuffle).
- With ``world_size = R`` ranks (training), the order is padded by wrapping around to
  ``⌈N/R⌉·R`` and rank ``r`` takes positions ``r, r+R, r+2R, ...``; every rank sees the same
  number of batches. Evaluation (``shuffle=False``) is not padded: rank ``r`` takes
  ``r, r+R, ...`` and ranks may differ by one image.
- Batch ``k`` of epoch ``e`` on rank ``r`` is positions ``k·B .. (k+1)·B - 1`` of the rank's shard;
  training drops the last incomplete batch (unless the shard is smaller than one batch, which is
  then a single short batch), so every epoch has the same number of batches
  ``batches_per_epoch`` and global iteration ``t`` is ``(epoch, batch) = divmod(t, batches_per_epoch)``.
- Training batches carry keys ``(epoch, index)``: :class:`~swdet.data.coco.CocoDetection` seeds
  its augmentation with ``(seed, epoch, index)``, so a batch's content depends on neither the
  worker count nor on which process (persistent worker or not) decodes it.

Resuming: save the iteration count (or ``stream.state()``) of :func:`iterate_batches`, then
build the loader again and call ``iterate_batches(loader, start_iter=saved)``; the batches that
follow are exactly those of the uninterrupted run.
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from swdet.errors import SwdetError

__all__ = [
    "collate",
    "ResumableBatchSampler",
    "SwdetDataLoader",
    "build_loader",
    "iterate_batches",
    "BatchStream",
    "seed_worker",
]

_EPOCH_STRIDE = 1_000_003


def collate(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """``[(image uint8 [3,S,S], target), ...] -> (images uint8 [B,3,S,S], [target, ...])``."""
    images = torch.stack([b[0] for b in batch], dim=0)
    targets = [b[1] for b in batch]
    return images, targets


class ResumableBatchSampler(Sampler[list]):
    """Yields the batches (lists of dataset keys) of one epoch, from a start batch on.

    Args:
        num_samples: dataset length ``N``.
        batch_size: images per batch on this rank.
        shuffle: training order (seeded permutation, padded across ranks, keys ``(epoch, i)``);
            ``False`` gives ``0..N-1`` sharded without padding and plain ``int`` keys.
        seed: order seed (see the module docstring).
        rank, world_size: DDP shard.
        drop_last: drop the last incomplete batch (default: ``shuffle``).

    Call :meth:`set_epoch` before iterating (``iterate_batches`` does it). The sampler runs in
    the main process, so this works with persistent workers.
    """

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool | None = None):
        if num_samples < 1:
            raise SwdetError("dataset is empty: nothing to iterate")
        if batch_size < 1:
            raise SwdetError(f"batch_size={batch_size}: must be at least 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise SwdetError(f"rank={rank}, world_size={world_size}: need 0 <= rank < world_size")
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.drop_last = self.shuffle if drop_last is None else bool(drop_last)
        self.epoch = 0
        self.start_batch = 0
        self._yielded = 0

    # ---------------------------------------------------------------- geometry
    @property
    def shard_size(self) -> int:
        """Images this rank sees per epoch."""
        n, r = self.num_samples, self.world_size
        if self.shuffle:
            return -(-n // r)
        return len(range(self.rank, n, r))

    @property
    def batches_per_epoch(self) -> int:
        """Batches per epoch on this rank (the same every epoch)."""
        m = self.shard_size
        if m == 0:
            return 0
        if self.drop_last:
            return max(1, m // self.batch_size)
        return -(-m // self.batch_size)

    def order(self, epoch: int) -> list[int]:
        """Dataset indices this rank visits in ``epoch``, in order."""
        n, r = self.num_samples, self.world_size
        if not self.shuffle:
            return list(range(self.rank, n, r))
        g = torch.Generator()
        g.manual_seed((self.seed + _EPOCH_STRIDE * int(epoch)) % (2**63))
        perm = torch.randperm(n, generator=g).tolist()
        total = -(-n // r) * r
        while len(perm) < total:  # pad by wrapping around (repeat when N < world_size)
            perm += perm[: total - len(perm)]
        return perm[self.rank:total:r]

    def batches(self, epoch: int) -> list[list]:
        """All batches (lists of keys) of ``epoch`` on this rank."""
        idx = self.order(epoch)
        B = self.batch_size
        out = [idx[k * B:(k + 1) * B] for k in range(self.batches_per_epoch)]
        if self.shuffle:
            out = [[(int(epoch), i) for i in b] for b in out]
        return out

    # ---------------------------------------------------------------- iteration state
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next ``iter()`` yield batches ``start_batch, start_batch+1, ...`` of ``epoch``."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise SwdetError(f"start_batch={start_batch}: an epoch has {self.batches_per_epoch} batches")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def state(self) -> dict:
        """``{"epoch", "batch"}``: the next batch this sampler will hand out.

        DataLoader workers prefetch, so this runs ahead of what training consumed; checkpoint
        :meth:`BatchStream.state` instead.
        """
        return {"epoch": self.epoch, "batch": self.start_batch + self._yielded}

    def __iter__(self) -> Iterator[list]:
        self._yielded = 0
        for b in self.batches(self.epoch)[self.start_batch:]:
            self._yielded += 1
            yield b

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch


class _Collate:
    """Picklable ``transform(collate(samples))``."""

    def __init__(self, collate_fn, transform=None):
        self.collate_fn = collate_fn
        self.transform = transform

    def __call__(self, samples):
        batch = self.collate_fn(samples)
        return batch if self.transform is None else self.transform(batch)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed ``random`` and NumPy's global RNG from the worker's
    torch seed (``base_seed + worker_id``, with ``base_seed`` drawn from the loader's seeded
    generator). swdet's own augmentation does not use global RNGs; this makes user code
    deterministic too. Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole process
    group; the trainer decides how to stop: it finishes the step and checkpoints). SIGTERM keeps
    its default: multiprocessing ends daemonic workers with it at exit."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def _clean_error(exc: BaseException) -> BaseException:
    """A SwdetError re-raised by DataLoader from a worker carries the worker's traceback in its
    message; keep only the original one-line message."""
    msg = str(exc)
    marker = f"{type(exc).__name__}: "
    if msg.startswith("Caught ") and marker in msg:
        return type(exc)(msg.rsplit(marker, 1)[-1])
    return exc


class _CleanIterator:
    def __init__(self, it):
        self._it = it

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self._it)
        except SwdetError as e:
            clean = _clean_error(e)
            if clean is e:
                raise
            raise clean from None

    def __len__(self):
        return len(self._it)


class SwdetDataLoader(DataLoader):
    """A :class:`torch.utils.data.DataLoader` whose iterator turns a :class:`SwdetError` raised in
    a worker back into its original one-line message (no worker traceback in the text)."""

    def __iter__(self):
        return _CleanIterator(super().__iter__())


def build_loader(
    dataset,
    batch_size: int,
    *,
    train: bool,
    workers: int = 2,
    seed: int = 0,
    pin_memory: bool | None = None,
    distributed: tuple[int, int] | None = None,
    drop_last: bool | None = None,
    prefetch_factor: int = 2,
    multiprocessing_context=None,
    collate_fn=None,
    batch_transform=None,
) -> SwdetDataLoader:
    """DataLoader over ``dataset`` with :class:`ResumableBatchSampler` and :func:`collate`.

    Args:
        dataset: a map-style dataset (e.g. :class:`~swdet.data.coco.CocoDetection`).
        batch_size: images per batch per rank.
        train: shuffled seeded order, padded DDP shards, incomplete last batch dropped, keys
            ``(epoch, i)``; otherwise the dataset order, unpadded shards, all images.
        workers: worker processes (0 = load in the main process). Workers are persistent.
        seed: order seed; also seeds the worker RNGs (:func:`seed_worker`).
        pin_memory: ``None`` = ``torch.cuda.is_available()``.
        distributed: ``(rank, world_size)`` to shard across DDP ranks, or ``None``.
        drop_last: override the default (``train``).
        collate_fn: replaces :func:`collate`; standard DataLoader semantics: it receives the list
            of ``(image, target)`` samples (runs in the workers).
        batch_transform: applied in the workers to what the collate function returned, e.g.
            ``(images, targets) -> (images, targets, assignment)`` for target assignment.

    Iterate one epoch with ``loader.batch_sampler.set_epoch(e, start_batch)`` then ``for images,
    targets in loader``, or endlessly with :func:`iterate_batches`.
    """
    rank, world = (0, 1) if distributed is None else (int(distributed[0]), int(distributed[1]))
    sampler = ResumableBatchSampler(len(dataset), batch_size, shuffle=train, seed=seed,
                                    rank=rank, world_size=world, drop_last=drop_last)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers = max(0, int(workers))
    g = torch.Generator()
    g.manual_seed(int(seed) + 7919 * rank)
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=prefetch_factor,
                      multiprocessing_context=multiprocessing_context)
    return SwdetDataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=_Collate(collate if collate_fn is None else collate_fn, batch_transform),
        pin_memory=bool(pin_memory),
        worker_init_fn=seed_worker,
        generator=g,
        **kwargs,
    )


class BatchStream:
    """Endless iterator of ``(epoch, batch)`` over a loader from :func:`build_loader`; ``batch`` is
    what the loader's collate function returns (``(images, targets)`` by default).

    :meth:`state` is the position of the *next* batch to be consumed, ``{"epoch", "batch",
    "iteration"}`` with ``iteration = epoch·batches_per_epoch + batch``: save it (or just the
    iteration) with a checkpoint taken after a step and pass it back as ``start_iter`` to resume.
    """

    def __init__(self, loader: DataLoader, start_iter: int | tuple[int, int] | dict = 0,
                 iters_per_epoch: int | None = None):
        sampler = loader.batch_sampler
        if not isinstance(sampler, ResumableBatchSampler):
            raise TypeError("iterate_batches needs a loader made by build_loader")
        self.loader = loader
        self.sampler = sampler
        self.batches_per_epoch = sampler.batches_per_epoch
        if iters_per_epoch is not None and int(iters_per_epoch) != self.batches_per_epoch:
            raise ValueError(f"iters_per_epoch={iters_per_epoch} but the sampler has "
                             f"{self.batches_per_epoch} batches per epoch")
        if self.batches_per_epoch < 1:
            raise SwdetError("this rank has no data: fewer images than ranks")
        start = start_iter
        if isinstance(start, dict):
            if "epoch" in start and "batch" in start:
                start = (int(start["epoch"]), int(start["batch"]))
            else:
                start = int(start["iteration"])
        if isinstance(start, (tuple, list)):
            epoch, batch = (int(v) for v in start)
            epoch, batch = epoch + batch // self.batches_per_epoch, batch % self.batches_per_epoch
        else:
            epoch, batch = divmod(int(start), self.batches_per_epoch)
        if epoch < 0 or batch < 0:
            raise SwdetError(f"start_iter={start_iter!r}: must not be negative")
        self.epoch, self.batch = int(epoch), int(batch)
        self._it = None

    def state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch,
                "iteration": self.epoch * self.batches_per_epoch + self.batch}

    def __iter__(self) -> "BatchStream":
        return self

    def __next__(self):
        while True:
            if self._it is None:
                self.sampler.set_epoch(self.epoch, self.batch)
                dataset = self.loader.dataset
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(self.epoch)
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                self.epoch += 1
                self.batch = 0
                continue
            self.batch += 1
            return self.epoch, batch


def iterate_batches(loader: DataLoader, start_iter: int | tuple[int, int] | dict = 0,
                    iters_per_epoch: int | None = None) -> BatchStream:
    """Endless iterator of ``(epoch, batch)`` starting at global iteration ``start_iter`` (an int),
    at ``(epoch, batch)``, or at a saved :meth:`BatchStream.state`. ``iters_per_epoch``, when
    given, is checked against the sampler (it is ``len(loader)`` of a fresh loader).

    Example::

        batches = iterate_batches(build_loader(ds, 16, train=True, seed=0), start_iter=ckpt_iter)
        for it in range(ckpt_iter, max_iter):
            epoch, (images, targets) = next(batches)
            ...
            save(it + 1)  # resume later with start_iter=it + 1 (or batches.state())
    """
    return BatchStream(loader, start_iter, iters_per_epoch)
