"""Every GPU-related check and timing in one call, inside a time budget: ``python -m bench.suite``.

GPU time is scarce and a machine may be lent once, so the suite plans before it spends:

- every section has an estimate (tiny CPU sizes and full GPU sizes), checks the time left before it
  starts and is recorded as ``skipped`` with the reason ``budget`` when it would not fit; long
  sections get the deadline and stop between their parts, returning what they measured;
- sections run in order of value: environment and ceilings, then training throughput (one section
  per variant), augmentation (the no-host-sync check first), the kernels (``sk_densenet``'s
  shapes), the fast variant's compile time cold and warm (fresh processes, one new Inductor
  cache), profile + report, and the ``cuda``-marked tests last;
- ``results.json`` and ``results.md``, with the derived goal figures, are rewritten after every
  section, so a run cut at any point keeps everything measured until then;
- ``--plan`` prints the sections, their estimates and the total without running anything; the
  estimates are recorded beside the measured seconds, and ``--estimates OLD/results.json`` plans
  from a previous run's measured seconds.

The budget counts from the start of :func:`main` (interpreter start and ``import torch`` come
before it). Needs torch >= 2.11 and triton >= 3.6; neither FFCV, fire, HolisticTraceAnalysis, a
prepared data set nor internet (data is synthetic and lives in device memory). On a CPU the
default is tiny sizes, so the suite cannot rot between GPU runs; CPU figures are never GPU claims.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

if not torch.cuda.is_available():
    # Without CUDA the Triton kernels run through the interpreter; Triton reads this at import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from bench.common import Deadline, new_record, sync, write_record  # noqa: E402
from fastcifar.environment import machine_record  # noqa: E402
from fastcifar.errors import UserError  # noqa: E402

PROG = "bench.suite"
REPO = Path(__file__).resolve().parent.parent
ARCH = "sk_densenet"
DEFAULT_BUDGET_S = 420.0
RESERVE_S = 3.0  # kept back for the last save and the exit
CIFAR_TRAIN_IMAGES = 50_000
TRAIN_BATCH = 256  # the study's batch: train, augmentation, loader and profile sections all use it

# Train variants per device (names from fastcifar.training.variant.VARIANTS). On CPU, bf16 + channels_last
# gives non-finite SK gradients at tiny widths, and compiling on two cores takes minutes: the CPU
# proof runs eager fp32 and eager bf16 NCHW through the same section code.
GPU_TRAIN_VARIANTS = ("eager_fp32", "compiled_bf16_cl", "compiled_bf16_cl_triton", "compiled_bf16_cl_triton_cudagraphs")
CPU_TRAIN_VARIANTS = ("eager_fp32", "eager_bf16")
# cuda tests that only repeat compile work the train and profile sections already did.
CUDA_TESTS_DESELECTED = ("test_profile_gpu_tiny",)

# Seconds per section: (tiny sizes on 2 CPU cores, full sizes on an H200 with a cold compile cache).
# The GPU column is a review's estimate until a GPU run records measured seconds beside it.
ESTIMATES: dict[str, tuple[float, float]] = {
    "environment": (2, 15),
    "train:eager_fp32": (6, 30),
    "train:eager_bf16_cl": (6, 30),
    "train:eager_bf16": (6, 30),
    "train:compiled_bf16_cl": (90, 110),
    "train:compiled_bf16_cl_triton": (120, 80),
    "train:compiled_bf16_cl_triton_cudagraphs": (120, 40),
    "train:compiled_bf16": (90, 110),
    "augment_no_sync": (1, 5),
    "augment_no_sync_compiled": (60, 40),
    "augment": (8, 25),
    "gpu_loader": (4, 10),
    "kernels": (25, 40),
    "compile_cache": (200, 130),
    "profile": (20, 60),
    "cuda_tests": (1, 90),
}
# Sections that check the deadline between their parts may start with this much time left.
MINIMUM_S: dict[str, tuple[float, float]] = {"kernels": (10, 20), "cuda_tests": (1, 30)}


class SuiteInterrupted(BaseException):
    """SIGTERM (e.g. the shell's last-resort guard) or Ctrl-C: save what there is and stop."""


@dataclass
class Section:
    """One unit of the suite: what to run, how long it should take, and why it might not run."""

    name: str
    run: Callable[[Deadline], dict]
    estimate_s: float
    minimum_s: float
    skip_reason: Callable[[], str | None] = lambda: None  # checked right before the section starts


class Suite:
    """Runs sections inside the budget, records each, rewrites results.json/results.md after each."""

    def __init__(self, out: Path, config: dict[str, Any], deadline: Deadline, sections: list[Section]):
        self.out = out
        self.deadline = deadline
        self.sections = sections
        self.current: str | None = None  # the section in flight, for an interruption
        self.record: dict[str, Any] = {
            **new_record("suite", config.get("device")),
            "config": config,
            "budget": {
                "seconds": config["budget_s"],
                "reserve_s": RESERVE_S,
                "planned_s": round(sum(s.estimate_s for s in sections if not s.skip_reason()), 1),
                "used_s": 0.0,
            },
            "sections": {s.name: {"status": "pending", "estimate_s": s.estimate_s} for s in sections},
            "derived": derive({}, config["fast_variant"]),
        }

    def result(self, name: str) -> dict:
        """The result of section ``name`` if it ran (ok or partial), else ``{}``."""
        entry = self.record["sections"].get(name) or {}
        return entry.get("result") or {} if entry.get("status") in ("ok", "partial") else {}

    def run_all(self) -> None:
        self.save()
        for section in self.sections:
            self.run(section)

    def run(self, section: Section) -> None:
        self.current = section.name
        entry: dict[str, Any] = {"estimate_s": section.estimate_s}
        left = self.deadline.time_left() - RESERVE_S
        reason = section.skip_reason()
        if reason is None and section.minimum_s > left:
            entry.update(
                status="skipped",
                reason="budget",
                detail=f"needs ~{section.minimum_s:.0f} s, {max(left, 0.0):.0f} s of the budget left",
                needs_s=section.minimum_s,
            )
        elif reason is not None:
            entry.update(status="skipped", reason=reason)
        if "status" in entry:
            detail = f", {entry['detail']}" if "detail" in entry else ""
            print(f"[suite] {section.name}: skipped ({entry['reason']}{detail})", flush=True)
            self._finish(section.name, entry)
            return
        print(f"[suite] {section.name} (estimate {section.estimate_s:.0f} s, {left:.0f} s left) ...", flush=True)
        start = time.monotonic()
        try:
            entry["result"] = section.run(self.deadline)
            entry["status"] = "partial" if entry["result"].get("cut") else "ok"
        except (SuiteInterrupted, KeyboardInterrupt):
            entry.update(status="interrupted", seconds=round(time.monotonic() - start, 2))
            self._finish(section.name, entry)
            raise
        except Exception as err:  # one broken section must not cost the others their GPU time
            entry.update(
                status="failed", error=f"{type(err).__name__}: {err}"[:2000], traceback=traceback.format_exc(limit=8)
            )
            print(entry["traceback"], file=sys.stderr, flush=True)
        entry["seconds"] = round(time.monotonic() - start, 2)
        print(f"[suite] {section.name}: {entry['status']} in {entry['seconds']} s", flush=True)
        self._finish(section.name, entry)

    def stop(self, why: str) -> None:
        """Record an interruption (SIGTERM, Ctrl-C): the section in flight, if not yet recorded, and the reason."""
        entry = self.record["sections"].get(self.current or "")
        if entry is not None and entry.get("status") == "pending":
            entry["status"] = "interrupted"
        self.record["interrupted"] = why
        self.save()

    def _finish(self, name: str, entry: dict) -> None:
        self.record["sections"][name] = entry
        self.save()

    def save(self) -> None:
        self.record["budget"]["used_s"] = round(self.deadline.elapsed(), 1)
        self.record["derived"] = derive(self.record["sections"], self.record["config"]["fast_variant"])
        write_record(self.out / "results", self.record, render_markdown(self.record))


def call_supported(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """Call ``fn`` with the keyword arguments its signature accepts; also return the names dropped.

    The benchmarks gain options (deadlines, short modes) independently of the suite; passing only
    what exists keeps the suite working with every version of them, and the dropped names are
    recorded so a result says what it could not ask for.
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(*args, **kwargs), []
    dropped = [k for k in kwargs if k not in params]
    return fn(*args, **{k: v for k, v in kwargs.items() if k in params}), dropped


def deadline_kwargs(deadline: Deadline) -> dict[str, Any]:
    """The deadline as the benchmarks take it: ``time_left``, a callable returning seconds."""
    return {"time_left": lambda: deadline.time_left() - RESERVE_S}


# --- variants -----------------------------------------------------------------------------------


def variant_vocabulary() -> dict[str, Any]:
    """Name -> :class:`fastcifar.training.variant.Variant`."""
    from fastcifar.training.variant import VARIANTS

    return dict(VARIANTS)


def fast_variant_name() -> str:
    """The name of :data:`fastcifar.training.variant.FAST` (what ``--fast`` trains with)."""
    from fastcifar.training.variant import FAST, VARIANTS

    return next(name for name, v in VARIANTS.items() if v == FAST)


def baseline_variant_name() -> str:
    from fastcifar.training.variant import BASELINE, VARIANTS

    return next(name for name, v in VARIANTS.items() if v == BASELINE)


def needs_triton(name: str, device: torch.device) -> bool:
    """Whether a variant runs Triton code on ``device``: Inductor on CUDA, or the fused kernels."""
    variant = variant_vocabulary()[name]
    return device.type == "cuda" and (variant.compile or variant.kernels == "triton")


# --- sections -----------------------------------------------------------------------------------


@dataclass
class Context:
    """What the sections share: device, sizes, output folder, and results of earlier sections."""

    device: torch.device
    tiny: bool
    out: Path
    suite: Suite | None = None
    compile_backend: str = "inductor"
    floors: dict = field(default_factory=dict)  # (amp, channels_last, peaks) -> step_floor's figures

    @property
    def model_kwargs(self) -> dict:
        from fastcifar.models import tiny_overrides

        return tiny_overrides(ARCH) if self.tiny else {}

    @property
    def batch_size(self) -> int:
        return 8 if self.tiny else TRAIN_BATCH

    def earlier(self, name: str) -> dict:
        return self.suite.result(name) if self.suite else {}

    def train_sections(self) -> list[str]:
        return [name for name in (self.suite.record["sections"] if self.suite else {}) if name.startswith("train:")]

    def triton_problem(self) -> str | None:
        """Why Triton cannot run here, from the environment section (None if fine or not checked)."""
        return self.earlier("environment").get("triton_problem")


def section_environment(ctx: Context, deadline: Deadline) -> dict:
    from bench.ceilings import copy_bandwidth, matmul_rate
    from bench.preflight import c_compiler, optional_modules, python_headers, triton_build_problem

    result: dict[str, Any] = {
        "environment": machine_record(ctx.device, packages=("numba", "pytest")),
        "optional_modules": optional_modules(),
        "c_compiler": c_compiler(),
        "python_headers": str(python_headers()) if python_headers() else None,
        "triton_interpret": os.environ.get("TRITON_INTERPRET"),
    }
    result["triton_problem"] = triton_build_problem(ctx.device)
    result["copy"] = copy_bandwidth(ctx.device, nbytes=(16 << 20) if ctx.tiny else None)
    result["matmul"] = matmul_rate(ctx.device, n=256 if ctx.tiny else None)
    return result


def section_train_variant(ctx: Context, name: str, deadline: Deadline) -> dict:
    """One variant's training-step throughput through :func:`bench.train.bench_variant`."""
    from bench.train import bench_variant

    peak = (ctx.earlier("environment").get("matmul") or {}).get("tflop_per_s")
    # Every variant trains the same model at the same batch: count its FLOPs once.
    flops = next(
        (r["train_flops_per_step"] for r in map(ctx.earlier, ctx.train_sections()) if r.get("train_flops_per_step")),
        None,
    )
    row, dropped = call_supported(
        bench_variant,
        name,
        device=ctx.device,
        arch=ARCH,
        model_kwargs=ctx.model_kwargs,
        batch_size=ctx.batch_size,
        steps=2 if ctx.tiny else 20,
        repeats=1 if ctx.tiny else 3,
        warmup_steps=1 if ctx.tiny else 3,
        peak_tflop_per_s=peak,
        train_flops_per_step=flops,
        **deadline_kwargs(deadline),
    )
    row = dict(row)
    row["peak_tflop_per_s"] = peak
    row["batch_size"] = ctx.batch_size
    if dropped:
        row["arguments_not_supported"] = dropped
    try:  # the timing is what GPU time was spent on: a floor that cannot be computed must not lose it
        floor = step_floor(ctx, name)
    except Exception as err:
        row["floor_error"] = f"{type(err).__name__}: {err}"[:500]
        return row
    seconds = row["step_ms"] / 1000
    row["floor"] = floor
    row["times_floor"] = row["step_ms"] / floor["floor_ms_per_step"]
    row["achieved_gb_per_s"] = floor["bytes_per_step_fused_bound"] / seconds / 1e9
    return row


def step_floor(ctx: Context, name: str) -> dict:
    """The computed floor of variant ``name``'s training step (:mod:`fastcifar.profiling.roofline`).

    Against the ceilings the environment section measured (copy bandwidth, matmul rate), or the
    H200 datasheet where it has not run; the variant's precision and layout decide the trace (bf16
    autocast + channels_last or fp32 NCHW, the PyTorch layers: the floor of the step's aten ops).
    Traced once per precision and layout, on the meta device.
    """
    from fastcifar.profiling.roofline import Peaks, roofline

    variant = variant_vocabulary()[name]
    env = ctx.earlier("environment")
    matmul, copy = (env.get("matmul") or {}).get("tflop_per_s"), (env.get("copy") or {}).get("gb_per_s")
    peaks = Peaks.measured(matmul, copy) if matmul and copy else Peaks()
    key = (variant.amp != "off", variant.channels_last, peaks)
    if key not in ctx.floors:
        r = roofline(
            ARCH,
            amp=key[0],
            channels_last=key[1],
            batch_size=ctx.batch_size,
            eval_batch_size=ctx.batch_size,
            peaks=peaks,
            overrides=ctx.model_kwargs,
        )
        figures = r.train_floors()
        ctx.floors[key] = {
            "floor_ms_per_step": figures["floor_ms"],
            "compute_ms_per_step": figures["compute_ms"],
            "memory_fused_ms_per_step": figures["memory_fused_ms"],
            "memory_unfused_ms_per_step": figures["memory_unfused_ms"],
            "launch_ms_per_step": figures["launch_ms"],
            "bytes_per_step_fused_bound": r.train.bytes_fused,
            "bytes_per_step_unfused": r.train.bytes_unfused,
            "eager_kernels_per_step": r.train.launches,
            "traced": f"{'bf16 autocast' if key[0] else 'fp32'}{' + channels_last' if key[1] else ''}",
            "peaks": peaks.source,
        }
    return ctx.floors[key]


def _no_sync_check(ctx: Context, compiled: bool) -> dict:
    """Run the train transform with CUDA's sync debug mode set to error: any host sync raises."""
    from fastcifar.augment import TrainTransform

    transform = TrainTransform(compiled=compiled).to(ctx.device)
    # The training batch: the compiled graph (static shapes) built here serves the later sections.
    x = torch.randint(0, 256, (TRAIN_BATCH, 3, 32, 32), dtype=torch.uint8, device=ctx.device)
    gen = torch.Generator(device=ctx.device).manual_seed(0)
    start = time.monotonic()
    for _ in range(2 if compiled else 1):  # warm-up outside the check: compilation and lazy inits may sync
        transform(x, generator=gen)
    sync(ctx.device)
    warmup_s = time.monotonic() - start
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = transform(x, generator=gen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    sync(ctx.device)
    return {
        "no_host_sync": True,
        "route": "compiled" if compiled else "eager",
        "batch": x.shape[0],
        "output_dtype": str(out.dtype),
        "warmup_seconds": round(warmup_s, 2),
    }


def section_augment(ctx: Context, deadline: Deadline) -> dict:
    """Our transform (both routes on CUDA; eager on CPU, where compiling takes minutes) vs torchvision."""
    from bench.augment import bench_augment

    result, dropped = call_supported(
        bench_augment,
        ctx.device,
        batch_size=TRAIN_BATCH,  # the shape the compiled transform was built for in the no-sync check
        n_images=512 if ctx.tiny else 32768,
        pil_images=64 if ctx.tiny else 2048,
        routes=("eager", "compiled") if ctx.device.type == "cuda" else ("eager",),
        compile_backend=ctx.compile_backend,
        **deadline_kwargs(deadline),
    )
    if dropped:
        result = dict(result, arguments_not_supported=dropped)
    return {"throughput": result}


def section_gpu_loader(ctx: Context, deadline: Deadline) -> dict:
    """One ``gpu`` loader epoch with full RandAugment over synthetic in-memory images (second epoch timed).

    float32 channels_last batches of 256, the shape and dtype the earlier sections compiled the
    transform for.
    """
    from fastcifar.data.loaders.gpu import GpuLoader
    from fastcifar.data.synthetic import make_arrays

    n = 1024 if ctx.tiny else CIFAR_TRAIN_IMAGES
    images, fine, _ = make_arrays(n, num_classes=100, seed=0)
    loader = GpuLoader.from_arrays(
        images,
        fine,
        device=ctx.device,
        train=True,
        batch_size=TRAIN_BATCH,
        augment=True,
        seed=0,
        # The transform's defaults, as in the no-sync check and the augmentation benchmark: on CUDA
        # the compiled graph built there (static shapes and dtype) is reused, not compiled again.
        dtype=torch.float32,
        channels_last=True,
    )
    epochs = []
    for epoch in range(2):  # epoch 0 warms up (allocator, compilation, lazy kernels); epoch 1 is the figure
        loader.set_epoch(epoch)
        sync(ctx.device)
        start = time.perf_counter()
        seen = 0
        for xb, _yb in loader:
            seen += xb.shape[0]
        sync(ctx.device)
        epochs.append({"images": seen, "seconds": time.perf_counter() - start})
        if deadline.time_left() < RESERVE_S + epochs[-1]["seconds"] * 1.5:
            break
    timed = epochs[-1]
    return {
        "images": n,
        "epochs": epochs,
        "images_per_s": timed["images"] / timed["seconds"],
        "cut": "budget" if len(epochs) < 2 else None,
    }


def section_kernels(ctx: Context, deadline: Deadline) -> dict:
    from bench.kernels import run_benchmarks

    copy = (ctx.earlier("environment").get("copy") or {}).get("gb_per_s")
    record, dropped = call_supported(
        run_benchmarks, ctx.out / "kernels", short=True, copy_gb_per_s=copy, **deadline_kwargs(deadline)
    )
    record = dict(record)
    if dropped:
        record["arguments_not_supported"] = dropped
    return record


def _compile_child(ctx: Context, name: str, model_kwargs: dict, env: dict, timeout: float | None) -> dict:
    """One ``bench.compile_time`` run in a fresh process; its JSON line plus the process's seconds."""
    cmd = [sys.executable, "-m", "bench.compile_time", "--variant", name, "--device", str(ctx.device),
           "--model_kwargs", json.dumps(model_kwargs), "--batch_size", str(ctx.batch_size)]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bench.compile_time exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(time.monotonic() - start, 2)
    return result


def section_compile_cache(ctx: Context, deadline: Deadline) -> dict:
    """The fast variant's training-step compile time cold and warm, each in a fresh process.

    Cold: a new, empty ``TORCHINDUCTOR_CACHE_DIR`` (and ``TRITON_CACHE_DIR`` inside it); warm: a
    second process compiling the same variant with that cache. Compile time is the first step's
    excess over a steady step (``bench.compile_time``). The cache is removed afterwards; its size
    is recorded (what a cluster would copy between nodes). On a CPU the tiny model has one dense
    block (two take over six minutes per cold process on two cores).
    """
    import shutil
    import tempfile

    name = fast_variant_name()
    kwargs = dict(ctx.model_kwargs)
    if ctx.device.type == "cpu" and ctx.tiny:
        kwargs["block_config"] = [1]
    folder = Path(tempfile.mkdtemp(prefix="fastcifar-compile-cache-"))
    pythonpath = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(folder), TRITON_CACHE_DIR=str(folder / "triton"),
               PYTHONPATH=pythonpath)  # fmt: skip
    result: dict[str, Any] = {"variant": name, "model_kwargs": kwargs, "batch_size": ctx.batch_size, "cut": None}
    try:
        for run in ("cold", "warm"):
            left = deadline.time_left() - RESERVE_S - 2.0
            try:
                result[run] = _compile_child(ctx, name, kwargs, env, None if math.isinf(left) else max(left, 1.0))
            except subprocess.TimeoutExpired:
                result[run], result["cut"] = None, "budget"
                break
        result["cache_bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    cold, warm = result.get("cold") or {}, result.get("warm") or {}
    if cold.get("compile_seconds") and warm:
        result["warm_over_cold"] = warm["compile_seconds"] / cold["compile_seconds"]
    return result


def compile_cache_line(record: dict) -> str | None:
    """results.md's sentence on the compile section (None when it did not run)."""
    res = _ok(record.get("sections") or {}, "compile_cache")
    cold, warm = res.get("cold"), res.get("warm")
    if not cold:
        return None
    text = (
        f"Compile of the fast variant `{res['variant']}` (training step, batch {res['batch_size']}, fresh "
        f"processes): cold {cold['compile_seconds']:.1f} s (empty cache, {cold['lookups']['misses']} graphs "
        "compiled)"
    )
    if warm:
        text += (
            f", warm {warm['compile_seconds']:.1f} s ({warm['lookups']['hits']} of "
            f"{warm['lookups']['hits'] + warm['lookups']['misses']} graphs from the cache, "
            f"{100 * res.get('warm_over_cold', 0):.0f}% of cold)"
        )
    return text + f"; cache {res.get('cache_bytes', 0) / 2**20:.1f} MiB."


def profile_variant_names(ctx: Context) -> list[str]:
    """The baseline and the fast variant (on CPU the NCHW bf16 compiled one, see CPU_TRAIN_VARIANTS)."""
    return [baseline_variant_name(), fast_variant_name() if ctx.device.type == "cuda" else "compiled_bf16"]


def section_profile(ctx: Context, deadline: Deadline, variants: list[str] | None) -> dict:
    from fastcifar.analyze import analyze
    from fastcifar.profiling.record import profile_variants

    folder = ctx.out / "profile"
    names = variants or profile_variant_names(ctx)
    _, dropped = call_supported(
        profile_variants,
        arch=ARCH,
        variants=",".join(names),
        steps=2 if ctx.tiny else 5,
        batch_size=ctx.batch_size,
        out=str(folder),
        model_kwargs=ctx.model_kwargs or None,
        device=str(ctx.device),
        compile_backend=ctx.compile_backend,
    )
    report = analyze(folder)
    summary: dict[str, Any] = {"report": str(folder / "report.md"), "baseline": report["baseline"], "variants": {}}
    for name, m in report["variants"].items():
        summary["variants"][name] = {
            "median_step_ms": m["median_step_ms"],
            "speedup_vs_baseline": m["speedup_vs_baseline"],
            "busy_pct": m["temporal"]["busy_pct"],
            "launches_per_step": m["launches_per_step"],
            "sk_select_ms_per_step": m["regions"]["sk_select"]["total_ms_per_step"],
        }
    if dropped:
        summary["arguments_not_supported"] = dropped
    return summary


_TEST_LINE = re.compile(r"^(\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def section_cuda_tests(ctx: Context, deadline: Deadline, paths: tuple[str, ...] = ("tests",)) -> dict:
    """The ``cuda``-marked tests under ``paths`` in a child process, the interpreter off, stopped at the deadline."""
    # Unbuffered, so the lines of the tests that finished survive when the child is stopped.
    pythonpath = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = dict(os.environ, TRITON_INTERPRET="0", PYTHONUNBUFFERED="1", PYTHONPATH=pythonpath)
    deselect = " and ".join(f"not {name}" for name in CUDA_TESTS_DESELECTED)
    cmd = [sys.executable, "-m", "pytest", "-v", "-m", "cuda", "-k", deselect, "-p", "no:cacheprovider", *paths]
    allowed = max(deadline.time_left() - RESERVE_S - 2.0, 1.0)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cut = None
    try:
        output, _ = proc.communicate(timeout=allowed)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, stopped at the budget; what it printed so far is kept
        output, _ = proc.communicate()
        cut = "budget"
    lines = output.strip().splitlines()
    outcomes: dict[str, str] = {}
    for line in lines:
        match = _TEST_LINE.match(line)
        if match:
            outcomes[match.group(1)] = match.group(2)
    counts = {k: sum(1 for v in outcomes.values() if v == k) for k in sorted(set(outcomes.values()))}
    summary = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|deselected)", line)), "")
    result = {
        "exit_code": proc.returncode,
        "summary": summary.strip("= "),
        "counts": counts,
        "outcomes": outcomes,
        "deselected": list(CUDA_TESTS_DESELECTED),
        "tail": lines[-30:],
        "cut": cut,
    }
    # pytest exits 5 when nothing was selected: not a failure here.
    if cut is None and proc.returncode not in (0, 5):
        raise RuntimeError(f"cuda tests failed (exit {proc.returncode}): {result['summary']}")
    return result


def build_sections(ctx: Context, args: argparse.Namespace, estimates: dict[str, float]) -> list[Section]:
    """The suite's sections in order of value, with estimates and skip reasons."""
    column = 0 if ctx.tiny else 1
    cuda = ctx.device.type == "cuda"

    def make(name: str, run: Callable[[Deadline], dict], skip: Callable[[], str | None] = lambda: None) -> Section:
        estimate = estimates.get(name, ESTIMATES[name][column])
        minimum = min(MINIMUM_S.get(name, (estimate, estimate))[column], estimate)
        return Section(name, run, float(estimate), float(minimum), skip)

    def triton_skip(applies: bool) -> Callable[[], str | None]:
        return lambda: f"triton unusable: {ctx.triton_problem()}" if applies and ctx.triton_problem() else None

    no_cuda = (lambda: "needs CUDA (checks CUDA host synchronisations)") if not cuda else (lambda: None)
    sections = [make("environment", lambda d: section_environment(ctx, d))]
    for name in args.train_variants:
        sections.append(
            make(
                f"train:{name}",
                lambda d, name=name: section_train_variant(ctx, name, d),
                triton_skip(needs_triton(name, ctx.device)),
            )
        )
    sections.append(make("augment_no_sync", lambda d: _no_sync_check(ctx, False), no_cuda))

    def compiled_skip() -> str | None:
        return no_cuda() or triton_skip(True)()

    sections.append(make("augment_no_sync_compiled", lambda d: _no_sync_check(ctx, True), compiled_skip))
    # On CUDA the benchmark and the loader use the compiled transform (Inductor, so Triton).
    sections.append(make("augment", lambda d: section_augment(ctx, d), triton_skip(cuda)))
    sections.append(make("gpu_loader", lambda d: section_gpu_loader(ctx, d), triton_skip(cuda)))
    sections.append(make("kernels", lambda d: section_kernels(ctx, d), triton_skip(cuda)))
    # Inductor on CUDA generates Triton code; on CPU C++ (needs a C compiler, as any CPU compile).
    sections.append(make("compile_cache", lambda d: section_compile_cache(ctx, d), triton_skip(cuda)))
    sections.append(
        make(
            "profile",
            lambda d: section_profile(ctx, d, args.profile_variants),
            triton_skip(cuda and ctx.compile_backend == "inductor"),
        )
    )
    sections.append(
        make(
            "cuda_tests",
            lambda d: section_cuda_tests(ctx, d),
            (lambda: "needs CUDA (the tests marked cuda)") if not cuda else (lambda: None),
        )
    )
    return [s for s in sections if s.name not in args.skip]


# --- derived goal figures -------------------------------------------------------------------------

GOALS = {
    "fast_vs_eager_fp32": (">=", 3.0, "images/s"),
    "projected_30_epochs_seconds": ("<=", 90.0, "(aim 60 s)"),
    "augment_share_of_fast_step": ("<=", 0.05, "of a fast step"),
    "fast_times_floor": ("<=", 3.0, "the computed floor (max of compute and ideal-fusion memory)"),
    "mfu": (None, None, "of the measured matmul rate"),
    "sk_select_min_fraction_of_copy": (">=", 0.80, "of copy bandwidth (fwd+bwd, 32x32 and 16x16)"),
}


def _ok(sections: dict, name: str) -> dict:
    entry = sections.get(name) or {}
    return (entry.get("result") or {}) if entry.get("status") in ("ok", "partial") else {}


def _augment_row(sections: dict) -> dict | None:
    """Our transform's throughput row: the route the loaders use on the device (``fastcifar``), else
    the compiled route where measured on CUDA (the CUDA default), else eager."""
    rows = [
        r
        for r in (_ok(sections, "augment").get("throughput") or {}).get("results", [])
        if str(r.get("pipeline", "")).startswith("fastcifar") and r.get("images_per_s")
    ]
    loaders = [r for r in rows if r.get("pipeline") == "fastcifar" and r.get("route")]
    if loaders:
        return loaders[0]
    compiled = [r for r in rows if "compiled" in str(r.get("pipeline")) or r.get("route") == "compiled"]
    if compiled and any(r.get("device", "").startswith("cuda") for r in compiled):
        return compiled[0]
    eager = [r for r in rows if r not in compiled]
    return (eager or rows or [None])[0]


def _sk_select_rows(sections: dict) -> dict[str, dict[str, dict]]:
    """SK select fwd+bwd timing rows of the kernels section: shape label -> impl -> row.

    The label is the shape after the batch (``bench.kernels`` writes ``[N, M, C, H, W]``).
    """
    by_shape: dict[str, dict[str, dict]] = {}
    for row in _ok(sections, "kernels").get("timing") or []:
        shape = row.get("shape") or []
        if row.get("op") == "sk_select" and row.get("mode") == "fwd+bwd" and len(shape) >= 3:
            by_shape.setdefault("x".join(map(str, shape[1:])), {})[str(row.get("impl"))] = row
    return by_shape


def _sk_select_fractions(sections: dict) -> dict[str, float]:
    """Our SK select kernels' fwd+bwd GB/s over the copy ceiling at 32x32 and 16x16, per shape.

    Per shape the better of the two ways the kernels run: called directly (``triton``) or
    launched by Inductor inside a compiled graph (``triton_compiled``, as in the fast variant).
    """
    out: dict[str, float] = {}
    for label, impls in _sk_select_rows(sections).items():
        if label.split("x")[-1] not in ("32", "16"):
            continue
        fractions = [float(r["fraction_of_copy"]) for impl, r in impls.items()
                     if impl.startswith("triton") and r.get("fraction_of_copy") is not None]  # fmt: skip
        if fractions:
            out[label] = max(fractions)
    return out


def _sk_select_vs_inductor(sections: dict) -> dict | None:
    """Shapes where our SK select (fwd+bwd; the faster of direct and compiled launches) beats
    Inductor's code for the PyTorch reference."""
    faster = shapes = 0
    for impls in _sk_select_rows(sections).values():
        ours = [float(r["median_ms"]) for impl, r in impls.items() if impl.startswith("triton") and r.get("median_ms")]
        theirs = (impls.get("inductor") or {}).get("median_ms")
        if ours and theirs:
            shapes += 1
            faster += min(ours) < float(theirs)
    return {"faster_shapes": faster, "shapes": shapes} if shapes else None


def derive(sections: dict, fast_name: str | None = None) -> dict:
    """The figures the goals are stated in, from what the sections measured (None where not measured).

    - ``fast_vs_eager_fp32``: images/s of the fast variant (``fastcifar.training.variant.FAST``) over the
      study's eager fp32 NCHW step, both measured in this run (goal >= 3x);
    - ``projected_30_epochs_seconds``: 30 x 50,000 images at the fast variant's training rate, a
      projection from throughput (no evaluation, no data loading; goal <= 90 s, aim 60 s);
    - ``augment_share_of_fast_step``: seconds our train transform takes per image over the seconds
      of a fast training step per image (goal <= 5%);
    - ``fast_times_floor``: the fast variant's measured step over its computed floor
      (:func:`step_floor`: max of compute and ideal-fusion memory at the measured ceilings; goal
      <= 3x), and ``fast_achieved_gb_per_s``, the floor's bytes over the measured step;
    - ``mfu``: the fast variant's achieved TFLOP/s (training FLOPs of :mod:`fastcifar.models.flops`)
      over the measured bf16 matmul rate;
    - ``sk_select_min_fraction_of_copy``: the lowest Triton SK select fwd+bwd GB/s at 32x32 and
      16x16 over the measured copy bandwidth (goal >= 80%);
    - ``best_variant``: the train variant with the highest images/s, and its ratio to eager fp32.
    """
    fast_name = fast_name or fast_variant_name()
    train = {name.split(":", 1)[1]: _ok(sections, name) for name in sections if name.startswith("train:")}
    fast = train.get(fast_name) or {}
    eager = train.get("eager_fp32") or {}
    aug = _augment_row(sections)
    fractions = _sk_select_fractions(sections)
    figures: dict[str, Any] = {
        "fast_variant": fast_name,
        "fast_vs_eager_fp32": None,
        "projected_30_epochs_seconds": None,
        "augment_share_of_fast_step": None,
        "augment_route": None,
        "fast_times_floor": fast.get("times_floor"),
        "fast_achieved_gb_per_s": fast.get("achieved_gb_per_s"),
        "mfu": None,
        "sk_select_min_fraction_of_copy": min(fractions.values()) if fractions else None,
        "sk_select_fraction_of_copy": fractions or None,
        "sk_select_triton_vs_inductor": _sk_select_vs_inductor(sections),
        "best_variant": None,
    }
    fast_ips = fast.get("images_per_s")
    if fast_ips and eager.get("images_per_s"):
        figures["fast_vs_eager_fp32"] = fast_ips / eager["images_per_s"]
    if fast_ips:
        figures["projected_30_epochs_seconds"] = 30 * CIFAR_TRAIN_IMAGES / fast_ips
        figures["mfu"] = fast.get("mfu")
    if fast_ips and aug:
        figures["augment_share_of_fast_step"] = fast_ips / aug["images_per_s"]
        figures["augment_route"] = aug.get("pipeline")
    measured = {n: r["images_per_s"] for n, r in train.items() if r.get("images_per_s")}
    if measured:
        best = max(measured, key=measured.get)
        figures["best_variant"] = {
            "name": best,
            "images_per_s": measured[best],
            "vs_eager_fp32": measured[best] / eager["images_per_s"] if eager.get("images_per_s") else None,
        }
    figures["goals_met"] = {
        key: (value >= limit if op == ">=" else value <= limit)
        for key, (op, limit, _unit) in GOALS.items()
        if op is not None and (value := figures.get(key)) is not None
    }
    return figures


# --- report ---------------------------------------------------------------------------------------


def _fmt_figure(key: str, value: float) -> str:
    if key in ("augment_share_of_fast_step", "mfu", "sk_select_min_fraction_of_copy"):
        return f"{100 * value:.1f}%"
    if key == "projected_30_epochs_seconds":
        return f"{value:.0f} s"
    return f"{value:.2f}x"


def render_markdown(record: dict) -> str:
    """The run in short: budget, device, ceilings, goal figures, one row per section."""
    budget = record.get("budget") or {}
    config = record.get("config") or {}
    lines = [f"# GPU suite — {record['date']}", "", f"Command: `{record['command']}`", ""]
    if budget:
        lines += [
            f"Budget {budget['seconds']:.0f} s; planned {budget['planned_s']:.0f} s; used {budget['used_s']:.0f} s "
            f"({'tiny' if config.get('tiny') else 'full'} sizes on {config.get('device')}).",
            "",
        ]
    env = (record["sections"].get("environment") or {}).get("result") or {}
    if env:
        e = env["environment"]
        lines.append(
            f"Device: {e.get('gpu') or e.get('cpu')} ({e['device_type']}), torch {e['torch']}, "
            f"triton {e['triton']}, driver {e.get('driver')}"
        )
        lines.append(
            f"Ceilings: copy {env['copy']['gb_per_s']:.1f} GB/s (read+write), "
            f"matmul {env['matmul']['tflop_per_s']:.2f} TFLOP/s ({env['matmul']['dtype']})"
        )
        absent = [f"{m}: {s}" for m, s in (env.get("optional_modules") or {}).items() if s != "present"]
        lines.append(
            f"Optional modules absent: {'; '.join(absent) or 'none'}. Triton: {env.get('triton_problem') or 'usable'}."
        )
        lines.append("")
    derived = record.get("derived") or {}
    lines += [
        f"## Goal figures (fast variant `{derived.get('fast_variant')}`)",
        "",
        "| figure | value | goal | met |",
        "|---|---|---|---|",
    ]
    for key, (op, limit, unit) in GOALS.items():
        value = derived.get(key)
        shown = "not measured" if value is None else _fmt_figure(key, value)
        goal = unit if op is None else f"{op} {_fmt_figure(key, limit)} {unit}"
        met = derived.get("goals_met", {}).get(key)
        lines.append(f"| {key} | {shown} | {goal} | {'–' if met is None else ('yes' if met else 'no')} |")
    best = derived.get("best_variant")
    if best:
        ratio = f", {best['vs_eager_fp32']:.2f}x eager fp32" if best.get("vs_eager_fp32") else ""
        lines += ["", f"Fastest train variant: `{best['name']}` at {best['images_per_s']:,.0f} images/s{ratio}."]
    versus = derived.get("sk_select_triton_vs_inductor")
    if versus:
        lines.append(
            f"SK select fwd+bwd: Triton faster than Inductor's code at {versus['faster_shapes']} of "
            f"{versus['shapes']} shapes."
        )
    compile_line = compile_cache_line(record)
    if compile_line:
        lines += ["", compile_line]
    lines += [
        "",
        "The 30-epoch figure is a projection from training throughput (no evaluation, no loading).",
        "",
        "## Sections",
        "",
        "| section | status | estimate s | seconds | headline |",
        "|---|---|---|---|---|",
    ]
    for name, entry in record["sections"].items():
        lines.append(
            f"| {name} | {entry['status']} | {entry.get('estimate_s', '–')} | {entry.get('seconds', '–')} "
            f"| {_headline(name, entry)} |"
        )
    return "\n".join(lines) + "\n"


def _headline(name: str, entry: dict) -> str:
    status = entry["status"]
    if status == "skipped":
        return (entry.get("reason", "") + (f" ({entry['detail']})" if entry.get("detail") else "")).replace("|", "/")
    if status == "failed":
        return entry.get("error", "").splitlines()[0][:160].replace("|", "/")
    res = entry.get("result") or {}
    try:
        if name == "environment":
            return f"copy {res['copy']['gb_per_s']:,.0f} GB/s, matmul {res['matmul']['tflop_per_s']:,.1f} TFLOP/s"
        if name.startswith("train:"):
            mfu = f", MFU {100 * res['mfu']:.1f}%" if res.get("mfu") else ""
            floor = (
                f", {res['times_floor']:.1f}x floor ({res['floor']['floor_ms_per_step']:.2f} ms), "
                f"{res['achieved_gb_per_s']:,.0f} GB/s"
                if res.get("times_floor")
                else ""
            )
            return (
                f"{res['images_per_s']:,.0f} img/s, {res['step_ms']:.1f} ms/step, "
                f"compile {res.get('compile_seconds', 0):.0f} s{mfu}{floor}"
            )
        if name.startswith("augment_no_sync"):
            return f"no host sync ({res['route']} route)"
        if name == "augment":
            return "; ".join(f"{r['pipeline']}: {r['images_per_s']:,.0f} img/s" for r in res["throughput"]["results"])
        if name == "gpu_loader":
            return f"{res['images_per_s']:,.0f} img/s"
        if name == "kernels":
            rows = res.get("timing") or []
            return f"{len(rows)} timings" if rows else (res.get("timing_note") or "correctness pass")[:120]
        if name == "compile_cache":
            warm = f", warm {res['warm']['compile_seconds']:.1f} s" if res.get("warm") else ""
            return f"cold {res['cold']['compile_seconds']:.1f} s{warm}" + (" (cut at budget)" if res.get("cut") else "")
        if name == "profile":
            return "; ".join(f"{v}: {m['median_step_ms']:.1f} ms" for v, m in res["variants"].items())
        if name == "cuda_tests":
            return (res.get("summary") or str(res.get("counts")))[:160] + (" (cut at budget)" if res.get("cut") else "")
    except (KeyError, TypeError, AttributeError, ValueError):
        pass
    return ""


# --- command line ---------------------------------------------------------------------------------


def suite(
    out: str = os.environ.get("OUT") or "bench/results/suite",
    device: str | None = None,
    budget: float = DEFAULT_BUDGET_S,
    plan: bool = False,
    estimates: str | None = None,
    tiny: bool = False,
    full: bool = False,
    skip: str = "",
    train_variants: str | None = None,
    profile_variants: str | None = None,
    compile_backend: str | None = None,
    fast_variant: str | None = None,
) -> None:
    """Run every GPU-related check and timing inside a time budget (see the module docstring).

    Args:
        out: results folder.
        device: cuda or cpu (default: cuda when available).
        budget: seconds the suite may take, from its start.
        plan: print the sections and their estimates; run nothing.
        estimates: a previous results.json: plan with its measured seconds instead of the built-in estimates.
        tiny: tiny sizes (default on CPU).
        full: full sizes (default on CUDA).
        skip: comma-separated sections to leave out (e.g. cuda_tests,profile).
        train_variants: comma-separated variants of fastcifar.training.variant.VARIANTS (default CUDA:
            the GPU_TRAIN_VARIANTS; CPU: the CPU_TRAIN_VARIANTS of this module).
        profile_variants: comma-separated fastcifar.profile variants (default: the baseline and the fast variant).
        compile_backend: torch.compile backend for the profile section (default: inductor on CUDA, aot_eager on
            CPU, which traces without code generation).
        fast_variant: the variant the goal figures call fast (default: fastcifar.training.variant.FAST's name).
    """
    if tiny and full:
        raise UserError("--tiny and --full are opposite sizes; pass at most one of them.")
    if not (budget > 0 and math.isfinite(budget)):
        raise UserError(f"--budget must be a positive number of seconds, got {budget}.")
    args = argparse.Namespace(**{**locals(), "tiny": True if tiny else False if full else None})
    code = run(args)
    if code:
        raise SystemExit(code)


def load_estimates(path: str | None) -> dict[str, float]:
    """Measured seconds of the sections a previous run completed (``ok`` only), for planning."""
    if path is None:
        return {}
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        sections = record["sections"]
        return {
            name: float(e["seconds"])
            for name, e in sections.items()
            if e.get("status") == "ok" and isinstance(e.get("seconds"), (int, float))
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"--estimates {path!r} is not a readable suite results.json ({type(err).__name__}: {err})."
        ) from None


def print_plan(sections: list[Section], budget: float) -> None:
    """Sections, estimates and the running total; sections known to be skipped say why and count 0."""
    total = 0.0
    print(f"{'section':42s} {'estimate s':>10s} {'cumulative':>10s}")
    for s in sections:
        reason = s.skip_reason()
        if reason:
            print(f"{s.name:42s} {'–':>10s} {total:10.0f}  skipped: {reason}")
            continue
        total += s.estimate_s
        mark = "" if total <= budget - RESERVE_S else "  (past the budget: runs only if earlier sections are faster)"
        print(f"{s.name:42s} {s.estimate_s:10.0f} {total:10.0f}{mark}")
    print(f"{'total':42s} {total:10.0f}   budget {budget:.0f} s")


def _interrupt(signum: int, frame: Any) -> None:
    raise SuiteInterrupted(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    """The suite with :func:`suite`'s checked flags; returns the exit status (1 when a section failed)."""
    deadline = Deadline(args.budget)
    from fastcifar.training.variant import resolve_device

    device = resolve_device(args.device)
    tiny = (device.type != "cuda") if args.tiny is None else args.tiny
    vocabulary = variant_vocabulary()
    default_train = GPU_TRAIN_VARIANTS if device.type == "cuda" else CPU_TRAIN_VARIANTS
    given = args.train_variants.split(",") if args.train_variants else list(default_train)
    args.train_variants = [v.strip() for v in given if v.strip()]
    unknown = [v for v in args.train_variants if v not in vocabulary]
    if unknown:
        raise UserError(f"unknown --train_variants {', '.join(unknown)}; choose from: {', '.join(vocabulary)}.")
    args.profile_variants = (
        [v.strip() for v in args.profile_variants.split(",") if v.strip()] if args.profile_variants else None
    )
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out = Path(args.out)
    args.compile_backend = args.compile_backend or ("inductor" if device.type == "cuda" else "aot_eager")
    if args.fast_variant is not None and args.fast_variant not in vocabulary:
        raise UserError(f"unknown --fast_variant {args.fast_variant}; choose from: {', '.join(vocabulary)}.")
    ctx = Context(device=device, tiny=tiny, out=out, compile_backend=args.compile_backend)
    sections = build_sections(ctx, args, load_estimates(args.estimates))
    if args.plan:
        print(f"plan for {device} ({'tiny' if tiny else 'full'} sizes), budget {args.budget:.0f} s:")
        print_plan(sections, args.budget)
        return 0
    config = {
        "device": str(device),
        "tiny": tiny,
        "budget_s": args.budget,
        "skip": sorted(args.skip),
        "train_variants": args.train_variants,
        "compile_backend": args.compile_backend,
        "fast_variant": args.fast_variant or fast_variant_name(),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create --out {str(out)!r} ({err.strerror}); pass a writable folder.") from None
    suite = Suite(out, config, deadline, sections)
    ctx.suite = suite
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        suite.run_all()
    except (SuiteInterrupted, KeyboardInterrupt) as stop:
        suite.stop(str(stop) or "SIGINT")
        print(f"{PROG}: interrupted ({suite.record['interrupted']}); results so far in {out}", file=sys.stderr)
        return 130
    print()
    print(render_markdown(suite.record))
    failed = [n for n, e in suite.record["sections"].items() if e["status"] == "failed"]
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> None:
    """Command-line entry; fastcifar.cli runs it without fire where fire is absent (the GPU machine)."""
    from fastcifar.cli import run_cli

    run_cli(suite, PROG, argv=argv)


if __name__ == "__main__":
    main()
