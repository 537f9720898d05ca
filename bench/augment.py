"""Augmentation alone, in images/s and kernel launches per batch: the study's train transform.

- ``fastcifar``: :class:`fastcifar.augment.TrainTransform` on uint8 batches on the device, every
  sample with its own flip, crop offset and RandAugment ops/signs, on the route the loaders use
  on that device (compiled on CUDA, eager elsewhere); ``fastcifar-eager`` / ``fastcifar-compiled``:
  the other route, for the side-by-side comparison. The compiled route's first batch compiles
  (reported as ``first_batch_seconds``) and is not timed.
- ``torchvision-pil``: the study's per-image pipeline (RandomHorizontalFlip, RandomCrop(32,
  padding=4, reflect), RandAugment(2, 10), ToTensor, Normalize) on PIL images, one CPU process
  (a DataLoader spreads this over workers; multiply by the worker count for an upper bound).
- ``torchvision-v2-batch``: the same transforms from ``torchvision.transforms.v2`` applied to whole
  uint8 batches on the device. Faster, but NOT equivalent: v2 draws one flip, one crop and one
  RandAugment op pair per batch, so every image in a batch gets the same augmentation.

Launches per batch, from ``torch.profiler`` over a few batches after warm-up (see
:func:`count_launches`): on CUDA the device kernel events; on the CPU, which launches nothing, the
closest analogue: Inductor's generated C++ kernels (profiled by name) plus the outermost aten calls
that do work (views, allocations and no-op conversions excluded), random draws included in both.

Input: seeded random uint8 CIFAR-shaped images (never all-zero). Output: a table on stdout and
``bench/results/augment-<device>-<date>.json`` / ``.md`` (:func:`bench.common.new_record`'s header).

Usage: ``python -m bench.augment --device=cpu --batch_size=512 --n_images=8192``
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import torch

from bench.common import RESULTS_DIR, new_record, save_record, sync
from fastcifar.augment import IMAGENET_MEAN, IMAGENET_STD, TrainTransform
from fastcifar.errors import UserError


def _images(n: int, seed: int) -> torch.Tensor:
    """Seeded CIFAR-shaped uint8 ``(n, 3, 32, 32)`` images: noise over a per-image value range."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.randint(0, 80, (n, 1, 1, 1), generator=g)
    span = torch.randint(100, 176, (n, 1, 1, 1), generator=g)
    return (lo + torch.rand(n, 3, 32, 32, generator=g) * span).to(torch.uint8)


TIMED_PASSES = 3  # the fastest of these passes over the batches is reported (shared machines are noisy)


def _time_batches(
    step: Callable[[torch.Tensor], object],
    batches: list[torch.Tensor],
    device: torch.device,
    passes: int = TIMED_PASSES,
) -> float:
    """Seconds of the fastest of ``passes`` runs of ``step`` over every batch, after one warm-up
    batch (CUDA: synchronised ends)."""
    step(batches[0])
    sync(device)
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


# aten ops that launch no kernel: allocations, views and metadata.
_NO_KERNEL_OPS = frozenset(
    {
        "aten::empty",
        "aten::empty_strided",
        "aten::empty_like",
        "aten::view",
        "aten::_reshape_alias",
        "aten::reshape",
        "aten::as_strided",
        "aten::expand",
        "aten::expand_as",
        "aten::unsqueeze",
        "aten::squeeze",
        "aten::slice",
        "aten::select",
        "aten::transpose",
        "aten::permute",
        "aten::t",
        "aten::alias",
        "aten::detach",
        "aten::lift_fresh",
        "aten::resolve_conj",
        "aten::resolve_neg",
        "aten::_unsafe_view",
        "aten::unbind",
        "aten::split",
        "aten::chunk",
        "aten::result_type",
        "aten::set_",
        "aten::resize_",
        "aten::view_as",
        "aten::flatten",
        "aten::contiguous",
    }
)
COUNTED = {
    "cuda": "CUDA kernel events in the profiler's device activity (memcpy and memset excluded)",
    "cpu": (
        "Inductor C++ kernels (cpp_fused_*, profiled via inductor cpp.enable_kernel_profile) plus "
        "outermost aten calls that do work (allocations, views and no-op conversions excluded)"
    ),
}


