"""``ffcv`` loader: FFCV reads and decodes the beton on CPU threads; our transform runs per batch.

Image pipeline: ``SimpleRGBImageDecoder -> ToTensor -> ToDevice(non_blocking) -> ToTorchImage``,
which yields a uint8 ``(B, 3, 32, 32)`` *view* of FFCV's NHWC buffer (channels_last strides, no
copy); the buffer is reused a few batches later, so our transform (which writes a new tensor) runs
in this iterator right after FFCV yields, never later. Labels: ``IntDecoder -> ToTensor -> Squeeze
-> ToDevice``, cloned for the same reason.

Order: train ``RANDOM``, test ``SEQUENTIAL``. Not ``QUASI_RANDOM``: it runs on small betons
(even a single page), but its ``sample_order`` shuffles its page table in place and re-seeds from
that mutated state, so an epoch's order depends on every order drawn before (measured: two
iterations of epoch 0 gave different orders), which breaks ``set_epoch`` and resuming; and it
only pays off when the dataset does not fit in the page cache, while CIFAR (150 MB) does.
``RANDOM`` permutes with ``np.random.default_rng(seed + epoch)``: a pure function of the epoch.
With ``world_size > 1`` FFCV's orders build a ``torch.utils.data.DistributedSampler`` without
``num_replicas``/``rank``, i.e. they read both from the initialised default process group; we
check they match ``rank``/``world_size``. That sampler pads every rank to ``ceil(N / world_size)``
samples by repeating a few, also for test.

Seeds: the FFCV order seed is derived from ``seed`` (so seeds 0 and 1 do not give shifted copies
of the same epoch sequence); our augmentation draws from a generator seeded by
``(seed, epoch, rank)``.

Threads: FFCV sets torch's thread count to ``num_workers`` when a Loader is built and when an
epoch starts; we restore the caller's count after both (see ``_iter_epoch``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fastcifar.data.loaders.base import (
    LoaderBase,
    build_transform,
    default_num_workers,
    derive_seed,
    keep_torch_threads,
    make_generator,
)
from fastcifar.errors import UserError


def _check_process_group(rank: int, world_size: int) -> None:
    """FFCV's distributed orders read rank/world size from torch.distributed: they must agree."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise UserError(
            "the ffcv loader with world_size > 1 reads its shard from torch.distributed; "
            "call torch.distributed.init_process_group before build_loader."
        )
    if (dist.get_rank(), dist.get_world_size()) != (rank, world_size):
        raise UserError(
            f"rank/world_size {rank}/{world_size} differ from torch.distributed's "
            f"{dist.get_rank()}/{dist.get_world_size()}; pass the process group's values."
        )


class FfcvLoader(LoaderBase):
    """FFCV ``Loader`` over a beton, followed by our batched transform on ``device``."""

    kind = "ffcv"

    def __init__(self, path: str | Path, *, train: bool, batches_ahead: int = 3, **options: Any) -> None:
        """``options``: the :class:`.base.LoaderOptions`; ``batches_ahead``: FFCV's read-ahead depth."""
        super().__init__(train=train, **options)
        from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
        from ffcv.loader import Loader as FfcvBaseLoader
        from ffcv.loader import OrderOption
        from ffcv.transforms import Squeeze, ToDevice, ToTensor, ToTorchImage

        distributed = self.world_size > 1
        if distributed:
            _check_process_group(self.rank, self.world_size)
        # See the module doc for why not QUASI_RANDOM.
        order = OrderOption.RANDOM if self.train else OrderOption.SEQUENTIAL

        # On a CPU device ToDevice would only copy into a second CPU buffer: skip it there.
        to_device = [] if self.device.type == "cpu" else [ToDevice(self.device, non_blocking=True)]
        pipelines = {
            "image": [SimpleRGBImageDecoder(), ToTensor(), *to_device, ToTorchImage(channels_last=True)],
            "label": [IntDecoder(), ToTensor(), Squeeze(), *to_device],
            "coarse_label": None,  # not needed for training: skip decoding it
        }
        with keep_torch_threads():  # FFCV's constructor sets torch's thread count
            self._ffcv = FfcvBaseLoader(
                str(path),
                batch_size=self.batch_size,
                num_workers=self.options.num_workers or default_num_workers(self.kind),
                order=order,
                distributed=distributed,
                seed=derive_seed(self.seed) % 2**31,
                pipelines=pipelines,
                drop_last=self.drop_last,
                batches_ahead=batches_ahead,
            )
        # Samples this rank gets per epoch before batching (DistributedSampler pads to ceil(N/W)).
        self._set_num_items(len(self._ffcv.first_traversal_order))
        self.transform = build_transform(self.train, self.options).to(self.device)

    @classmethod
    def from_beton(cls, path: str | Path, *, train: bool, **options: Any) -> FfcvLoader:
        """FFCV reads the beton itself, batch by batch."""
        return cls(path, train=train, **options)

    def _iter_epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # FFCV's __iter__ (and its producer thread, before the first batch) call
        # torch.set_num_threads(num_workers); put the caller's count back once the first batch is
        # in: our transform runs on this thread's torch threads, and a silently changed count
        # changes its speed several-fold on a small machine (bench/loaders.py).
        threads = torch.get_num_threads()
        # FFCV keys its shuffle on ``next_epoch`` and increments it in ``__iter__``.
        self._ffcv.next_epoch = epoch
        aug_generator = make_generator(self.device, self.seed, epoch, self.rank)
        for index, (images, labels) in enumerate(self._ffcv):
            if index == 0:
                torch.set_num_threads(threads)
            yield self.transform(images, generator=aug_generator), labels.clone()
