"""``python -m fastcifar.profile``: profile the training step of several variants side by side.

Each variant (a name from :data:`fastcifar.training.variant.VARIANTS`) trains a few steps of the real
training step, :func:`fastcifar.training.engine.train_step`, with the optimiser and schedule training uses
(:func:`fastcifar.training.engine.build_optimizer`: Adam, fused on CUDA, OneCycleLR), on synthetic
CIFAR-like batches from the ``gpu`` loader: first without the profiler (wall-clock step times,
one device synchronisation per step), then under ``torch.profiler`` with a wait/warmup/active
schedule, shapes and memory recorded. Outputs, per variant::

    OUT/<variant>/<variant>.<ts>.pt.trace.json   Chrome/Perfetto JSON; TensorBoard reads the folder
    OUT/<variant>/run.json                       config, optimiser, schedule, step composition,
                                                 wall-clock and profiled step times, peak memory

Eager variants get ``record_function`` ranges from forward hooks: ``<Kind>:<module path>`` for
every SK, Triplet and dense layer, and ``sk_select`` / ``zpool`` around the parameter-free
:class:`~fastcifar.models.layers.SKSelect` and :class:`~fastcifar.models.ZPool` modules (the steps
the Triton kernels replace). Compiled variants get none: ranges would split the compiled graph.

Each variant's output folder is named after the variant.

Examples::

    python -m fastcifar.profile --arch sk_densenet --variants eager_fp32,compiled_bf16_cl --steps 5 --out runs/profile
    python -m fastcifar.analyze runs/profile
    tensorboard --logdir runs/profile
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, record_function

from fastcifar.atomic import folder_write_problem, write_json_atomic
from fastcifar.cli import to_mapping
from fastcifar.errors import UserError
from fastcifar.locks import hold_folder
from fastcifar.training import engine
from fastcifar.training.variant import Variant, get_variant, parse_variants, resolve_device

PROG = "fastcifar.profile"
DEFAULT_VARIANTS = ("eager_fp32", "compiled_bf16_cl", "compiled_bf16_cl_triton")
# Ranges around the two memory-bound steps the Triton kernels replace (names the analyzer matches).
SK_SELECT_RANGE = "sk_select"
ZPOOL_RANGE = "zpool"


def range_kinds() -> dict[type[nn.Module], str]:
    """Module types that get a ``record_function`` range per forward call -> range prefix.

    Matched with ``isinstance``; a ``":<module path>"`` suffix is added for layers, not for the
    parameter-free select / Z-pool steps (the analyzer sums those by name).
    """
    from fastcifar.models.densenet import PostActBottleneck, PreActBottleneck
    from fastcifar.models.layers import SKConv, SKSelect, TripletAttention, ZPool

    return {
        SKConv: "SKConv",
        TripletAttention: "TripletAttention",
        PostActBottleneck: "dense_layer",
        PreActBottleneck: "dense_layer",
        SKSelect: SK_SELECT_RANGE,
        ZPool: ZPOOL_RANGE,
    }


# ---------------------------------------------------------------------------------------------
# Building blocks of a run
# ---------------------------------------------------------------------------------------------


def build_batches(
    device: torch.device, batch_size: int, num_classes: int, channels_last: bool, seed: int, num_batches: int = 4
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless augmented batches from the ``gpu`` loader over synthetic images (no FFCV, offline)."""
    from fastcifar.data.loaders.gpu import GpuLoader
    from fastcifar.data.synthetic import make_arrays

    images, fine, _coarse = make_arrays(batch_size * num_batches, num_classes=num_classes, seed=seed)
    loader = GpuLoader.from_arrays(
        images,
        fine,
        device=device,
        train=True,
        batch_size=batch_size,
        augment=True,
        seed=seed,
        dtype=torch.float32,
        channels_last=channels_last,
    )

    def endless() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    return endless()