def _has_aten_ancestor(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def _is_working_aten_call(event) -> bool:
    """An outermost aten call that computes something (the CPU analogue of a kernel launch):
    not nested in another aten op, not an allocation or view, not a no-op ``to``."""
    name = event.name
    if not name.startswith("aten::") or name in _NO_KERNEL_OPS or _has_aten_ancestor(event):
        return False
    return not (name == "aten::to" and not event.cpu_children)


def count_launches(
    step: Callable[[torch.Tensor], object], batch: torch.Tensor, device: torch.device, batches: int = 3
) -> dict:
    """Kernel launches per batch of ``step(batch)``, from ``torch.profiler`` (call after warm-up).

    Returns ``{"kernels_per_batch", "counted", "by_name"}``; ``counted`` says what was counted on
    this device (see :data:`COUNTED`), ``by_name`` the most frequent names per batch.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(batches):
            step(batch)
        sync(device)
    events = prof.events()
    if device.type == "cuda":
        names = [
            e.name for e in events if e.device_type == DeviceType.CUDA and not e.name.startswith(("Memcpy", "Memset"))
        ]
    else:
        names = [e.name for e in events if "cpp_fused" in e.name or _is_working_aten_call(e)]
    by_name = Counter(names)
    return {
        "kernels_per_batch": round(len(names) / batches, 2),
        "counted": COUNTED["cuda" if device.type == "cuda" else "cpu"],
        "by_name": {name: round(n / batches, 2) for name, n in by_name.most_common(30)},
    }


def _kernel_profiling(device: torch.device, compiled: bool):
    """On the CPU, make Inductor's C++ kernels visible to the profiler while the graph compiles."""
    if compiled and device.type == "cpu":
        import torch._inductor.config as inductor_config

        return inductor_config.patch({"cpp.enable_kernel_profile": True})
    return contextlib.nullcontext()


def _bench_route(
    route: str, device: torch.device, batches: list[torch.Tensor], seed: int, compile_backend: str
) -> dict:
    """Time one TrainTransform route and count its launches per batch."""
    compiled = route == "compiled"
    train = TrainTransform(compiled=compiled, compile_backend=compile_backend).to(device)
    gen = torch.Generator(device=device).manual_seed(seed)

    def step(b: torch.Tensor) -> torch.Tensor:
        return train(b, generator=gen)

    with _kernel_profiling(device, compiled):
        start = time.perf_counter()
        step(batches[0])  # compiles on the compiled route
        sync(device)
        first = time.perf_counter() - start
    seconds = _time_batches(step, batches, device)
    default = TrainTransform().uses_compiled(device) == compiled
    return {
        "name": "fastcifar" if default else f"fastcifar-{route}",
        "route": route,
        "seconds": seconds,
        "first_batch_seconds": round(first, 3),
        "launches": count_launches(step, batches[0], device),
        "compile_backend": compile_backend if compiled else None,
    }


def _torchvision_pil_pipeline():
    import torchvision.transforms as T

    return T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.RandomCrop(32, padding=4, padding_mode="reflect"),
            T.RandAugment(num_ops=2, magnitude=10),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def _torchvision_v2_batch_pipeline():
    import torchvision.transforms.v2 as T2

    return T2.Compose(
        [
            T2.RandomHorizontalFlip(),
            T2.RandomCrop(32, padding=4, padding_mode="reflect"),
            T2.RandAugment(num_ops=2, magnitude=10),
            T2.ToDtype(torch.float32, scale=True),
            T2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD)),
        ]
    )


