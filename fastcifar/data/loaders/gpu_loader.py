"""``gpu`` loader: the whole split lives on the device as uint8; batches are index_select + our transform.

Per epoch one ``torch.randperm`` on the device (generator seeded by ``(seed, epoch)``, the same on
every rank), then each rank takes its shard of it (see :mod:`.base`). Per step: an
``index_select`` with a device index tensor, and the batched augmentation driven by a device
generator seeded by ``(seed, epoch, rank)``. Batch boundaries are Python integers computed once,
so a step does no host work and no host synchronisation (no ``.item()``, ``.cpu()``, ``nonzero``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from fastcifar.data.loaders.base import (
    LoaderBase,
    build_transform,
    check_batches,
    check_rank,
    keep_torch_threads,
    make_generator,
    shard_size,
    shard_slice,
)


class GpuLoader(LoaderBase):
    """Batches from a split held in device memory.

    Args:
        images: uint8 ``(N, 3, 32, 32)`` on ``device``.
        labels: int64 ``(N,)`` on ``device``.
        train: shuffle, augment (when ``augment``) and drop the last partial batch by default.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        train: bool,
        batch_size: int = 256,
        augment: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        drop_last: bool | None = None,
    ) -> None:
        super().__init__()
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be (N,) = ({images.shape[0]},), got {tuple(labels.shape)}")
        check_rank(rank, world_size)
        self.images = images
        self.labels = labels.to(device=images.device, dtype=torch.int64)
        self.device = images.device
        self.train = train
        self.batch_size = int(batch_size)
        self.drop_last = train if drop_last is None else bool(drop_last)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        n = images.shape[0]
        # Train shards are equal-sized (fixed shapes for DDP); test shards cover every image.
        self._equal_shards = train
        self.num_items = shard_size(n, self.rank, self.world_size, equal=self._equal_shards)
        check_batches("gpu", "train" if train else "test", self.num_items, self.batch_size, self.drop_last)
        self.transform = build_transform(train, augment, dtype, channels_last).to(self.device)

    @classmethod
    def from_arrays(
        cls,
        images_nhwc_uint8: np.ndarray | torch.Tensor,
        labels: np.ndarray | torch.Tensor,
        *,
        device: torch.device | str = "cpu",
        **kwargs,
    ) -> "GpuLoader":
        """Build from in-memory arrays (no FFCV needed).

        Args:
            images_nhwc_uint8: ``(N, 32, 32, 3)`` uint8, numpy or torch.
            labels: ``(N,)`` integer class ids.
            device: where the split is stored and batches are produced.
            **kwargs: the keyword arguments of :class:`GpuLoader` (``train`` is required).
        """
        images = torch.as_tensor(images_nhwc_uint8)
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
        # One host->device copy, then NCHW-contiguous so index_select gathers whole images.
        images = images.to(device).permute(0, 3, 1, 2).contiguous()
        labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64)).to(device)
        return cls(images, labels_t, **kwargs)

    @classmethod
    def from_beton(cls, path: str | Path, *, device: torch.device | str = "cpu", **kwargs) -> "GpuLoader":
        """Decode a whole beton once (through FFCV) and keep it on ``device``."""
        from fastcifar.data.beton import read_beton

        with keep_torch_threads():
            images, fine, _coarse = read_beton(path)
        return cls.from_arrays(images, fine, device=device, **kwargs)

    def _iter_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = self.images.shape[0]
        if self.train:
            order = torch.randperm(
                n, generator=make_generator(self.device, self.seed, epoch), device=self.device
            )
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
