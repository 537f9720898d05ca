"""The loader registry: ``build_loader(kind, split, ...)`` for kinds ``ffcv``, ``gpu`` and ``torch``.

Each loader yields ``(images, labels)``: images float ``(B, 3, 32, 32)`` normalised with ImageNet
mean/std on ``device`` in ``dtype`` (channels_last strides when asked), labels int64 ``(B,)`` on
``device``. Train: shuffled, augmented (flip, reflect crop, RandAugment(2, 10)), last partial
batch dropped. Test: in order, every image once, last partial batch kept, no augmentation.
See :mod:`fastcifar.data.loaders.base` for epochs, seeds and rank sharding.

Backends are imported on first use, so ``gpu`` over in-memory arrays needs neither FFCV nor PIL.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fastcifar.data.loaders import gpu
from fastcifar.data.loaders.base import Loader, LoaderBase, check_rank, check_split, default_num_workers
from fastcifar.data.loaders.gpu import GpuLoader
from fastcifar.errors import UserError

__all__ = ["GpuLoader", "Loader", "LoaderBase", "build_loader", "default_num_workers", "gpu", "list_loaders"]


def _gpu(path: Path, train: bool, opts: dict[str, Any]) -> Loader:
    opts.pop("num_workers")  # nothing runs on workers
    device = opts.pop("device")
    return GpuLoader.from_beton(path, device=device, train=train, **opts)


def _ffcv(path: Path, train: bool, opts: dict[str, Any]) -> Loader:
    from fastcifar.data.loaders.ffcv_loader import FfcvLoader

    return FfcvLoader(path, train=train, **opts)


def _torch(path: Path, train: bool, opts: dict[str, Any]) -> Loader:
    from fastcifar.data.loaders.torch_loader import TorchLoader

    return TorchLoader.from_beton(path, train=train, **opts)


_KINDS: dict[str, Callable[[Path, bool, dict[str, Any]], Loader]] = {
    "ffcv": _ffcv,
    "gpu": _gpu,
    "torch": _torch,
}


def list_loaders() -> list[str]:
    """Names accepted by :func:`build_loader`."""
    return sorted(_KINDS)


def beton_path(root: str | Path, dataset: str, split: str) -> Path:
    """``<root>/<dataset>/<split>.beton``, checked before any loader reads it.

    Checks, in order, each failure a one-line UserError naming the prepare command to run: the
    beton exists; FFCV is importable; meta.json is sound; the beton hashes to what meta.json
    recorded (cached, see :mod:`fastcifar.data.integrity`); FFCV can open it; its labels lie
    within the class counts.
    """
    from fastcifar.data.prepare import dataset_dir, load_meta, prepare_command, verify_beton

    path = dataset_dir(root, dataset) / f"{split}.beton"
    command = f"`{prepare_command(root, dataset)}`"
    if not path.is_file():
        raise UserError(f"{path} does not exist; run {command} first.")
    try:
        import ffcv  # noqa: F401  every kind reads betons through FFCV
    except ImportError as err:
        raise UserError(
            f"reading {path} needs FFCV, which is not importable ({err}); install it, or build the gpu "
            "loader from arrays: GpuLoader.from_arrays(images, labels, ...)."
        ) from None
    meta = load_meta(root, dataset)
    command = f"`{prepare_command(root, dataset, meta['source'])}`"
    verify_beton(root, dataset, path.name, meta)
    # The data package's beton check (header, fields, truncation); reworded to name the command.
    from fastcifar.data.beton import check_labels_in_beton, open_checked

    try:
        reader = open_checked(path)
    except UserError as err:
        raise UserError(f"{path} is corrupt or incomplete ({err}); run {command} again.") from None
    check_labels_in_beton(reader, path, meta["num_classes"], len(meta["superclasses"]), command.strip("`"))
    return path


def build_loader(
    kind: str,
    split: str,
    *,
    root: str | Path = "data",
    dataset: str = "cifar100",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    augment: bool = True,
    randaugment: bool = True,
    seed: int = 0,
    num_workers: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    drop_last: bool | None = None,
) -> Loader:
    """Build a loader over ``<root>/<dataset>/<split>.beton``.

    Args:
        kind: ``"ffcv"``, ``"gpu"`` or ``"torch"`` (see :func:`list_loaders`).
        split: ``"train"`` or ``"test"``.
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
    Returns:
        A :class:`Loader`: iterable of ``(images, labels)`` with ``len()``, ``num_samples`` and
        ``set_epoch(epoch)``.
    """
    if kind not in _KINDS:
        raise UserError(f"unknown loader kind {kind!r}; choose one of: {', '.join(list_loaders())}.")
    check_split(split)
    check_rank(rank, world_size)
    path = beton_path(root, dataset, split)
    opts: dict[str, Any] = dict(
        batch_size=int(batch_size),
        device=device,
        augment=augment,
        randaugment=bool(randaugment),
        seed=int(seed),
        num_workers=num_workers,
        rank=int(rank),
        world_size=int(world_size),
        dtype=dtype,
        channels_last=channels_last,
        drop_last=drop_last,
    )
    return _KINDS[kind](path, split == "train", opts)