def bench_augment(
    device: str | torch.device = "cpu",
    batch_size: int = 512,
    n_images: int = 8192,
    pil_images: int | None = None,
    seed: int = 0,
    routes: tuple[str, ...] = ("eager", "compiled"),
    compile_backend: str = "inductor",
) -> dict:
    """Measure the augmentation pipelines; returns ``{"config": ..., "results": [...]}``.

    Args:
        device: where the batched pipelines run ("cpu", "cuda", "cuda:1", ...).
        batch_size: images per batch for the batched pipelines.
        n_images: images timed for the batched pipelines (rounded down to whole batches, >= 1 batch).
        pil_images: images timed for the per-image PIL pipeline (default ``min(n_images, 2048)``,
            0 skips it); it always runs on the CPU.
        seed: seed for the input images and the random draws.
        routes: TrainTransform routes to measure ("eager", "compiled"); the one the loaders use on
            ``device`` is named ``fastcifar``, another ``fastcifar-<route>``.
        compile_backend: ``torch.compile`` backend of the compiled route.
    Each result has ``pipeline``, ``device``, ``images``, ``seconds``, ``images_per_s``, ``per_sample``;
    ours also ``route``, ``first_batch_seconds``, ``compile_backend`` and ``launches`` (see
    :func:`count_launches`).
    """
    from PIL import Image

    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("CUDA was requested but no CUDA device is available; pass --device=cpu.")
    if batch_size < 1 or n_images < 1:
        raise UserError("batch_size and n_images must be positive integers.")
    unknown = set(routes) - {"eager", "compiled"}
    if unknown or not routes:
        raise UserError(f"routes must be a non-empty subset of ('eager', 'compiled'), got {routes}.")
    n_batches = max(1, n_images // batch_size)
    host = _images(n_batches * batch_size, seed)
    batches = [b.to(device) for b in host.split(batch_size)]
    results = []
    extras: dict[str, dict] = {}
    for route in routes:
        row = _bench_route(route, device, batches, seed, compile_backend)
        results.append((row["name"], device, n_batches * batch_size, row["seconds"], True))
        extras[row["name"]] = {k: row[k] for k in ("route", "first_batch_seconds", "compile_backend", "launches")}

    torch.manual_seed(seed)  # torchvision draws from the global generators
    v2 = _torchvision_v2_batch_pipeline()
    seconds = _time_batches(v2, batches, device)
    results.append(("torchvision-v2-batch", device, n_batches * batch_size, seconds, False))

    n_pil = min(n_images, 2048) if pil_images is None else pil_images
    if n_pil > 0:  # pil_images=0 skips the (slow, CPU-only) per-image baseline
        pil = [Image.fromarray(np.ascontiguousarray(img)) for img in host[:n_pil].permute(0, 2, 3, 1).numpy()]
        per_image = _torchvision_pil_pipeline()
        per_image(pil[0])
        start = time.perf_counter()
        for img in pil:
            per_image(img)
        results.append(("torchvision-pil", torch.device("cpu"), n_pil, time.perf_counter() - start, True))

    return {
        "config": {
            "device": str(device),
            "batch_size": batch_size,
            "n_images": n_batches * batch_size,
            "pil_images": n_pil,
            "seed": seed,
            "torch_threads": torch.get_num_threads(),
            "timed_passes": TIMED_PASSES,
        },
        "results": [
            {
                "pipeline": name,
                "device": str(dev),
                "images": n,
                "seconds": round(s, 4),
                "images_per_s": round(n / s, 1),
                "per_sample": per_sample,
                **extras.get(name, {}),
            }
            for name, dev, n, s, per_sample in results
        ],
    }


def _table(record: dict) -> str:
    lines = [
        "| pipeline | route | device | per-sample draws | images | seconds | images/s | launches per batch |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for r in record["results"]:
        launches = r["launches"]["kernels_per_batch"] if "launches" in r else "-"
        lines.append(
            f"| {r['pipeline']} | {r.get('route', '-')} | {r['device']} "
            f"| {'yes' if r['per_sample'] else 'no (one per batch)'} "
            f"| {r['images']} | {r['seconds']:.3f} | {r['images_per_s']:.0f} | {launches} |"
        )
    return "\n".join(lines)


def main(
    device: str = "cpu",
    batch_size: int = 512,
    n_images: int = 8192,
    pil_images: int | None = None,
    seed: int = 0,
    routes: str = "eager,compiled",
    compile_backend: str = "inductor",
    out_dir: str = str(RESULTS_DIR),
) -> None:
    """Run :func:`bench_augment`, print the table and write ``augment-<device>-<date>.json/.md``.

    ``routes``: comma-separated TrainTransform routes ("eager", "compiled").
    """
    route_list = tuple(r.strip() for r in str(routes).split(",") if r.strip())
    result = bench_augment(device, batch_size, n_images, pil_images, seed, route_list, compile_backend)
    record = {**new_record("augment", device), **result}
    table = _table(record)
    print(table)
    env = record["environment"]
    md = (
        f"# Augmentation throughput ({env['device_type']}, {record['date'][:10]})\n\n"
        f"Command: `{record['command']}`  \n"
        f"torch {env['torch']}, torchvision {env['torchvision']}, python {env['python']}, "
        f"{env.get('gpu') or env['cpu']} ({env['cpu_count']} CPUs, "
        f"{record['config']['torch_threads']} torch threads, "
        # the CPU is shared: the 1-minute load average says how contended it was
        f"load average {env['load_average'][0]} after the run)\n\n"
        f"{table}\n\n"
        "The study's train transform (flip, reflect-pad crop, RandAugment(2, 10), normalise) on "
        "random CIFAR-shaped uint8 images. torchvision-pil is one process, one image at a time; "
        "torchvision-v2-batch applies one random draw to a whole batch, so it does less and "
        "different work than the per-sample pipelines. Batched rows: the fastest of "
        f"{TIMED_PASSES} passes over all batches; torchvision-pil: one pass.\n\n"
        f"Launches per batch ({env['device_type']}): {COUNTED['cuda' if env['device_type'] == 'cuda' else 'cpu']}; "
        "the per-name breakdown is in the JSON.\n"
    )
    save_record(out_dir, record, md)


if __name__ == "__main__":
    from fastcifar.cli import run_cli

    run_cli(main, "bench.augment")
