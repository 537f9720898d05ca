"""``python -m fastcifar.profile``: profile training steps of eager vs compiled variants.

Each variant trains a few steps (forward, loss, backward, Adam step) on synthetic CIFAR-like
batches from the ``gpu`` loader, first without the profiler (wall-clock step times, with a device
synchronisation per step), then under ``torch.profiler`` with a wait/warmup/active schedule,
shapes and memory recorded. Outputs, per variant::

    OUT/<variant>/<variant>.<ts>.pt.trace.json   Chrome/Perfetto JSON; TensorBoard reads the folder
    OUT/<variant>/run.json                       config, wall-clock and profiled step times, peak memory

Variants:

- ``eager``: the study's setting, fp32 NCHW, ``impl="torch"``; ``record_function`` ranges for
  every SK, Triplet and dense layer and for the SK select / Z-pool steps.
- ``compiled``: ``torch.compile`` + channels_last + bf16 autocast, ``impl="torch"``.
- ``compiled_triton``: as ``compiled`` with ``impl="triton"`` (the fused ``kernels`` ops).

Examples::

    python -m fastcifar.profile --arch sk_densenet --variants eager,compiled --steps 5 --out runs/profile
    python -m fastcifar.analyze runs/profile
    tensorboard --logdir runs/profile
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.profiler import ProfilerActivity, record_function

from fastcifar.errors import UserError
from fastcifar.atomic import write_json_atomic

PROG = "fastcifar.profile"


@dataclass(frozen=True)
class VariantSpec:
    """How one variant runs: compilation, memory format, autocast dtype, attention kernel impl."""

    compile: bool
    channels_last: bool
    bf16: bool
    impl: str


VARIANTS: dict[str, VariantSpec] = {
    "eager": VariantSpec(compile=False, channels_last=False, bf16=False, impl="torch"),
    "compiled": VariantSpec(compile=True, channels_last=True, bf16=True, impl="torch"),
    "compiled_triton": VariantSpec(compile=True, channels_last=True, bf16=True, impl="triton"),
}

# Module classes that get a record_function range per call in eager runs, by class name so this
# file needs no import of every model family; value = range prefix.
LAYER_RANGES = {
    "SKConv": "SKConv",
    "TripletAttention": "TripletAttention",
    "PostActBottleneck": "dense_layer",
    "PreActBottleneck": "dense_layer",
}
# Ranges around the two memory-bound steps the Triton kernels replace (see fastcifar.models.layers).
SK_SELECT_RANGE = "sk_select"
ZPOOL_RANGE = "zpool"


# ---------------------------------------------------------------------------------------------
# Argument parsing helpers
# ---------------------------------------------------------------------------------------------


def parse_variants(variants: str | Sequence[str]) -> list[str]:
    """``"eager,compiled"`` or a sequence -> validated list (order kept, duplicates dropped)."""
    names = variants.split(",") if isinstance(variants, str) else [str(v) for v in variants]
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise UserError(f"unknown variant(s) {unknown or names}; choose from: {', '.join(VARIANTS)}.")
    return list(dict.fromkeys(names))


def parse_model_kwargs(model_kwargs: str | dict | None) -> dict:
    """Model overrides from a dict or a JSON object string (``'{"growth_rate": 4}'``)."""
    if model_kwargs is None or model_kwargs == "":
        return {}
    if isinstance(model_kwargs, str):
        try:
            model_kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as err:
            raise UserError(f"--model_kwargs must be a JSON object, e.g. '{{\"growth_rate\": 4}}' ({err}).") from None
    if not isinstance(model_kwargs, dict):
        raise UserError(f"--model_kwargs must be a JSON object, got {model_kwargs!r}.")
    return dict(model_kwargs)


def resolve_device(device: str | None) -> torch.device:
    """``None`` -> CUDA when available, else CPU; a CUDA request without CUDA is a UserError."""
    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise UserError(f"--device {device!r} is not a device name ({err}); use cpu or cuda.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is visible; use --device cpu.")
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device!r} is not supported; use cpu or cuda.")
    return dev


# ---------------------------------------------------------------------------------------------
# Building blocks of a run
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(arch: str, spec: VariantSpec, model_kwargs: dict, num_classes: int) -> tuple[nn.Module, str | None]:
    """Create ``arch`` with the variant's ``impl`` when the model has attention kernels.

    Returns the model and the impl used (``None`` when the architecture takes no ``impl``).
    """
    from fastcifar.models import create_model, get_entry

    kwargs = dict(model_kwargs)
    accepts_impl = "impl" in get_entry(arch).override_names()
    if accepts_impl:
        kwargs["impl"] = spec.impl
    return create_model(arch, num_classes=num_classes, **kwargs), (spec.impl if accepts_impl else None)


def _gpu_loader_class() -> type:
    """The in-memory ``gpu`` loader class (module name differs between versions of the package)."""
    try:
        from fastcifar.data.loaders.gpu import GpuLoader  # type: ignore[import-not-found]
    except ImportError:
        from fastcifar.data.loaders.gpu_loader import GpuLoader
    return GpuLoader


def build_batches(
    device: torch.device, batch_size: int, num_classes: int, channels_last: bool, seed: int, num_batches: int = 4
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless augmented batches from the ``gpu`` loader over synthetic images (no FFCV, offline)."""
    from fastcifar.data.synthetic import make_arrays

    images, fine, _coarse = make_arrays(batch_size * num_batches, num_classes=num_classes, seed=seed)
    loader = _gpu_loader_class().from_arrays(
        images, fine, device=device, train=True, batch_size=batch_size, augment=True, seed=seed,
        dtype=torch.float32, channels_last=channels_last,
    )

    def endless() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from loader

    return endless()


