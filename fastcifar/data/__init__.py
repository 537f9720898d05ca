"""CIFAR data: archive download/verification, FFCV beton writing, synthetic archives, loaders.

Heavy modules (ffcv, torchvision) are imported lazily so ``import fastcifar.data`` stays cheap
and works on machines without FFCV (the ``gpu`` loader over in-memory data needs none).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "prepare": "fastcifar.data.prepare",
    "dataset_dir": "fastcifar.data.prepare",
    "load_meta": "fastcifar.data.prepare",
    "build_loader": "fastcifar.data.loaders",
    "list_loaders": "fastcifar.data.loaders",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fastcifar.data' has no attribute {name!r}")


__all__ = sorted(_LAZY)
