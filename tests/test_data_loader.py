"""Loaders (swdet.data.loader): collate, determinism across worker counts, resume, DDP shards."""

from __future__ import annotations

import itertools

import pytest
import torch

from swdet.data import (
    CocoDetection,
    ResumableBatchSampler,
    build_loader,
    collate,
    iterate_batches,
    write_synthetic_dataset,
)
from swdet.errors import SwdetError


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_synthetic_dataset(root, n_train=14, n_val=3, seed=1)
    return root


def _train_ds(root, **kw):
    return CocoDetection(root / "annotations" / "instances_train.json", root / "train", imgsz=96, train=True,
                         seed=5, **kw)


def _take(stream, n):
    out = []
    for epoch, (images, targets) in itertools.islice(stream, n):
        out.append((epoch, images.clone(), [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in t.items()}
                                            for t in targets]))
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for (ea, ia, ta), (eb, ib, tb) in zip(a, b):
        assert ea == eb
        assert torch.equal(ia, ib)
        assert [t["image_id"] for t in ta] == [t["image_id"] for t in tb]
        for x, y in zip(ta, tb):
            assert torch.equal(x["boxes"], y["boxes"]) and torch.equal(x["labels"], y["labels"])
            assert x["scale"] == y["scale"]


def test_collate_stacks_images_and_keeps_targets():
    batch = [(torch.zeros(3, 8, 8, dtype=torch.uint8), {"image_id": 1}),
             (torch.ones(3, 8, 8, dtype=torch.uint8), {"image_id": 2})]
    images, targets = collate(batch)
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.uint8
    assert [t["image_id"] for t in targets] == [1, 2]


def test_same_batches_with_0_and_2_workers(synth):
    ds = _train_ds(synth)
    # 14 images, batch 4 -> 3 batches per epoch; 7 batches span three epochs
    a = _take(iterate_batches(build_loader(ds, 4, train=True, workers=0, seed=3)), 7)
    b = _take(iterate_batches(build_loader(ds, 4, train=True, workers=2, seed=3)), 7)
    _assert_same(a, b)
    assert [e for e, _, _ in a] == [0, 0, 0, 1, 1, 1, 2]
    # augmentation really differs between epochs for the same image
    first = {t["image_id"]: t["scale"] for _, _, ts in a[:3] for t in ts}
    second = {t["image_id"]: t["scale"] for _, _, ts in a[3:6] for t in ts}
    common = set(first) & set(second)
    assert common and any(first[i] != second[i] for i in common)


def test_resume_continues_exactly(synth):
    ds = _train_ds(synth)
    full = _take(iterate_batches(build_loader(ds, 4, train=True, workers=0, seed=3)), 8)
    # resume at (epoch 1, batch 2) == global iteration 5
    resumed = _take(iterate_batches(build_loader(ds, 4, train=True, workers=0, seed=3), start_iter=(1, 2)), 3)
    _assert_same(full[5:8], resumed)
    by_iter = _take(iterate_batches(build_loader(ds, 4, train=True, workers=0, seed=3), start_iter=5), 3)
    _assert_same(full[5:8], by_iter)


def test_resume_from_saved_state_with_workers(synth):
    ds = _train_ds(synth)
    stream = iterate_batches(build_loader(ds, 4, train=True, workers=2, seed=3))
    first = _take(stream, 4)
    state = stream.state()
    assert state == {"epoch": 1, "batch": 1, "iteration": 4}
    rest = _take(iterate_batches(build_loader(ds, 4, train=True, workers=2, seed=3), start_iter=state), 3)
    full = _take(iterate_batches(build_loader(ds, 4, train=True, workers=0, seed=3)), 7)
    _assert_same(full[:4], first)
    _assert_same(full[4:7], rest)


def test_epoch_order_is_seeded_permutation():
    s = ResumableBatchSampler(10, 3, seed=0)
    assert sorted(s.order(0)) == list(range(10))
    assert s.order(0) != s.order(1)
    assert s.order(4) == ResumableBatchSampler(10, 3, seed=0).order(4)
    assert s.order(0) != ResumableBatchSampler(10, 3, seed=1).order(0)
    assert s.batches_per_epoch == 3  # drop_last in training
    assert s.batches(2)[0][0][0] == 2  # keys carry the epoch


def test_sampler_start_batch_and_state():
    s = ResumableBatchSampler(10, 3, seed=0)
    s.set_epoch(2, start_batch=1)
    got = list(s)
    assert got == s.batches(2)[1:] and len(got) == 2
    assert s.state() == {"epoch": 2, "batch": 3}
    with pytest.raises(SwdetError):
        s.set_epoch(0, start_batch=4)


def test_ddp_shards_are_disjoint_equal_and_cover():
    n, world = 11, 3
    samplers = [ResumableBatchSampler(n, 2, seed=7, rank=r, world_size=world) for r in range(world)]
    orders = [s.order(0) for s in samplers]
    assert len({len(o) for o in orders}) == 1 and len(orders[0]) == 4  # ceil(11/3), padded
    assert set().union(*orders) == set(range(n))
    assert sum(len(o) for o in orders) == 12  # one image repeated as padding
    assert len({s.batches_per_epoch for s in samplers}) == 1


def test_eval_loader_keeps_order_and_every_image(synth):
    ds = CocoDetection(synth / "annotations" / "instances_train.json", synth / "train", imgsz=64)
    loader = build_loader(ds, 4, train=False, workers=0)
    assert loader.pin_memory == torch.cuda.is_available()
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert ids == ds.image_ids
    shards = [build_loader(ds, 4, train=False, workers=0, distributed=(r, 2)) for r in range(2)]
    ids2 = [[t["image_id"] for _, ts in ld for t in ts] for ld in shards]
    assert sorted(ids2[0] + ids2[1]) == sorted(ds.image_ids)


def test_small_dataset_gives_one_short_batch():
    s = ResumableBatchSampler(3, 8, seed=0)
    assert s.batches_per_epoch == 1 and len(s.batches(0)[0]) == 3


def test_custom_collate_and_next(synth):
    ds = _train_ds(synth)

    def collate_with_count(batch):
        images, targets = collate(batch)
        return images, targets, len(targets)

    loader = build_loader(ds, 4, train=True, workers=0, seed=3, collate_fn=collate_with_count)
    assert len(loader) == 3
    added = build_loader(ds, 4, train=True, workers=0, seed=3, batch_transform=lambda b: (*b, "assigned"))
    assert next(iterate_batches(added))[1][2] == "assigned"
    batches = iterate_batches(loader, start_iter=2, iters_per_epoch=len(loader))
    epoch, (images, targets, n) = next(batches)
    assert (epoch, n, images.shape[0]) == (0, 4, 4)
    assert next(batches)[0] == 1 and batches.state() == {"epoch": 1, "batch": 1, "iteration": 4}
    with pytest.raises(ValueError):
        iterate_batches(loader, iters_per_epoch=5)
