"""The two ceilings every figure is read against: device-to-device copy bandwidth and bf16 matmul rate.

Both are measured, not taken from a datasheet.
Copy bandwidth counts bytes read plus bytes written. On a CPU the same code runs on small sizes so
the suite stays testable; those CPU figures are labelled as such and are not GPU claims.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _median_seconds(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` in seconds; CUDA work is timed with events after a warm-up."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 20) -> dict:
    """Measured device-to-device copy bandwidth in GB/s (read + write bytes over time)."""
    if nbytes is None:
        nbytes = 2 << 30 if device.type == "cuda" else 64 << 20
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = _median_seconds(lambda: dst.copy_(src), device, warmup=3, repeats=repeats)
    return {"bytes": nbytes, "seconds": seconds, "gb_per_s": 2 * nbytes / seconds / 1e9}


def matmul_rate(device: torch.device, n: int | None = None, repeats: int = 10) -> dict:
    """Measured bf16 (CUDA) or fp32 (CPU) square matmul rate in TFLOP/s, on random data."""
    if n is None:
        n = 8192 if device.type == "cuda" else 512
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _median_seconds(lambda: a @ b, device, warmup=3, repeats=repeats)
    return {
        "n": n,
        "dtype": str(dtype).removeprefix("torch."),
        "seconds": seconds,
        "tflop_per_s": 2 * n**3 / seconds / 1e12,
    }