@contextlib.contextmanager
def layer_ranges(model: nn.Module) -> Iterator[int]:
    """Wrap every SK / Triplet / dense-layer forward (and the SK select / Z-pool steps) in ranges.

    Forward pre/post hooks open and close a ``record_function`` named ``<Kind>:<module path>``;
    the select / Z-pool functions of :mod:`fastcifar.models.layers` are swapped for wrapped ones
    for the duration (the model files stay untouched). Eager only: under ``torch.compile`` the
    ranges would split the graph. Yields the number of wrapped modules.
    """
    from fastcifar.models import layers

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
        kind = LAYER_RANGES.get(type(module).__name__)
        if kind is None:
            continue
        pre, post = make_hooks(f"{kind}:{path}")
        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    originals = {name: getattr(layers, name) for name in ("sk_select_torch", "zpool_torch") if hasattr(layers, name)}

    def wrap(fn: Callable, label: str) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with record_function(label):
                return fn(*args, **kwargs)

        return wrapped

    if "sk_select_torch" in originals:
        layers.sk_select_torch = wrap(originals["sk_select_torch"], SK_SELECT_RANGE)
    if "zpool_torch" in originals:
        layers.zpool_torch = wrap(originals["zpool_torch"], ZPOOL_RANGE)
    try:
        yield len(handles) // 2
    finally:
        for handle in handles:
            handle.remove()
        for name, fn in originals.items():
            setattr(layers, name, fn)


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


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


