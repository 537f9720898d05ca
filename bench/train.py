"""Training-step throughput of sk_densenet in several variants, side by side in one run.

Variants are :data:`fastcifar.training.variant.VARIANTS`; each variant's step is built by
:func:`fastcifar.training.engine.build_step`, as training builds it, and trained through
:func:`fastcifar.training.engine.train_one_epoch`, i.e. the engine's one training step (forward, CE
loss, backward, Adam, OneCycleLR):

- ``eager_fp32``: eager, fp32, NCHW, PyTorch SK layers (the study's setting);
- ``eager_bf16_cl``: eager, bf16 autocast, channels_last;
- ``compiled_bf16_cl``: ``torch.compile`` + bf16 autocast + channels_last;
- ``compiled_bf16_cl_triton``: the same with the fused Triton SK kernels (``--fast``);
- ``compiled_bf16_cl_triton_cudagraphs``: the same compiled with ``mode="reduce-overhead"``
  (CUDA graphs; CUDA only, since CPU has no graphs to replay);
- ``eager_bf16`` / ``compiled_bf16``: bf16 in NCHW (added on CPU, see ``CPU_BF16_CL_NOTE``).

Per variant (:func:`bench_variant`): images/s and step time (median of ``repeats`` timed passes of
``steps`` steps after warm-up), peak device memory (CUDA only), compile time (the first step's
time above a steady step, reported apart from the throughput), achieved TFLOP/s from the model's
training FLOPs (forward + weight and input gradients, :mod:`fastcifar.models.flops`) and the fraction of
``peak_tflop_per_s`` when given. Input: seeded normal-distributed images and random labels,
resident on the device (no loader).

Usage::

    python -m bench.train                    # CUDA: full size, batch 256; CPU: the tiny config (said so)
    python -m bench.train --device cpu --steps 5 --batch_size 32
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.common import RESULTS_DIR, check_out_dir, environment_line, new_record, save_record
from fastcifar.models import tiny_overrides
from fastcifar.models.flops import count_model
from fastcifar.training import engine
from fastcifar.training.variant import get_variant, parse_variants, resolve_device

CUDA_VARIANTS = (
    "eager_fp32",
    "eager_bf16_cl",
    "compiled_bf16_cl",
    "compiled_bf16_cl_triton",
    "compiled_bf16_cl_triton_cudagraphs",
)
CPU_VARIANTS = (
    "eager_fp32",
    "eager_bf16_cl",
    "compiled_bf16_cl",
    "compiled_bf16_cl_triton",
    "eager_bf16",
    "compiled_bf16",
)
CPU_BF16_CL_NOTE = (
    "On CPU (torch 2.14.1 here) the weight gradient of a grouped *and* dilated conv (the SK 5x5 branch: "
    "3x3, dilation 2, groups 2) is non-finite under bf16 autocast with channels_last at small channel "
    "counts (seen for 8 and 16 channels, the tiny config's; 40 and 80, the full model's, were finite); groups=1 or "
    "dilation=1 or eager NCHW are fine. The engine stops such a run at the first NaN/inf loss, so the bf16 "
    "channels_last variants fail on CPU; compiled bf16 fails the same way even in NCHW (Inductor's CPU "
    "convolutions use channels_last internally). The NCHW bf16 variants are added for comparison."
)


def _batch(batch_size: int, device: torch.device, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded images ``(N, 3, 32, 32)`` and labels ``(N,)`` on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, 32, 32, generator=generator)
    labels = torch.randint(0, 100, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def model_size(arch: str, model_kwargs: dict[str, Any], batch_size: int) -> dict[str, int]:
    """Parameters and training FLOPs per step of ``arch`` (:mod:`fastcifar.models.flops`, counted on meta)."""
    counts = count_model(arch, **model_kwargs)
    return {"parameters": counts.params, "train_flops_per_step": counts.train_flops * batch_size}


def bench_variant(
    name: str,
    *,
    device: torch.device | str,
    arch: str,
    model_kwargs: dict[str, Any],
    batch_size: int,
    steps: int,
    repeats: int = 3,
    warmup_steps: int = 3,
    peak_tflop_per_s: float | None = None,
    train_flops_per_step: int | None = None,
    time_left: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """Time one variant's training step; see the module docstring for what is measured.

    ``train_flops_per_step`` (counted when not given) turns step time into TFLOP/s, and
    ``peak_tflop_per_s`` that into a fraction (``mfu``). ``time_left`` (seconds) stops the timed
    passes early, after the first, when another pass would not fit. Raises
    :class:`fastcifar.training.engine.NonFiniteLoss` when the loss becomes NaN/inf.
    """
    variant = get_variant(name)
    device = resolve_device(device)
    if device.type == "cpu":
        # Training one fixed batch drives values into the denormal range, where x86 float math is
        # 10-20x slower (seen here as timed passes slowing from 0.8 s to 16 s); flush them to zero.
        torch.set_flush_denormal(True)
    if train_flops_per_step is None:
        train_flops_per_step = model_size(arch, model_kwargs, batch_size)["train_flops_per_step"]
    torch._dynamo.reset()  # every compiled variant pays (and reports) its own compilation
    torch.manual_seed(0)
    step = engine.build_step(
        arch, model_kwargs, variant, device, lr=0.01, epochs=1, steps_per_epoch=warmup_steps + repeats * steps
    )
    images, labels = _batch(batch_size, device, seed=1)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    optimizer, scheduler, scaler, settings = step.optimizer, step.scheduler, step.scaler, step.settings

    def run(n: int) -> engine.EpochResult:
        batches = [(images, labels)] * n
        return engine.train_one_epoch(
            step.forward, batches, optimizer, scheduler, scaler, settings, log_every=n, progress=False
        )

    warm = run(warmup_steps)
    timed = [run(steps)]
    while len(timed) < repeats and (time_left is None or time_left() > 1.5 * timed[-1].seconds):
        timed.append(run(steps))
    seconds = statistics.median(r.seconds for r in timed)
    step_ms = 1000 * seconds / steps
    tflop_per_s = train_flops_per_step / (step_ms / 1000) / 1e12
    return {
        "images_per_s": batch_size * steps / seconds,
        "step_ms": step_ms,
        "compile_seconds": warm.warmup_seconds if variant.compile else 0.0,
        "first_step_excess_seconds": warm.warmup_seconds,
        "peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
        "timed_seconds": [r.seconds for r in timed],
        "loss": timed[-1].loss,
        "train_flops_per_step": train_flops_per_step,
        "tflop_per_s": tflop_per_s,
        "mfu": tflop_per_s / peak_tflop_per_s if peak_tflop_per_s else None,
        **variant.describe(),
    }


def bench_train(
    device: torch.device | str,
    arch: str = "sk_densenet",
    model_kwargs: dict[str, Any] | None = None,
    batch_size: int = 256,
    steps: int = 20,
    variants: Sequence[str] | str = CUDA_VARIANTS,
    repeats: int = 3,
    peak_tflop_per_s: float | None = None,
    warmup_steps: int = 3,
) -> dict[str, Any]:
    """Benchmark ``variants`` of ``arch``'s training step; returns ``{"config", "variants", ...}``.

    ``variants[name]`` is :func:`bench_variant`'s result, or ``error`` if the variant failed (the
    others still run). ``speedup_vs_eager_fp32`` compares images/s.
    """
    from fastcifar.errors import UserError

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise UserError(
            f"--batch_size must be an integer >= 2 (BatchNorm trains on batches of 2 or more), got {batch_size!r}."
        )
    device = resolve_device(device)
    names = parse_variants(variants)
    model_kwargs = dict(model_kwargs or {})
    size = model_size(arch, model_kwargs, batch_size)
    results: dict[str, Any] = {}
    for name in names:
        try:
            results[name] = bench_variant(
                name,
                device=device,
                arch=arch,
                model_kwargs=model_kwargs,
                batch_size=batch_size,
                steps=steps,
                repeats=repeats,
                warmup_steps=warmup_steps,
                peak_tflop_per_s=peak_tflop_per_s,
                train_flops_per_step=size["train_flops_per_step"],
            )
        except Exception as err:  # keep the other variants' figures; record why this one failed
            results[name] = {"error": f"{type(err).__name__}: {err}"[:500]}
    base = results.get("eager_fp32", {}).get("images_per_s")
    return {
        "config": {
            "device": str(device),
            "arch": arch,
            "model_kwargs": model_kwargs,
            "batch_size": batch_size,
            "steps": steps,
            "repeats": repeats,
            "warmup_steps": warmup_steps,
            **size,
            "peak_tflop_per_s": peak_tflop_per_s,
        },
        "variants": results,
        "speedup_vs_eager_fp32": {
            name: row["images_per_s"] / base for name, row in results.items() if base and "images_per_s" in row
        },
    }


def render_table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | images/s | step ms | vs eager fp32 | compile s | peak MiB | TFLOP/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["variants"].items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'][:80]} | | | | | |")
            continue
        memory = f"{row['peak_memory_mib']:.0f}" if row["peak_memory_mib"] is not None else "n/a (CPU)"
        lines.append(
            f"| {name} | {row['images_per_s']:,.1f} | {row['step_ms']:.1f} | "
            f"{result['speedup_vs_eager_fp32'].get(name, float('nan')):.2f}x | {row['compile_seconds']:.1f} | "
            f"{memory} | {row['tflop_per_s']:.4f} |"
        )
    return "\n".join(lines)


def main(
    device: str | None = None,
    arch: str = "sk_densenet",
    model_kwargs: dict | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    repeats: int = 3,
    variants: str | None = None,
    peak_tflop_per_s: float | None = None,
    out: str = str(RESULTS_DIR),
) -> None:
    """Run the benchmark, print a table, write ``<out>/train-<device>-<date>.json`` and ``.md``.

    On CUDA the defaults are the full model at batch 256 for 50 steps over :data:`CUDA_VARIANTS`;
    on CPU the registered tiny config (``fastcifar.models.tiny_overrides``) at batch 32 for 5 steps
    over :data:`CPU_VARIANTS`, whose figures are ratios on that CPU only.
    """
    check_out_dir(out, "--out")
    device_obj = resolve_device(device)
    cuda = device_obj.type == "cuda"
    if model_kwargs is None:
        model_kwargs = {} if cuda else tiny_overrides(arch)
    batch_size = batch_size or (256 if cuda else 32)
    steps = steps or (50 if cuda else 5)
    if variants is None:
        variants = ",".join(CUDA_VARIANTS if cuda else CPU_VARIANTS)
    result = bench_train(
        device_obj,
        arch=arch,
        model_kwargs=model_kwargs,
        batch_size=batch_size,
        steps=steps,
        variants=variants,
        repeats=repeats,
        peak_tflop_per_s=peak_tflop_per_s,
    )
    note = (
        "Full-size model on CUDA."
        if cuda
        else "CPU, tiny config (not the study's model size): ratios on this 2-core CPU only. On CPU tensors the "
        "`triton` SK layers run the kernels' PyTorch fallback (no GPU kernels), so that variant measures compile "
        "with the custom op, not Triton. Peak memory is CUDA-only. " + CPU_BF16_CL_NOTE
    )
    record = {**new_record("train", device_obj), "note": note, **result}
    table = render_table(result)
    print(table)
    markdown = (
        f"# Training-step throughput: {arch} ({device_obj.type}, {record['date'][:10]})\n\n"
        f"Command: `{record['command']}`\n\n{note}\n\n"
        f"Batch {batch_size}, {steps} steps per timed pass, median of {repeats} passes after "
        f"{result['config']['warmup_steps']} warm-up steps; "
        f"model kwargs {model_kwargs or '{} (full size)'}; {result['config']['parameters']:,} parameters; "
        f"{result['config']['train_flops_per_step'] / 1e9:.2f} GFLOP per step (fwd+bwd, counted).\n\n"
        f"{table}\n\n{environment_line(record['environment'])}\n"
    )
    save_record(out, record, markdown)


if __name__ == "__main__":
    from fastcifar.cli import run_cli

    run_cli(main, "bench.train")