@contextlib.contextmanager
def layer_ranges(model: nn.Module) -> Iterator[int]:
    """Wrap the forward of every module of a :func:`range_kinds` type in a profiler range.

    Forward pre/post hooks open and close a ``record_function``; the hooks are removed on exit and
    nothing else is changed. Eager only: under ``torch.compile`` the ranges would split the graph.
    Yields the number of modules wrapped.
    """
    kinds = range_kinds()
    handles = []
    open_ranges: dict[int, list[record_function]] = {}

    def make_hooks(label: str) -> tuple[Callable, Callable]:
        def pre(module: nn.Module, _args: Any) -> None:
            rf = record_function(label)
            rf.__enter__()
            open_ranges.setdefault(id(module), []).append(rf)

        def post(module: nn.Module, _args: Any, _out: Any) -> None:
            open_ranges[id(module)].pop().__exit__(None, None, None)

        return pre, post

    for path, module in model.named_modules():
        kind = next((label for cls, label in kinds.items() if isinstance(module, cls)), None)
        if kind is None:
            continue
        label = kind if kind in (SK_SELECT_RANGE, ZPOOL_RANGE) else f"{kind}:{path}"
        pre, post = make_hooks(label)
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield len(handles) // 2
    finally:
        for handle in handles:
            handle.remove()


def model_impl(model: nn.Module) -> str | None:
    """The ``impl`` the model's attention layers run (``None`` when it has none)."""
    from fastcifar.models.layers import SKSelect, ZPool

    found = sorted({m.impl for m in model.modules() if isinstance(m, (SKSelect, ZPool))})
    return "+".join(found) if found else None


def triton_mode(device: torch.device, impl: str | None) -> str:
    """How the fused kernels execute for this run, in words (recorded in run.json)."""
    if impl != "triton":
        return "not used"
    if device.type == "cuda":
        return "triton kernels on the GPU"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "triton interpreter on CPU (TRITON_INTERPRET=1)"
    return "pure-PyTorch reference fallback (CPU tensors, TRITON_INTERPRET unset)"


def _peak_memory(device: torch.device) -> dict:
    if device.type == "cuda":
        return {
            "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(device)),
            "peak_reserved_bytes": int(torch.cuda.max_memory_reserved(device)),
            "source": "torch.cuda.max_memory_allocated / max_memory_reserved",
        }
    # ru_maxrss is KiB on Linux: the process's resident peak, not only this variant's tensors.
    return {
        "peak_rss_bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
        "source": "process peak RSS (getrusage); the trace's allocator events give tensor memory",
    }


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


def _enable_inductor_cpu_kernel_ranges(device: torch.device, compile_backend: str) -> bool:
    """Inductor's C++ kernels are invisible to the profiler unless it wraps them in ranges.

    A process-wide setting that only adds ranges around kernels; returns whether it is on.
    """
    if device.type != "cpu" or compile_backend != "inductor":
        return False
    import torch._inductor.config as inductor_config

    if not hasattr(inductor_config.cpp, "enable_kernel_profile"):
        return False
    inductor_config.cpp.enable_kernel_profile = True
    return True


# ---------------------------------------------------------------------------------------------
# One variant
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileSettings:
    """What every variant of one profile shares: :func:`profile_variants`' arguments, checked."""

    arch: str
    steps: int
    batch_size: int
    model_kwargs: dict
    device: torch.device
    wait: int
    warmup: int
    compile_warmup: int
    num_classes: int
    seed: int
    with_stack: bool
    compile_backend: str
    lr: float
    weight_decay: float
    schedule: str
    label_smoothing: float

    def check(self) -> None:
        """UserError for a count out of range, an unknown schedule or an unknown model."""
        from fastcifar.models import list_models

        minimum = {"steps": 1, "batch_size": 2, "wait": 0, "warmup": 0, "compile_warmup": 1}
        for label, low in minimum.items():
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                why = " (BatchNorm trains on batches of 2 or more)" if label == "batch_size" else ""
                raise UserError(f"--{label} must be an integer >= {low}{why}, got {value!r}.")
        if self.schedule not in engine.SCHEDULES:
            raise UserError(f"unknown --schedule {self.schedule!r}; choose one of: {', '.join(engine.SCHEDULES)}.")
        if self.arch not in list_models(include_aliases=True):
            raise UserError(f"unknown --arch {self.arch!r}; choose one of: {', '.join(list_models())}.")

    def warm_steps(self, variant: Variant) -> int:
        """Untimed steps first: compilation happens in them when the variant compiles."""
        return self.compile_warmup if variant.compile else 1

    def total_steps(self, variant: Variant) -> int:
        """Every step a variant runs: warm-up, timed, then the profiler's wait + warmup + active."""
        return self.warm_steps(variant) + self.steps + self.wait + self.warmup + self.steps