def _median(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


# ---------------------------------------------------------------------------------------------
# One variant
# ---------------------------------------------------------------------------------------------


def profile_variant(
    name: str,
    *,
    arch: str,
    steps: int,
    batch_size: int,
    out: Path,
    model_kwargs: dict,
    device: torch.device,
    wait: int = 1,
    warmup: int = 1,
    compile_warmup: int = 2,
    num_classes: int = 100,
    seed: int = 0,
    with_stack: bool = False,
    compile_backend: str = "inductor",
    progress: Any = None,
) -> dict:
    """Time and profile one variant; write its trace and ``run.json``; return the run.json dict."""
    spec = VARIANTS[name]
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.pt.trace.json*"):  # a re-run replaces the variant's trace
        old.unlink()

    torch.manual_seed(seed)
    model, impl = build_model(arch, spec, model_kwargs, num_classes)
    model = model.to(device)
    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = build_batches(device, batch_size, num_classes, spec.channels_last, seed)
    inductor_kernel_ranges = False
    if spec.compile:
        if device.type == "cpu" and compile_backend == "inductor":
            # Inductor's C++ kernels are invisible to the profiler unless it wraps them in ranges
            # (a process-wide setting; it only adds ranges around kernels).
            import torch._inductor.config as inductor_config

            if hasattr(inductor_config.cpp, "enable_kernel_profile"):
                inductor_config.cpp.enable_kernel_profile = True
                inductor_kernel_ranges = True
        forward: nn.Module | Callable = torch.compile(model, backend=compile_backend)
    else:
        forward = model

    def train_step() -> None:
        with record_function("train_step"):
            with record_function("data"):
                images, labels = next(batches)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.bf16):
                loss = nn.functional.cross_entropy(forward(images), labels)
            loss.backward()
            with record_function("optimizer"):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        # One sync per step: the step's range then covers its device work, and wall times are real.
        _sync(device)

    def timed(n: int) -> list[float]:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            train_step()
            times.append((time.perf_counter() - start) * 1e3)
            if progress is not None:
                progress.update(1)
        return times

    ranges_ctx = layer_ranges(model) if not spec.compile else contextlib.nullcontext(0)
    with ranges_ctx as wrapped_layers:
        start = time.perf_counter()
        warm_ms = timed(compile_warmup if spec.compile else 1)
        warmup_s = time.perf_counter() - start
        wall_ms = timed(steps)

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

        with torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=steps, repeat=1),
            on_trace_ready=on_trace_ready,
            record_shapes=True,
            profile_memory=True,
            with_stack=with_stack,
        ) as prof:
            profiled_ms = []
            for _ in range(wait + warmup + steps):
                profiled_ms += timed(1)
                prof.step()
    if not written:
        raise RuntimeError(f"the profiler wrote no trace for variant {name!r}")

    info = {
        "variant": name,
        "spec": asdict(spec),
        "arch": arch,
        "model_kwargs": model_kwargs,
        "impl": impl,
        "triton_kernels": triton_mode(device, impl),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "batch_size": batch_size,
        "schedule": {"wait": wait, "warmup": warmup, "active": steps},
        "compile_backend": compile_backend if spec.compile else None,
        "compile_warmup_steps": compile_warmup if spec.compile else 1,
        "warmup_s": warmup_s,
        "warmup_step_ms": warm_ms,
        "wall_step_ms": wall_ms,
        "wall_median_step_ms": _median(wall_ms),
        "profiled_step_ms": profiled_ms[wait + warmup :],
        "profiled_median_step_ms": _median(profiled_ms[wait + warmup :]),
        "images_per_s": batch_size / (_median(wall_ms) / 1e3) if wall_ms else None,
        "memory": _peak_memory(device),
        "layer_ranges": wrapped_layers,
        "layer_ranges_note": "eager only: ranges would split the torch.compile graph" if spec.compile else "",
        "inductor_cpp_kernel_ranges": inductor_kernel_ranges,
        "record_shapes": True,
        "profile_memory": True,
        "with_stack": with_stack,
        "trace_files": sorted(written),
        "data": "gpu loader over synthetic arrays (fastcifar.data.synthetic.make_arrays), augmented",
        "optimizer": "Adam lr=1e-3",
        "versions": _versions(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(folder / "run.json", info)
    return info


# ---------------------------------------------------------------------------------------------
# Public API and command line
# ---------------------------------------------------------------------------------------------


def profile_variants(
    arch: str = "sk_densenet",
    variants: str | Sequence[str] = ("eager", "compiled", "compiled_triton"),
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
) -> dict:
    """Profile ``variants`` of ``arch``; return ``{"out": DIR, "variants": {name: run.json dict}}``.

    Args:
        arch: model id of :func:`fastcifar.models.create_model`.
        variants: names from :data:`VARIANTS`, as a list or comma-separated string.
        steps: profiled (active) steps, also the number of wall-clock timed steps.
        batch_size: images per step.
        out: output folder; one subfolder per variant.
        model_kwargs: overrides for ``create_model`` (dict or JSON string), e.g. a tiny config.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``; default CUDA when available.
        wait, warmup: profiler schedule steps before the active ones.
        compile_warmup: steps run before timing when compiling (compilation happens there).
        compile_backend: ``torch.compile`` backend; ``"aot_eager"`` traces without code
            generation (quick checks of the pipeline on CPU), ``"inductor"`` is the real thing.
    """
    from tqdm import tqdm

    names = parse_variants(variants)
    kwargs = parse_model_kwargs(model_kwargs)
    dev = resolve_device(device)
    for label, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("wait", wait, 0), ("warmup", warmup, 0), ("compile_warmup", compile_warmup, 1)):
        if not isinstance(value, int) or value < low:
            raise UserError(f"--{label} must be an integer >= {low}, got {value!r}.")
    from fastcifar.models import list_models

    if arch not in list_models():
        raise UserError(f"unknown --arch {arch!r}; choose one of: {', '.join(list_models())}.")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    per_variant = {n: (compile_warmup if VARIANTS[n].compile else 1) + 2 * steps + wait + warmup for n in names}
    results = {}
    with tqdm(total=sum(per_variant.values()), desc="profile", unit="step") as bar:
        for name in names:
            bar.set_postfix_str(name)
            results[name] = profile_variant(
                name, arch=arch, steps=steps, batch_size=batch_size, out=root, model_kwargs=kwargs,
                device=dev, wait=wait, warmup=warmup, compile_warmup=compile_warmup,
                num_classes=num_classes, seed=seed, with_stack=with_stack, compile_backend=compile_backend,
                progress=bar,
            )
    return {"out": str(root), "variants": results}


def main(
    arch: str = "sk_densenet",
    variants: str = "eager,compiled,compiled_triton",
    steps: int = 5,
    batch_size: int = 256,
    out: str = "runs/profile",
    model_kwargs: str | dict | None = None,
    device: str | None = None,
    wait: int = 1,
    warmup: int = 1,
    compile_warmup: int = 2,
    with_stack: bool = False,
    compile_backend: str = "inductor",
) -> None:
    """Profile training steps of eager / compiled / compiled_triton; see the module docstring."""
    result = profile_variants(
        arch, variants, steps, batch_size, out, model_kwargs, device,
        wait=wait, warmup=warmup, compile_warmup=compile_warmup, with_stack=with_stack,
        compile_backend=compile_backend,
    )
    for name, info in result["variants"].items():
        print(
            f"{name:16s} wall median {info['wall_median_step_ms']:.2f} ms/step "
            f"(profiled {info['profiled_median_step_ms']:.2f}); kernels: {info['triton_kernels']}; "
            f"trace {Path(result['out']) / name / info['trace_files'][0]}"
        )
    print(f"next: python -m fastcifar.analyze {result['out']}   |   tensorboard --logdir {result['out']}")


if __name__ == "__main__":
    from fastcifar.cli import run_cli

    run_cli(main, PROG)
