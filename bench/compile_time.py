"""Compile time of one variant's training step, in this process: ``python -m bench.compile_time``.

Builds ``sk_densenet`` in the variant (:data:`fastcifar.training.variant.VARIANTS`), runs the
engine's training step (:func:`fastcifar.training.engine.train_step`) on one seeded batch a few
times and prints one JSON line: ``compile_seconds`` (the first step's time above the median of the
later steps: tracing, AOTAutograd, Inductor's code generation or cache loading, the backward's lazy
compile), ``first_step_seconds``, ``steady_step_seconds``, the Inductor FX graph cache lookups
(``hits``, ``misses``, ``bypasses``) and the cache folder. Losses are not checked (bf16 +
channels_last on CPU may give NaN, which does not change what compiling costs).

The suite (``bench/suite.py``, section ``compile_cache``) runs it twice in fresh processes sharing
one new ``TORCHINDUCTOR_CACHE_DIR``: cold (empty cache), then warm::

    TORCHINDUCTOR_CACHE_DIR=/tmp/cc python -m bench.compile_time --device cpu --tiny
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import torch

from bench.common import sync
from fastcifar.errors import UserError

PROG = "bench.compile_time"
ARCH = "sk_densenet"


def measure_compile(
    variant_name: str, device: torch.device | str, model_kwargs: dict[str, Any], batch_size: int, steps: int = 2
) -> dict[str, Any]:
    """Time ``1 + steps`` training steps of ``ARCH`` in ``variant_name``; see the module docstring."""
    from bench.train import _batch
    from fastcifar.training import engine
    from fastcifar.training.compile_cache import cache_counts, counts_since, resolve_cache_dir
    from fastcifar.training.variant import get_variant, resolve_device

    device = resolve_device(device)
    if device.type == "cpu":  # as bench.train: one batch trained repeatedly drifts into slow denormals
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    step = engine.build_step(
        ARCH, model_kwargs, get_variant(variant_name), device, lr=0.01, epochs=1, steps_per_epoch=steps + 1
    )
    images, labels = _batch(batch_size, device, seed=1)
    before = cache_counts()
    seconds = []
    for _ in range(steps + 1):
        sync(device)
        start = time.perf_counter()
        step(images, labels)
        sync(device)
        seconds.append(time.perf_counter() - start)
    steady = statistics.median(seconds[1:])
    return {
        "variant": variant_name,
        "compile_seconds": max(seconds[0] - steady, 0.0),
        "first_step_seconds": seconds[0],
        "steady_step_seconds": steady,
        "lookups": counts_since(before),
        "cache_dir": resolve_cache_dir()[0],
        "batch_size": batch_size,
    }


def main(
    variant: str | None = None,
    device: str | None = None,
    tiny: bool = False,
    model_kwargs: dict | None = None,
    batch_size: int | None = None,
) -> None:
    """Compile one variant's training step in this process and print the figures as one JSON line.

    Args:
        variant: a VARIANTS name (default: the fast variant, fastcifar.training.variant.FAST).
        device: cuda or cpu (default: cuda when available).
        tiny: the registered tiny sk_densenet at batch 8.
        model_kwargs: model options (instead of --tiny's), e.g. '{"block_config": [1]}'.
        batch_size: images per step (default 8 with --tiny, else 256).
    """
    from fastcifar.models import tiny_overrides
    from fastcifar.training.variant import FAST, VARIANTS

    kwargs = model_kwargs if model_kwargs is not None else (tiny_overrides(ARCH) if tiny else {})
    name = variant or next(n for n, v in VARIANTS.items() if v == FAST)
    if batch_size is not None and batch_size < 2:
        raise UserError(f"--batch_size must be at least 2 (BatchNorm), got {batch_size}.")
    result = measure_compile(name, device, kwargs, batch_size or (8 if tiny else 256))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    from fastcifar.cli import run_cli

    run_cli(main, PROG)
