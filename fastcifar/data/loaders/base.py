"""What the three loaders share: the Loader protocol, epoch bookkeeping, seeds and rank sharding.

Every loader yields ``(images, labels)``: images float ``(B, 3, 32, 32)`` normalised on the
device (requested dtype and memory format), labels int64 ``(B,)`` on the device.

Epochs: ``iter(loader)`` runs the current epoch and then advances it by one, so plain repeated
iteration reshuffles; ``set_epoch(e)`` picks the epoch the next iteration runs (shuffle and
augmentation are a pure function of ``(seed, epoch, rank)``).

Sharding (``world_size > 1``): all ranks draw the same permutation (seeded by ``(seed, epoch)``)
and rank ``r`` takes the strided slice ``perm[r::world_size]``.

- train: the slice stops at ``(n // world_size) * world_size`` so every rank gets the same number
  of samples (``DistributedSampler(drop_last=True)`` arithmetic; fixed shapes for DDP and compile);
- test: the slice runs to ``n``: the ranks together cover every image exactly once; their sizes
  differ by at most one.
"""

from __future__ import annotations

import contextlib
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from fastcifar.errors import UserError

SPLITS = ("train", "test")


@runtime_checkable
class Loader(Protocol):
    """The interface training and evaluation code rely on."""

    num_samples: int

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def derive_seed(*parts: int) -> int:
    """Mix integers (seed, epoch, rank, ...) into one 63-bit seed.

    ``SeedSequence`` hashes the tuple, so neighbouring inputs such as (0, 1) and (1, 0) give
    unrelated streams, which ``seed + epoch`` style arithmetic would not.
    """
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def make_generator(device: torch.device | str, *parts: int) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded from ``derive_seed(*parts)``."""
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(derive_seed(*parts))
    return generator


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count on exit.

    Why: FFCV's ``Compiler.set_num_threads`` (run by every FFCV ``Loader``, e.g. inside
    ``read_beton``) also calls ``torch.set_num_threads(num_workers)``, silently changing the
    thread count the caller's model and our transforms run with.
    """
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_split(split: str) -> None:
    """Raise a UserError for anything but ``train`` / ``test``."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}.")


def check_rank(rank: int, world_size: int) -> None:
    """Raise a UserError unless ``0 <= rank < world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(
            f"rank {rank} and world_size {world_size} are inconsistent; "
            "need world_size >= 1 and 0 <= rank < world_size."
        )