@dataclass
class StepTimer:
    """Runs the training step one step at a time, each in a ``train_step`` range, and times it."""

    step: engine.TrainingStep
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    progress: Any = None

    def run(self, n: int) -> list[float]:
        """Run ``n`` steps; return each one's wall time in ms."""
        times = []
        for _ in range(n):
            start = time.perf_counter()
            with record_function("train_step"):
                self.step(*next(self.batches))
            # One sync per step: the step's range then covers its device work, and wall times are real.
            engine.synchronize(self.step.settings.device)
            times.append((time.perf_counter() - start) * 1e3)
            if self.progress is not None:
                self.progress.update(1)
        return times


@dataclass(frozen=True)
class StepTimes:
    """A variant's step times: untimed warm-up (ms each, and s in all), wall-clock and profiled (ms)."""

    warmup_ms: list[float]
    warmup_s: float
    wall_ms: list[float]
    profiled_ms: list[float]


def record_trace(timer: StepTimer, folder: Path, name: str, settings: ProfileSettings) -> tuple[list[float], list[str]]:
    """Run wait + warmup + active steps under ``torch.profiler`` and publish the trace in ``folder``.

    Returns the active steps' times (ms) and the names of the trace files written.
    """
    device = settings.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    written: list[str] = []

    def on_trace_ready(prof: torch.profiler.profile) -> None:
        # The TensorBoard handler writes into a private folder; the rename publishes it whole.
        with tempfile.TemporaryDirectory(dir=folder, prefix=".trace-") as tmp:
            torch.profiler.tensorboard_trace_handler(tmp, worker_name=name)(prof)
            for produced in Path(tmp).iterdir():
                os.replace(produced, folder / produced.name)
                written.append(produced.name)

    skipped = settings.wait + settings.warmup
    with torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=settings.wait, warmup=settings.warmup, active=settings.steps, repeat=1),
        on_trace_ready=on_trace_ready,
        record_shapes=True,
        profile_memory=True,
        with_stack=settings.with_stack,
    ) as prof:
        profiled_ms = []
        for _ in range(skipped + settings.steps):
            profiled_ms += timer.run(1)
            prof.step()
    if not written:
        raise RuntimeError(f"the profiler wrote no trace for variant {name!r}")
    return profiled_ms[skipped:], sorted(written)


