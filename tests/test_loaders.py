"""Loaders (ffcv, gpu, torch) on the small synthetic beton of the ``synthetic_root`` fixture.

The reference is the beton itself, read independently with ``read_beton``. Without augmentation
a yielded image, de-normalised and rounded, must be bit-identical to one stored image (float32
normalisation round-trips well below half a grey level), which identifies which record it was:
that checks counts, the label paired with each image, and that no record is repeated.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from fastcifar.data.loaders import GpuLoader, build_loader, list_loaders
from fastcifar.errors import UserError

KINDS = ("ffcv", "gpu", "torch")
MEAN = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)
STD = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
# One worker keeps FFCV/DataLoader start-up cheap on 2 cores; >0 for the torch loader so its
# augmentation is seeded per epoch (with 0 workers it follows torch's global generator).
WORKERS = {"ffcv": 1, "gpu": None, "torch": 1}


@pytest.fixture(scope="module")
def split_arrays(synthetic_root):
    """``{"train"|"test": (images (N,32,32,3) uint8, fine (N,) int64)}`` read from the betons."""
    from fastcifar.data.beton import read_beton

    out = {}
    for split in ("train", "test"):
        images, fine, _ = read_beton(synthetic_root / "synthetic" / f"{split}.beton")
        out[split] = (images, fine)
    return out


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Undo ImageNet normalisation: float (B,3,32,32) -> uint8 (B,32,32,3)."""
    x = x.detach().float().cpu() * STD + MEAN
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def record_indices(images: np.ndarray, labels: np.ndarray, ref_images: np.ndarray, ref_labels: np.ndarray) -> list[int]:
    """Index in the reference of each yielded image; asserts the image exists and its label matches."""
    where: dict[bytes, list[int]] = {}
    for i, img in enumerate(ref_images):
        where.setdefault(img.tobytes(), []).append(i)
    found = []
    for img, label in zip(images, labels):
        candidates = where.get(img.tobytes())
        assert candidates, "a yielded image is not in the beton"
        assert int(label) in {int(ref_labels[i]) for i in candidates}, "image paired with a wrong label"
        found.append(next(i for i in candidates if ref_labels[i] == label))
    return found


def run_epoch(loader, max_batches: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = [], []
    for b, (x, y) in enumerate(loader):
        if max_batches is not None and b >= max_batches:
            break
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def make(kind: str, split: str, root, arrays=None, **kwargs):
    """A loader of ``kind``; given the split's arrays, gpu/torch skip re-reading the beton.

    Reading a beton goes through an FFCV Loader, whose numba compilation costs seconds per call:
    ``build_loader`` itself is exercised for every kind by the test-split test.
    """
    kwargs.setdefault("num_workers", WORKERS[kind])
    if arrays is None or kind == "ffcv":
        return build_loader(kind, split, root=root, dataset="synthetic", **kwargs)
    from fastcifar.data.loaders.torch_loader import TorchLoader

    images, labels = arrays
    if kind == "gpu":  # num_workers is accepted and ignored: nothing runs on workers
        return GpuLoader.from_arrays(images, labels, train=split == "train", **kwargs)
    return TorchLoader(images, labels, train=split == "train", **kwargs)


# --- errors -------------------------------------------------------------------------------------


def test_registry_and_user_errors(tmp_path, monkeypatch):
    assert list_loaders() == ["ffcv", "gpu", "torch"]
    with pytest.raises(UserError, match="unknown loader kind 'dali'.*ffcv, gpu, torch"):
        build_loader("dali", "train", root=tmp_path, dataset="synthetic")
    with pytest.raises(UserError, match="unknown split 'val'"):
        build_loader("gpu", "val", root=tmp_path, dataset="synthetic")
    with pytest.raises(UserError, match="rank 2 and world_size 2"):
        build_loader("gpu", "train", root=tmp_path, dataset="synthetic", rank=2, world_size=2)
    with pytest.raises(TypeError, match="batchsize"):  # a misspelt option, before any file is read
        build_loader("gpu", "train", root=tmp_path, dataset="synthetic", batchsize=64)
    missing = r"does not exist; run `python -m fastcifar.data prepare --dataset synthetic --root "
    with pytest.raises(UserError, match=missing):
        build_loader("ffcv", "train", root=tmp_path, dataset="synthetic")
    corrupt = tmp_path / "synthetic" / "test.beton"
    corrupt.parent.mkdir()
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    for kind in KINDS:  # a beton without meta.json was not written by prepare
        with pytest.raises(UserError, match="meta.json does not exist; run `python -m fastcifar.data prepare"):
            build_loader(kind, "test", root=tmp_path, dataset="synthetic")
    monkeypatch.setitem(sys.modules, "ffcv", None)  # as on a machine without FFCV
    with pytest.raises(UserError, match="needs FFCV.*GpuLoader.from_arrays"):
        build_loader("gpu", "test", root=tmp_path, dataset="synthetic")


def test_batch_larger_than_split_is_a_user_error():
    images = np.zeros((10, 32, 32, 3), np.uint8) + np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1)
    with pytest.raises(UserError, match="batch_size 16 is larger than the 10 train images"):
        GpuLoader.from_arrays(images, np.arange(10), train=True, batch_size=16)
    # test keeps the partial batch: one batch of all 10 images is fine
    ((x, y),) = list(GpuLoader.from_arrays(images, np.arange(10), train=False, batch_size=16))
    assert x.shape == (10, 3, 32, 32) and y.tolist() == list(range(10))


