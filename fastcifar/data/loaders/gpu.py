"""``gpu`` loader: the whole split lives on the device as uint8; batches are index_select + our transform.

Per epoch one ``torch.randperm`` on the device (generator seeded by ``(seed, epoch)``, the same on
every rank), then each rank takes its shard of it (see :mod:`.base`). Per step: an
``index_select`` with a device index tensor, and the batched augmentation driven by a device
generator seeded by ``(seed, epoch, rank)``. Batch boundaries are Python integers computed once,
so a step does no host work and no host synchronisation (no ``.item()``, ``.cpu()``, ``nonzero``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastcifar.data.checks import as_images, as_labels
from fastcifar.data.loaders.base import (
    LoaderBase,
    build_transform,
    make_generator,
    read_split,
    shard_size,
    shard_slice,
)
from fastcifar.errors import UserError


class GpuLoader(LoaderBase):
    """Batches from a split held in device memory.

    Args:
        images: uint8 ``(N, 3, 32, 32)`` on ``device``.
        labels: int64 ``(N,)`` on ``device``.
        train: shuffle, augment (when ``augment``) and drop the last partial batch by default.
        **options: the :class:`.base.LoaderOptions` fields but ``device`` (the images' device);
            ``num_workers`` is ignored: nothing runs on workers.
    """

    kind = "gpu"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, *, train: bool, **options: Any) -> None:
        as_images(images, "GpuLoader images", (3, None, None))
        if labels.shape != (images.shape[0],):
            raise UserError(f"GpuLoader labels must be (N,) = ({images.shape[0]},), got {tuple(labels.shape)}")
        super().__init__(train=train, device=images.device, **options)
        self.images = images
        self.labels = labels.to(device=images.device, dtype=torch.int64)
        # Train shards are equal-sized (fixed shapes for DDP); test shards cover every image.
        self._equal_shards = self.train
        self._set_num_items(shard_size(images.shape[0], self.rank, self.world_size, equal=self._equal_shards))
        self.transform = build_transform(self.train, self.options).to(self.device)

    @classmethod
    def from_arrays(
        cls,
        images_nhwc_uint8: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> GpuLoader:
        """Build from in-memory arrays (no FFCV needed).

        Args:
            images_nhwc_uint8: ``(N, H, W, 3)`` uint8, numpy or torch.
            labels: ``(N,)`` integer class ids, numpy or torch.
            device: where the split is stored and batches are produced.
            **kwargs: the keyword arguments of :class:`GpuLoader` (``train`` is required).
        """
        images = torch.as_tensor(as_images(images_nhwc_uint8, "from_arrays images", (None, None, 3)))
        if not isinstance(labels, torch.Tensor):
            labels = torch.from_numpy(as_labels(labels, "from_arrays labels"))
        # One host->device copy, then NCHW-contiguous so index_select gathers whole images.
        images = images.to(device).permute(0, 3, 1, 2).contiguous()
        return cls(images, labels.to(device), **kwargs)

    @classmethod
    def from_beton(cls, path: str | Path, *, device: torch.device | str = "cpu", **kwargs: Any) -> GpuLoader:
        """Decode a whole beton once (through FFCV) and keep it on ``device``."""
        return cls.from_arrays(*read_split(path), device=device, **kwargs)

    def _iter_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.images.shape[0]
        if self.train:
            order = torch.randperm(n, generator=make_generator(self.device, self.seed, epoch), device=self.device)
        else:
            order = torch.arange(n, device=self.device)
        order = order[shard_slice(n, self.rank, self.world_size, equal=self._equal_shards)]
        aug_generator = make_generator(self.device, self.seed, epoch, self.rank)
        bs = self.batch_size
        for b in range(len(self)):
            index = order[b * bs : (b + 1) * bs]
            images = self.images.index_select(0, index)
            labels = self.labels.index_select(0, index)
            yield self.transform(images, generator=aug_generator), labels