def shard_slice(n: int, rank: int, world_size: int, *, equal: bool) -> slice:
    """The slice of a length-``n`` (permuted) index sequence that ``rank`` owns.

    ``equal=True`` drops the last ``n % world_size`` entries so all ranks get ``n // world_size``;
    ``equal=False`` keeps them, so the ranks cover all ``n`` entries exactly once.
    """
    stop = (n // world_size) * world_size if equal else n
    return slice(rank, stop, world_size)


def shard_size(n: int, rank: int, world_size: int, *, equal: bool) -> int:
    """Length of :func:`shard_slice` without materialising it."""
    return len(range(n)[shard_slice(n, rank, world_size, equal=equal)])


def num_batches(num_items: int, batch_size: int, drop_last: bool) -> int:
    """Batches per epoch over ``num_items`` samples."""
    return num_items // batch_size if drop_last else math.ceil(num_items / batch_size)


def check_batches(kind: str, split: str, per_rank: int, batch_size: int, drop_last: bool) -> None:
    """A loader that would yield no batch at all is a user mistake: say how to fix it."""
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}.")
    if per_rank == 0 or num_batches(per_rank, batch_size, drop_last) == 0:
        raise UserError(
            f"batch_size {batch_size} is larger than the {per_rank} {split} images this rank gets "
            f"({kind} loader, drop_last={drop_last}); use a smaller --batch_size or more data."
        )


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Most CPU workers a loader starts when not told. torch: one DataLoader process (a whole Python
# interpreter with a copy of the transforms) per core stops paying off beyond ~8; ffcv: numba
# threads decoding raw pixels, one per core.
_MAX_DEFAULT_WORKERS = {"ffcv": None, "torch": 8}


def default_num_workers(kind: str) -> int:
    """CPU workers loader ``kind`` uses by default: one per usable core, capped per kind (at least 1)."""
    cap = _MAX_DEFAULT_WORKERS.get(kind)
    cores = usable_cores()
    return max(1, cores if cap is None else min(cap, cores))


@dataclass
class LoaderOptions:
    """What every loader is asked for besides its data and split: the one declaration of those options.

    :func:`~fastcifar.data.loaders.build_loader` and every loader's constructor take these fields as
    keyword arguments and pass them on whole; :class:`LoaderBase` builds this object from them, so
    a misspelt name is a ``TypeError`` and an impossible rank a ``UserError`` wherever they enter.

    Attributes:
        batch_size: images per batch (per rank).
        device: where batches are delivered (and, for ``gpu``, where the split is stored).
        augment: train only: the study's augmentation; ``False`` normalises only.
        randaugment: with ``augment``: include RandAugment(2, 10); ``False``: flip + crop only.
        seed: shuffle and augmentation seed; epochs and ranks derive theirs from it.
        num_workers: CPU workers (``ffcv``: numba threads, ``torch``: DataLoader processes);
            ``None`` picks from the available cores; ignored by ``gpu``.
        rank, world_size: data-parallel sharding (``ffcv`` also needs torch.distributed initialised).
        dtype, channels_last: dtype and memory format of the images.
        drop_last: default: ``True`` for train, ``False`` for test.
    """

    batch_size: int = 256
    device: torch.device | str = "cpu"
    augment: bool = True
    randaugment: bool = True
    seed: int = 0
    num_workers: int | None = None
    rank: int = 0
    world_size: int = 1
    dtype: torch.dtype = torch.float32
    channels_last: bool = False
    drop_last: bool | None = None

    def __post_init__(self) -> None:
        check_rank(self.rank, self.world_size)
        self.device = torch.device(self.device)
        self.batch_size, self.seed = int(self.batch_size), int(self.seed)
        self.rank, self.world_size = int(self.rank), int(self.world_size)
        self.randaugment = bool(self.randaugment)


def build_transform(train: bool, options: LoaderOptions) -> torch.nn.Module:
    """Our batched transform: the study's train augmentation (RandAugment optional), or normalise-only.

    Normalisation uses ImageNet mean/std, as the study does.
    """
    from fastcifar.augment import IMAGENET_MEAN, IMAGENET_STD, TestTransform, TrainTransform

    # Normalisation, dtype and memory format: the same for both.
    output = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype=options.dtype, channels_last=options.channels_last)
    if train and options.augment:
        return TrainTransform(**output, randaugment=options.randaugment)
    return TestTransform(**output)


def read_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A whole beton decoded once into memory: uint8 images ``(N, 32, 32, 3)`` and fine labels ``(N,)``."""
    from fastcifar.data.beton import read_beton

    with keep_torch_threads():
        images, fine, _coarse = read_beton(path)
    return images, fine


class LoaderBase(ABC):
    """What every loader's constructor does, epoch bookkeeping and ``len()``.

    Subclasses call ``super().__init__(train=..., **options)`` with the :class:`LoaderOptions`
    keywords they were given, then :meth:`_set_num_items` once they know how many samples this
    rank gets, and implement :meth:`from_beton` and :meth:`_iter_epoch`.
    """

    kind: str  # the registry name ("ffcv", "gpu", "torch"), used in messages
    num_items: int

    def __init__(self, *, train: bool, **options: Any) -> None:
        self.options = LoaderOptions(**options)
        self.epoch = 0
        self.train = bool(train)
        self.device = self.options.device
        self.batch_size = self.options.batch_size
        self.drop_last = self.train if self.options.drop_last is None else bool(self.options.drop_last)
        self.seed, self.rank, self.world_size = self.options.seed, self.options.rank, self.options.world_size

    @classmethod
    @abstractmethod
    def from_beton(cls, path: str | Path, *, train: bool, **options: Any) -> LoaderBase:
        """A loader over a beton written by ``prepare``; ``options``: :class:`LoaderOptions` fields."""

    def _set_num_items(self, num_items: int) -> None:
        """Samples this rank gets per epoch before batching; a UserError if that makes no batch."""
        self.num_items = int(num_items)
        check_batches(self.kind, "train" if self.train else "test", self.num_items, self.batch_size, self.drop_last)

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (after drop_last)."""
        if self.drop_last:
            return len(self) * self.batch_size
        return self.num_items

    def __len__(self) -> int:
        return num_batches(self.num_items, self.batch_size, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next iteration runs (its shuffle and augmentation)."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self.epoch
        self.epoch += 1
        return self._iter_epoch(epoch)

    @abstractmethod
    def _iter_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches of ``epoch``."""