def run_record(
    name: str,
    variant: Variant,
    settings: ProfileSettings,
    times: StepTimes,
    *,
    impl: str | None,
    wrapped_layers: int,
    inductor_kernel_ranges: bool,
    trace_files: list[str],
    described: dict,
) -> dict:
    """The ``run.json`` of one profiled variant (``described``: :func:`fastcifar.training.engine.describe_step`)."""
    from fastcifar.environment import versions

    device = settings.device
    return {
        "variant": name,
        "spec": variant.describe(),
        "arch": settings.arch,
        "model_kwargs": settings.model_kwargs,
        "impl": impl,
        "triton_kernels": triton_mode(device, impl),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "batch_size": settings.batch_size,
        "profiler_schedule": {"wait": settings.wait, "warmup": settings.warmup, "active": settings.steps},
        "compile_backend": settings.compile_backend if variant.compile else None,
        "compile_warmup_steps": settings.warm_steps(variant),
        "warmup_s": times.warmup_s,
        "warmup_step_ms": times.warmup_ms,
        "wall_step_ms": times.wall_ms,
        "wall_median_step_ms": _median(times.wall_ms),
        "profiled_step_ms": times.profiled_ms,
        "profiled_median_step_ms": _median(times.profiled_ms),
        "images_per_s": settings.batch_size / (_median(times.wall_ms) / 1e3) if times.wall_ms else None,
        "memory": _peak_memory(device),
        "layer_ranges": wrapped_layers,
        "layer_ranges_note": "eager only: ranges would split the torch.compile graph" if variant.compile else "",
        "inductor_cpp_kernel_ranges": inductor_kernel_ranges,
        "record_shapes": True,
        "profile_memory": True,
        "with_stack": settings.with_stack,
        "trace_files": trace_files,
        "data": "gpu loader over synthetic arrays (fastcifar.data.synthetic.make_arrays), augmented",
        "lr": settings.lr,
        # engine.describe_step: what the step does, read from the objects that ran it.
        "optimizer": described["optimizer"],
        "schedule": described["schedule"],
        "step": described["step"],
        "versions": versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def profile_variant(name: str, settings: ProfileSettings, out: Path, progress: Any = None) -> dict:
    """Time and profile one variant; write its trace and ``run.json`` into ``out/name``; return the latter.

    The model, optimiser, schedule and step are built as training builds them; the schedule spans
    exactly the steps run here (warm-up, timed and profiled), so ``settings.lr`` is its peak.
    """
    variant = get_variant(name)
    device = settings.device
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.pt.trace.json*"):  # a killed earlier attempt's trace (it wrote no run.json)
        old.unlink()

    torch.manual_seed(settings.seed)
    # Inductor reads this when it compiles, at the first step.
    inductor_kernel_ranges = variant.compile and _enable_inductor_cpu_kernel_ranges(device, settings.compile_backend)
    step = engine.build_step(
        settings.arch,
        settings.model_kwargs,
        variant,
        device,
        lr=settings.lr,
        epochs=1,
        steps_per_epoch=settings.total_steps(variant),
        num_classes=settings.num_classes,
        weight_decay=settings.weight_decay,
        schedule=settings.schedule,
        label_smoothing=settings.label_smoothing,
        compile_backend=settings.compile_backend,
    )
    step.model.train()
    impl = model_impl(step.model)
    described = step.describe()
    images = build_batches(device, settings.batch_size, settings.num_classes, variant.channels_last, settings.seed)
    timer = StepTimer(step, engine.batches_in_ranges(images), progress)

    with layer_ranges(step.model) if not variant.compile else contextlib.nullcontext(0) as wrapped_layers:
        start = time.perf_counter()
        warmup_ms = timer.run(settings.warm_steps(variant))
        warmup_s = time.perf_counter() - start
        wall_ms = timer.run(settings.steps)
        profiled_ms, trace_files = record_trace(timer, folder, name, settings)

    info = run_record(
        name,
        variant,
        settings,
        StepTimes(warmup_ms, warmup_s, wall_ms, profiled_ms),
        impl=impl,
        wrapped_layers=wrapped_layers,
        inductor_kernel_ranges=inductor_kernel_ranges,
        trace_files=trace_files,
        described=described,
    )
    write_json_atomic(folder / "run.json", info)
    return info


# ---------------------------------------------------------------------------------------------
# Public API and command line
# ---------------------------------------------------------------------------------------------


def profile_variants(
    arch: str = "sk_densenet",
    variants: str | Sequence[str] = DEFAULT_VARIANTS,
    steps: int = 5,
    batch_size: int = 256,
    out: str | os.PathLike = "runs/profile",
    model_kwargs: str | dict | None = None,
    device: str | None = None,
    *,
    wait: int = 1,
    warmup: int = 1,
    compile_warmup: int = 2,
    num_classes: int = 100,
    seed: int = 0,
    with_stack: bool = False,
    compile_backend: str = "inductor",
    lr: float = 0.01,
    weight_decay: float = 0.0,
    schedule: str = "onecycle",
    label_smoothing: float = 0.0,
) -> dict:
    """Profile ``variants`` of ``arch``; return ``{"out": DIR, "variants": {name: run.json dict}}``.

    Args:
        arch: model id of :func:`fastcifar.models.create_model`.
        variants: names from :data:`fastcifar.training.variant.VARIANTS` (or its aliases), as a list or a
            comma-separated string.
        steps: profiled (active) steps, also the number of wall-clock timed steps.
        batch_size: images per step.
        out: output folder; one subfolder per variant.
        model_kwargs: overrides for ``create_model`` (a dict, as JSON or a Python literal), e.g. a tiny config.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; default CUDA when available.
        wait, warmup: profiler schedule steps before the active ones.
        compile_warmup: steps run before timing when compiling (compilation happens there).
        num_classes: classes of the model's head and of the synthetic labels.
        seed: seed of the weights and of the synthetic batches.
        with_stack: record Python stacks in the trace (larger traces).
        compile_backend: ``torch.compile`` backend; ``"aot_eager"`` traces without code
            generation (quick checks of the pipeline on CPU), ``"inductor"`` is the real thing.
        lr, weight_decay, schedule, label_smoothing: as ``python -m fastcifar.train`` takes them
            (:func:`fastcifar.training.engine.build_optimizer`); ``lr`` is the schedule's peak.
    """
    from tqdm import tqdm

    names = parse_variants(variants)
    settings = ProfileSettings(
        arch=arch,
        steps=steps,
        batch_size=batch_size,
        model_kwargs={} if model_kwargs in (None, "") else to_mapping("model_kwargs", model_kwargs),
        device=resolve_device(device),
        wait=wait,
        warmup=warmup,
        compile_warmup=compile_warmup,
        num_classes=num_classes,
        seed=seed,
        with_stack=with_stack,
        compile_backend=compile_backend,
        lr=lr,
        weight_decay=weight_decay,
        schedule=schedule,
        label_smoothing=label_smoothing,
    )
    settings.check()
    root = Path(out)
    problem = folder_write_problem(root)
    if problem is not None:
        raise UserError(f"cannot write the profile into {root} ({problem}); pass a writable --out folder.")
    refuse_earlier_profiles(root, names)  # before the lock: a refused folder is left as it was
    total = sum(settings.total_steps(get_variant(name)) for name in names)
    results = {}
    with hold_folder(root, PROG), tqdm(total=total, desc="profile", unit="step") as bar:
        refuse_earlier_profiles(root, names)  # and under it: one that finished meanwhile counts too
        for name in names:
            bar.set_postfix_str(name)
            results[name] = profile_variant(name, settings, root, progress=bar)
    return {"out": str(root), "variants": results}


def refuse_earlier_profiles(root: Path, names: Sequence[str]) -> None:
    """Earlier results are never replaced: UserError when ``root`` holds a finished profile of a variant."""
    earlier = [name for name in names if (root / name / "run.json").is_file()]
    if earlier:
        raise UserError(
            f"{root} already holds a profile of {', '.join(earlier)} ({earlier[0]}/run.json); pass another --out "
            "(or profile only other variants there)"
        )


def main(**flags: Any) -> None:
    """Profile several variants and print one line each; the flags are :func:`profile_variants`' parameters."""
    result = profile_variants(**flags)
    for name, info in result["variants"].items():
        print(
            f"{name:24s} wall median {info['wall_median_step_ms']:.2f} ms/step "
            f"(profiled {info['profiled_median_step_ms']:.2f}); kernels: {info['triton_kernels']}; "
            f"trace {Path(result['out']) / name / info['trace_files'][0]}"
        )
    print(f"next: python -m fastcifar.analyze {result['out']}   |   tensorboard --logdir {result['out']}")
