"""``torch`` loader: the study's pipeline, kept as the baseline every benchmark compares against.

Per image, in DataLoader worker processes, on PIL images: RandomHorizontalFlip ->
RandomCrop(32, padding=4, padding_mode="reflect") -> RandAugment(2, 10) -> ToTensor ->
Normalize(ImageNet mean/std) (test: ToTensor -> Normalize). It reads the same data as the other
loaders: the beton is decoded once into numpy (``read_beton``) and images are served from there.

Order and sharding: train uses ``DistributedSampler(num_replicas=world_size, rank=rank,
shuffle=True, seed=seed, drop_last=True)`` (for one rank too: then it is a plain seeded shuffle),
whose arithmetic matches :mod:`.base`; test takes ``range(N)[rank::world_size]``.

Seeds: worker ``w`` seeds torch (which torchvision's random transforms use) from the DataLoader's
generator, seeded here by ``(seed, epoch, rank)``; workers are started per epoch so
``set_epoch`` fully determines the augmentation. With ``num_workers=0`` the transforms run in
this process on torch's global generator, so augmentation then follows the global seed instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from fastcifar.data.checks import as_images, as_labels
from fastcifar.data.loaders.base import LoaderBase, default_num_workers, make_generator, read_split, shard_slice


def study_transform(train: bool, augment: bool, randaugment: bool = True):
    """The study's torchvision transform for one PIL image -> float ``(3, 32, 32)`` tensor.

    ``randaugment=False`` leaves out ``T.RandAugment`` (flip + crop only).
    """
    from torchvision import transforms as T

    from fastcifar.augment import IMAGENET_MEAN, IMAGENET_STD

    tail = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if not (train and augment):
        return T.Compose(tail)
    geometric = [T.RandomHorizontalFlip(), T.RandomCrop(32, padding=4, padding_mode="reflect")]
    colour = [T.RandAugment(num_ops=2, magnitude=10)] if randaugment else []
    return T.Compose([*geometric, *colour, *tail])


class ArrayImageDataset(Dataset):
    """Serves ``(transform(PIL image), label)`` from uint8 ``(N, 32, 32, 3)`` and ``(N,)`` arrays."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


class TorchLoader(LoaderBase):
    """torch ``DataLoader`` with PIL transforms in workers; batches moved to ``device``."""

    kind = "torch"

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, train: bool, **options: Any) -> None:
        """Serve uint8 ``(N, 32, 32, 3)`` images and ``(N,)`` labels; ``options``: the :class:`.base.LoaderOptions`."""
        super().__init__(train=train, **options)
        opts = self.options
        self.dtype = opts.dtype
        self.memory_format = torch.channels_last if opts.channels_last else torch.contiguous_format
        self.num_workers = default_num_workers(self.kind) if opts.num_workers is None else int(opts.num_workers)
        images = as_images(images, "TorchLoader images", (32, 32, 3))
        transform = study_transform(train, opts.augment, opts.randaugment)
        self.dataset = ArrayImageDataset(images, as_labels(labels, "TorchLoader labels"), transform)
        n = len(self.dataset)
        self.sampler: DistributedSampler | Sequence[int]
        if self.train:
            self.sampler = DistributedSampler(
                self.dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=self.seed, drop_last=True
            )
        else:
            self.sampler = range(n)[shard_slice(n, self.rank, self.world_size, equal=False)]
        self._set_num_items(len(self.sampler))

    @classmethod
    def from_beton(cls, path: str | Path, *, train: bool, **options: Any) -> TorchLoader:
        """Decode the beton once into numpy and serve PIL images from it."""
        return cls(*read_split(path), train=train, **options)

    def _iter_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        batches = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=self.drop_last,
            generator=make_generator("cpu", self.seed, epoch, self.rank),
        )
        for images, labels in batches:
            yield (
                images.to(self.device, self.dtype, non_blocking=True, memory_format=self.memory_format),
                labels.to(self.device, non_blocking=True),
            )