# --- one epoch of each split, against the beton ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_train_epoch_counts_labels_and_images(kind, synthetic_root, split_arrays):
    ref_images, ref_labels = split_arrays["train"]
    n, batch = len(ref_labels), 100
    loader = make(kind, "train", synthetic_root, split_arrays["train"], batch_size=batch, augment=False)
    assert len(loader) == n // batch and loader.num_samples == (n // batch) * batch
    shapes = []
    xs, ys = [], []
    for x, y in loader:
        shapes.append(tuple(x.shape))
        assert x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        xs.append(x)
        ys.append(y)
    assert shapes == [(batch, 3, 32, 32)] * (n // batch)  # drop_last: only full batches
    images, labels = to_uint8_nhwc(torch.cat(xs)), torch.cat(ys).numpy()
    found = record_indices(images, labels, ref_images, ref_labels)
    assert len(set(found)) == len(found) == (n // batch) * batch  # no record twice
    # the multiset of labels is the one of the records it picked
    assert np.array_equal(np.sort(labels), np.sort(ref_labels[found]))
    assert found != sorted(found)  # shuffled


@pytest.mark.parametrize("kind", KINDS)
def test_test_epoch_is_every_image_once_in_order(kind, synthetic_root, split_arrays):
    ref_images, ref_labels = split_arrays["test"]
    n, batch = len(ref_labels), 64
    loader = make(kind, "test", synthetic_root, batch_size=batch)
    assert len(loader) == -(-n // batch) and loader.num_samples == n
    batches = list(loader)
    assert [len(y) for _, y in batches] == [batch] * (n // batch) + ([n % batch] if n % batch else [])
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert np.array_equal(y.numpy(), ref_labels)
    assert np.array_equal(to_uint8_nhwc(x), ref_images)
    # and exactly the normalisation the model expects
    expected = (torch.from_numpy(ref_images).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    torch.testing.assert_close(x, expected, atol=1e-5, rtol=0)


# --- augmentation, determinism, dtype/layout -----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_augmented_epochs_are_deterministic_and_differ(kind, synthetic_root, split_arrays):
    loader = make(
        kind,
        "train",
        synthetic_root,
        split_arrays["train"],
        batch_size=128,
        seed=3,
        dtype=torch.bfloat16,
        channels_last=True,
    )
    first = run_epoch(loader, max_batches=2)
    x, y = first
    assert x.dtype == torch.bfloat16 and x.shape == (256, 3, 32, 32)
    assert x.is_contiguous(memory_format=torch.channels_last)
    loader.set_epoch(0)
    again = run_epoch(loader, max_batches=2)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    second = run_epoch(loader, max_batches=2)  # the next epoch: new order and new draws
    assert not torch.equal(first[1], second[1])
    # augmentation happened: most images are not any stored image any more
    ref = {img.tobytes() for img in split_arrays["train"][0]}
    changed = sum(img.tobytes() not in ref for img in to_uint8_nhwc(x.float()))
    assert changed > len(x) // 2


def _colours_come_from_a_stored_image(images: np.ndarray, labels: np.ndarray, ref_images, ref_labels) -> np.ndarray:
    """Per yielded image: are all its RGB triples found in one stored image of its label?

    Flip and reflect-padded crop only move pixels, so without RandAugment this holds for every
    image; RandAugment's colour operations (and its affine fills) break it for most.
    """

    def triples(img: np.ndarray) -> set[bytes]:
        return set(map(bytes, img.reshape(-1, 3)))

    by_label: dict[int, list[set[bytes]]] = {}
    for img, label in zip(ref_images, ref_labels):
        by_label.setdefault(int(label), []).append(triples(img))
    return np.array([any(triples(img) <= ref for ref in by_label[int(label)]) for img, label in zip(images, labels)])


@pytest.mark.parametrize("kind", KINDS)
def test_randaugment_off_keeps_flip_and_crop_only(kind, synthetic_root, split_arrays):
    ref_images, ref_labels = split_arrays["train"]
    extra = {"num_workers": 0} if kind == "torch" else {}  # torch: transforms in this process
    stored = {img.tobytes() for img in ref_images}
    kept = {}
    for randaugment in (False, True):
        if kind == "torch" or randaugment:
            loader = make(
                kind,
                "train",
                synthetic_root,
                split_arrays["train"],
                batch_size=64,
                seed=5,
                randaugment=randaugment,
                **extra,
            )
        else:  # build_loader's plumbing of the flag, for the kinds whose construction is cheap enough
            loader = build_loader(
                kind,
                "train",
                root=synthetic_root,
                dataset="synthetic",
                batch_size=64,
                seed=5,
                randaugment=False,
                num_workers=WORKERS[kind],
            )
        x, y = run_epoch(loader, max_batches=2)
        images = to_uint8_nhwc(x)
        assert sum(img.tobytes() not in stored for img in images) > len(images) // 4  # augmented
        kept[randaugment] = _colours_come_from_a_stored_image(images, y.numpy(), ref_images, ref_labels)
    assert kept[False].all()  # flipped and cropped copies of stored images
    assert kept[True].mean() < 0.5


def test_gpu_loader_same_seed_same_batches_other_seed_not(split_arrays):
    images, labels = split_arrays["train"]

    def epoch(seed):
        return run_epoch(GpuLoader.from_arrays(images, labels, train=True, batch_size=64, seed=seed), 3)

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


# --- rank sharding ---------------------------------------------------------------------------------


def shard_records(loaders, ref_images, ref_labels) -> list[list[int]]:
    out = []
    for loader in loaders:
        x, y = run_epoch(loader)
        out.append(record_indices(to_uint8_nhwc(x), y.numpy(), ref_images, ref_labels))
    return out


def assert_disjoint(shards: list[list[int]]) -> None:
    flat = [i for s in shards for i in s]
    assert len(set(flat)) == len(flat)


@pytest.mark.parametrize("kind", ["gpu", "torch"])
def test_rank_shards_disjoint_equal_train_and_covering_test(kind, split_arrays):
    from fastcifar.data.loaders.torch_loader import TorchLoader

    world = 3
    build = GpuLoader.from_arrays if kind == "gpu" else TorchLoader
    extra = {} if kind == "gpu" else {"num_workers": 0}
    for split, batch in (("train", 32), ("test", 50)):
        images, labels = split_arrays[split]
        n = len(labels)
        loaders = [
            build(
                images,
                labels,
                train=split == "train",
                batch_size=batch,
                augment=False,
                rank=r,
                world_size=world,
                **extra,
            )
            for r in range(world)
        ]
        shards = shard_records(loaders, images, labels)
        assert_disjoint(shards)
        if split == "train":
            per_rank = (n // world // batch) * batch
            assert [len(s) for s in shards] == [per_rank] * world == [ld.num_samples for ld in loaders]
        else:
            assert sorted(i for s in shards for i in s) == list(range(n))
            assert [len(s) for s in shards] == [len(range(r, n, world)) for r in range(world)]


def test_ffcv_shards_through_torch_distributed(synthetic_root, split_arrays, monkeypatch):
    """FFCV's DistributedSampler reads rank/world size from torch.distributed (faked here)."""
    import torch.distributed as dist

    with pytest.raises(UserError, match="init_process_group"):
        make("ffcv", "train", synthetic_root, world_size=2, rank=1)
    world, batch = 2, 64
    images, labels = split_arrays["train"]
    n = len(labels)
    # Sizes where neither DistributedSampler padding nor drop_last removes anything: full cover.
    assert n % (world * batch) == 0
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a, **k: world)
    loaders = []
    for rank in range(world):
        monkeypatch.setattr(dist, "get_rank", lambda *a, r=rank, **k: r)
        loaders.append(
            make("ffcv", "train", synthetic_root, batch_size=batch, augment=False, rank=rank, world_size=world)
        )
    shards = shard_records(loaders, images, labels)
    assert_disjoint(shards)
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(s) for s in shards] == [n // world] * world == [ld.num_samples for ld in loaders]


# --- CUDA ------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_loader_on_cuda_never_synchronises():
    # In-memory synthetic arrays: this check needs no FFCV, so it also runs where FFCV is absent.
    from fastcifar.data.synthetic import make_arrays

    images, labels, _ = make_arrays(1024, num_classes=100, seed=0)
    loader = GpuLoader.from_arrays(
        images, labels, device="cuda", train=True, batch_size=128, dtype=torch.bfloat16, channels_last=True
    )
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = list(loader)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    x, y = batches[-1]
    assert x.is_cuda and y.is_cuda and x.dtype == torch.bfloat16 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert sum(len(b[1]) for b in batches) == loader.num_samples


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["ffcv", "torch"])
def test_cpu_fed_loaders_deliver_on_cuda(kind, synthetic_root, split_arrays):
    ref_images, ref_labels = split_arrays["test"]
    x, y = run_epoch(make(kind, "test", synthetic_root, batch_size=64, device="cuda"))
    assert x.is_cuda and y.is_cuda
    assert np.array_equal(y.cpu().numpy(), ref_labels) and np.array_equal(to_uint8_nhwc(x), ref_images)
