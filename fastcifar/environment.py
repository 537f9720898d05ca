"""What a result depends on besides the code: package versions and the machine."""

from __future__ import annotations

import platform
from importlib import metadata

__all__ = ["package_version", "package_versions", "versions"]


def versions() -> dict[str, str | None]:
    """Versions of everything that affects speed or numerics."""
    import numpy
    import torch

    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
    }
    for name in ("torchvision", "triton", "ffcv"):
        found[name] = package_version(name)
    return found


def package_version(package: str) -> str | None:
    """The installed distribution version of ``package`` (PyPI name), or None when not installed.

    Package metadata, not ``module.__version__``: no import needed, and FFCV's module attribute is stale.
    """
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python and the installed version of each package ("absent" when not installed)."""
    found = {"python": platform.python_version()}
    for package in packages:
        found[package] = package_version(package) or "absent"
    return found
