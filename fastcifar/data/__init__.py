"""CIFAR data: archive download/verification, FFCV beton writing, synthetic archives, loaders.

Modules: :mod:`.archive` (official archives), :mod:`.synthetic` (generated look-alikes),
:mod:`.checks` (image/label checks), :mod:`.beton` (FFCV files), :mod:`.integrity` (content
hashes), :mod:`.prepare` (archive -> betons +
meta.json; its function is ``fastcifar.data.prepare.prepare``), :mod:`.loaders` (``build_loader``).

Heavy modules (ffcv, torchvision) are imported lazily so ``import fastcifar.data`` stays cheap
and works on machines without FFCV (the ``gpu`` loader over in-memory data needs none).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

# The datasets ``prepare`` writes and training reads: the one list (train.py's --dataset uses it).
DATASETS = ("cifar100", "cifar10", "synthetic")


def expand_root(root: str | os.PathLike) -> Path:
    """A data root as a path, ``~`` expanded, so ``--root ~/x`` and ``--data_root=~/x`` name one folder."""
    return Path(root).expanduser()


# Re-exported lazily. Not ``prepare``: ``fastcifar.data.prepare`` is the module (its function is
# ``fastcifar.data.prepare.prepare``); a function of the same name here would replace the module
# attribute depending on import order.
_LAZY = {
    "dataset_dir": "fastcifar.data.prepare",
    "load_meta": "fastcifar.data.prepare",
    "build_loader": "fastcifar.data.loaders",
    "list_loaders": "fastcifar.data.loaders",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastcifar.data' has no attribute {name!r}")


__all__ = ["DATASETS", "expand_root", *sorted(_LAZY)]
