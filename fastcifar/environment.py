"""What a result depends on besides the code: package versions and the machine."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "cpu_name",
    "is_rank_zero",
    "machine_record",
    "nvidia_driver",
    "package_version",
    "package_versions",
    "versions",
]


def is_rank_zero() -> bool:
    """Rank 0 of a torchrun job, or a single process: the one that prints and writes.

    Read from torchrun's ``RANK`` variable, so it holds before the process group exists (flag
    checks, the run folder's lock).
    """
    return os.environ.get("RANK", "0") == "0"


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


def machine_record(device: Any = None, packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """:func:`versions` and the machine a result was measured on, one shape for every result file.

    ``device`` (a ``torch.device``, a string or None when nothing ran on a device) adds
    ``device_type`` and, for CUDA, that device's name, SM count, memory and the driver version.
    ``packages`` adds the installed version of further packages (None when not installed). The load
    average is taken now: a shared machine's contention when the record is made.
    """
    import torch

    record: dict[str, Any] = {**versions(), **{name: package_version(name) for name in packages}}
    device = torch.device(device) if device is not None else None
    record.update(
        device_type=device.type if device is not None else None,
        cpu=cpu_name(),
        cpu_count=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        load_average=[round(v, 2) for v in os.getloadavg()],
        triton_interpret=os.environ.get("TRITON_INTERPRET"),
    )
    if device is not None and device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(
            gpu=props.name,
            sm_count=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            driver=nvidia_driver(),
        )
    return record


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (falls back to platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def nvidia_driver() -> str | None:
    """The NVIDIA driver version as ``nvidia-smi`` reports it, or None without one."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None
