"""The loader registry: ``build_loader(kind, split, ...)`` for kinds ``ffcv``, ``gpu`` and ``torch``.

Each loader yields ``(images, labels)``: images float ``(B, 3, 32, 32)`` normalised with ImageNet
mean/std on ``device`` in ``dtype`` (channels_last strides when asked), labels int64 ``(B,)`` on
``device``. Train: shuffled, augmented (flip, reflect crop, RandAugment(2, 10)), last partial
batch dropped. Test: in order, every image once, last partial batch kept, no augmentation.
See :mod:`fastcifar.data.loaders.base` for epochs, seeds and rank sharding.

Backends are imported on first use, so ``gpu`` over in-memory arrays needs neither FFCV nor PIL.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from fastcifar.data.loaders import gpu
from fastcifar.data.loaders.base import Loader, LoaderBase, LoaderOptions, check_split, default_num_workers
from fastcifar.data.loaders.gpu import GpuLoader
from fastcifar.errors import UserError

__all__ = [
    "GpuLoader",
    "Loader",
    "LoaderBase",
    "LoaderOptions",
    "build_loader",
    "default_num_workers",
    "gpu",
    "list_loaders",
]


# kind -> (module, class); the module is imported on first use.
_KINDS: dict[str, tuple[str, str]] = {
    "ffcv": ("fastcifar.data.loaders.ffcv_loader", "FfcvLoader"),
    "gpu": ("fastcifar.data.loaders.gpu", "GpuLoader"),
    "torch": ("fastcifar.data.loaders.torch_loader", "TorchLoader"),
}


def loader_class(kind: str) -> type[LoaderBase]:
    """The class that implements loader ``kind`` (one of :func:`list_loaders`)."""
    module, name = _KINDS[kind]
    return getattr(importlib.import_module(module), name)


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
    kind: str, split: str, *, root: str | Path = "data", dataset: str = "cifar100", **options: Any
) -> Loader:
    """Build a loader over ``<root>/<dataset>/<split>.beton``.

    Args:
        kind: ``"ffcv"``, ``"gpu"`` or ``"torch"`` (see :func:`list_loaders`).
        split: ``"train"`` or ``"test"``.
        root, dataset: the data folder and the dataset ``prepare`` wrote into it.
        **options: the fields of :class:`LoaderOptions` (``batch_size``, ``device``, ``augment``,
            ``randaugment``, ``seed``, ``num_workers``, ``rank``, ``world_size``, ``dtype``,
            ``channels_last``, ``drop_last``), passed on whole; their defaults and meaning are there.
    Returns:
        A :class:`Loader`: iterable of ``(images, labels)`` with ``len()``, ``num_samples`` and
        ``set_epoch(epoch)``.
    """
    if kind not in _KINDS:
        raise UserError(f"unknown loader kind {kind!r}; choose one of: {', '.join(list_loaders())}.")
    check_split(split)
    LoaderOptions(**options)  # names and rank checked before any file is read
    path = beton_path(root, dataset, split)
    return loader_class(kind).from_beton(path, train=split == "train", **options)
