"""What every benchmark shares: device sync, atomic result files, the machine and package record."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import torch

from fastcifar.atomic import write_text_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS_DIR", "cpu_name", "package_versions", "sync", "write_text_atomic"]


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work so host clocks measure it (no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (falls back to platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python and the installed version of each package ("absent" when not installed)."""
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions
