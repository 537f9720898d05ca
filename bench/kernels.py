"""SK select, SK fuse mean and Z-pool: Triton kernels vs eager PyTorch vs Inductor, plus static sm_90 evidence.

Shapes are read off the models themselves (a meta-device forward at batch 256 with hooks on the
parameter-free ``SKSelect`` / ``ZPool`` modules), so the benchmark follows the models:
- ``sk_densenet``: SK select with M=2 on C=80 at 32x32, 16x16, 8x8, 4x4 and the stem's C=40 at 32x32;
- ``triplet_resnet``: Z-pool along C, H and W of (C, H=W) = (64, 8), (128, 4), (256, 2), (512, 1).
``short`` benchmarks only sk_densenet's shapes (what the GPU suite runs).

Timing (CUDA only). Each case is timed forward and forward+backward (``torch.autograd.grad``) for
four implementations side by side: ``triton`` (``kernels.*``), ``triton_compiled`` (the same under
``torch.compile``: Inductor launches the kernels), ``eager`` (the pure-PyTorch reference) and
``inductor`` (``torch.compile`` of the reference). Times are medians of
``triton.testing.do_bench_cudagraph`` (the calls replayed from one CUDA graph, so small shapes time
the GPU, not Python; falls back to ``do_bench`` when capture fails). Achieved GB/s counts only the
fewest bytes the op must move, and is given as a fraction of the device copy bandwidth (passed in as
``copy_gb_per_s`` or measured here: ``dst.copy_(src)`` of 1 GiB, read + write counted).
Shapes that fit in L2 (the 8x8 and smaller planes) are timed L2-warm, as in training.

Fewest bytes (X = N*C*H*W elements, e = element size, R = pooled size, logits included):
- SK select fwd: read M*X, write X.  fwd+bwd: fwd + read dV, M*X branches, write M*X grads.
- SK fuse mean fwd: read M*X (the sum is never written); its backward is a broadcast view.
- Z-pool fwd: read X, write 2X/R.  fwd+bwd: fwd + read 2X/R, write X (the saved argmax not counted).

Every timing run starts with a correctness pass (kernels vs a float64 reference, batch 2). Without
CUDA only that pass runs (through TRITON_INTERPRET=1).

Static mode (``--static``, no GPU needed): compiles every kernel specialisation sk_densenet and the
Triplet models launch at batch 256 for sm_90 and tabulates registers, spills, shared memory,
occupancy on an H200 SM, 128-bit global accesses, grid size against 132 SMs and bytes per launch;
writes ``kernels-static-<date>.json/.md``.

Usage: ``python -m bench.kernels [--static] [--short] [--dtype=bf16] [--layout=channels_last] [--batch=256]
[--copy_gb_per_s=X] [--out_dir=bench/results]``
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if not torch.cuda.is_available():
    # Without CUDA the correctness pass runs the kernels through the interpreter; Triton decides at
    # decoration time, so this must precede importing kernels. (--static sets it to 0 in a subprocess.)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastcifar.kernels as kernels
from bench.common import RESULTS_DIR, Deadline, check_out_dir, new_record, save_record

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("channels_last", "nchw")
SHORT_ARCHS = ("sk_densenet",)
TIMED_ARCHS = ("sk_densenet", "triplet_resnet")
STATIC_ARCHS = ("sk_densenet", "triplet_resnet", "densenet_triplet", "ca_triplet")

# A case: ("sk", M, C, H, W) or ("zpool", dim, C, H, W); the batch is added where used.
Case = tuple[str, int, int, int, int]


# --------------------------------------------------------------------------------------------------
# Shapes the models use
# --------------------------------------------------------------------------------------------------


def model_cases(arch: str, batch: int = 2) -> list[Case]:
    """Every SK select / Z-pool call of `arch` on a (batch, 3, 32, 32) input, from a meta-device forward."""
    from fastcifar.models import create_model
    from fastcifar.models.layers import SKSelect, ZPool

    found: set[Case] = set()

    def on_select(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        branches, _logits = args
        found.add(("sk", len(branches), *branches[0].shape[1:]))

    def on_pool(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        found.add(("zpool", module.dim, *args[0].shape[1:]))

    with torch.device("meta"):
        model = create_model(arch, impl="torch")
    for m in model.modules():
        if isinstance(m, SKSelect):
            m.register_forward_pre_hook(on_select)
        elif isinstance(m, ZPool):
            m.register_forward_pre_hook(on_pool)
    with torch.no_grad():
        model(torch.empty(batch, 3, 32, 32, device="meta"))
    # Largest planes first: the cases that matter most are measured before any deadline.
    return sorted(found, key=lambda c: (c[0], -c[3] * c[4], -c[2], c[1]))


def cases_for(archs: tuple[str, ...]) -> list[Case]:
    seen: dict[Case, None] = {}
    for arch in archs:
        for case in model_cases(arch):
            seen.setdefault(case, None)
    return list(seen)


def _fmt(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


# --------------------------------------------------------------------------------------------------
# Inputs and byte counts
# --------------------------------------------------------------------------------------------------


def sk_inputs(n: int, m: int, c: int, h: int, w: int, dtype: torch.dtype, layout: str, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    branches = [
        torch.randn(n, c, h, w, generator=g).to(device=device, dtype=dtype, memory_format=_fmt(layout))
        for _ in range(m)
    ]
    logits = torch.randn(n, m, c, generator=g).to(device=device, dtype=dtype)
    grad = torch.randn(n, c, h, w, generator=g).to(device=device, dtype=dtype, memory_format=_fmt(layout))
    return branches, logits, grad


def zpool_inputs(n: int, c: int, h: int, w: int, dim: int, dtype: torch.dtype, layout: str, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(device=device, dtype=dtype, memory_format=_fmt(layout))
    out_shape = list(x.shape)
    out_shape[dim] = 2
    grad = torch.randn(out_shape, generator=g).to(device=device, dtype=dtype)
    return x, grad


def sk_min_bytes(n: int, m: int, c: int, hw: int, elem: int, backward: bool) -> int:
    x = n * c * hw * elem
    logits = n * m * c * elem
    fwd = (m + 1) * x + logits
    return fwd + (2 * m + 1) * x + 2 * logits if backward else fwd


def fuse_mean_min_bytes(n: int, m: int, c: int, hw: int, elem: int) -> int:
    return m * n * c * hw * elem + n * c * elem


def zpool_min_bytes(n: int, c: int, h: int, w: int, dim: int, elem: int, backward: bool) -> int:
    x = n * c * h * w * elem
    pooled = 2 * x // (c, h, w)[dim - 1]
    fwd = x + pooled
    return fwd + pooled + x if backward else fwd


# --------------------------------------------------------------------------------------------------
# Correctness pass
# --------------------------------------------------------------------------------------------------


def _max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = max(expected.abs().max().item(), 1.0)
    return (actual.double() - expected).abs().max().item() / scale


def correctness_pass(cases: list[Case], dtype: torch.dtype, layout: str, device: str) -> list[dict[str, Any]]:
    """Kernels (forward and gradients) vs float64 references at batch 2 on every case's shape."""
    rows = []
    for kind, k, c, h, w in cases:
        if kind == "sk":
            branches, logits, grad = sk_inputs(2, k, c, h, w, dtype, layout, device, seed=1)
            inputs = [t.requires_grad_() for t in (*branches, logits)]
            out = kernels.sk_select(inputs[:-1], inputs[-1])
            grads = torch.autograd.grad(out, inputs, grad)
            ref_in = [t.detach().double().requires_grad_() for t in inputs]
            ref = kernels.sk_select_reference(ref_in[:-1], ref_in[-1])
            ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
            err = max(_max_rel_err(a, b) for a, b in zip((out, *grads), (ref, *ref_grads), strict=True))
            fuse_err = _max_rel_err(kernels.sk_fuse_mean(branches), kernels.sk_fuse_mean_reference(ref_in[:-1]))
            rows.append({"op": "sk_select", "shape": [2, k, c, h, w], "max_rel_err": err})
            rows.append({"op": "sk_fuse_mean", "shape": [2, k, c, h, w], "max_rel_err": fuse_err})
        else:
            x, grad = zpool_inputs(2, c, h, w, k, dtype, layout, device, seed=1)
            x.requires_grad_()
            out = kernels.zpool(x, k)
            (dx,) = torch.autograd.grad(out, x, grad)
            xd = x.detach().double().requires_grad_()
            ref = kernels.zpool_reference(xd, k)
            (ref_dx,) = torch.autograd.grad(ref, xd, grad.double())
            err = max(_max_rel_err(out, ref), _max_rel_err(dx, ref_dx))
            rows.append({"op": f"zpool(dim={k})", "shape": [2, c, h, w], "max_rel_err": err})
    return rows


# --------------------------------------------------------------------------------------------------
# Timing (CUDA)
# --------------------------------------------------------------------------------------------------


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth: read + write bytes of a 1 GiB copy over its median time."""
    src = torch.randn(2**28, device="cuda")  # 1 GiB of fp32
    dst = torch.empty_like(src)
    ms = _time(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _time(fn: Callable[[], Any]) -> float:
    """Median milliseconds per call: replayed from a CUDA graph, or timed launch by launch if capture fails."""
    from triton.testing import do_bench, do_bench_cudagraph

    try:
        return do_bench_cudagraph(fn, rep=100, return_mode="median")
    except Exception:  # noqa: BLE001 - any capture failure: fall back to plain launches
        torch.cuda.synchronize()
        return do_bench(fn, warmup=25, rep=100, return_mode="median")


def _implementations(kernel: Callable, reference: Callable) -> dict[str, Callable]:
    torch._dynamo.reset()  # fresh compile caches per case: no recompile limit, no dynamic-shape reuse
    return {
        "triton": kernel,
        "triton_compiled": torch.compile(kernel, fullgraph=True, dynamic=False),
        "eager": reference,
        "inductor": torch.compile(reference, fullgraph=True, dynamic=False),
    }


def time_case(case: Case, dtype: torch.dtype, layout: str, batch: int, copy_gbs: float) -> list[dict[str, Any]]:
    """Every implementation of one case, forward and forward+backward."""
    rows = []
    elem = torch.empty((), dtype=dtype).element_size()
    kind, k, c, h, w = case

    def record(op: str, shape: list[int], mode: str, impl: str, ms: float, nbytes: int) -> None:
        gbs = nbytes / (ms * 1e-3) / 1e9
        rows.append({
            "op": op, "shape": shape, "mode": mode, "impl": impl, "median_ms": round(ms, 5),
            "min_bytes": nbytes, "gb_per_s": round(gbs, 1), "fraction_of_copy": round(gbs / copy_gbs, 3),
        })  # fmt: skip
        print(f"{op:>16} {shape!s:>22} {mode:>7} {impl:>16} {ms * 1e3:9.1f} us {gbs:8.1f} GB/s {gbs / copy_gbs:6.1%}")

    if kind == "sk":
        shape = [batch, k, c, h, w]
        branches, logits, grad = sk_inputs(batch, k, c, h, w, dtype, layout, "cuda")
        leaves = [t.requires_grad_() for t in (*branches, logits)]
        for name, fn in _implementations(kernels.sk_select, kernels.sk_select_reference).items():

            def fwd(fn: Callable = fn) -> torch.Tensor:
                return fn(leaves[:-1], leaves[-1])

            record("sk_select", shape, "fwd", name, _time(lambda fwd=fwd: fwd().detach()),
                   sk_min_bytes(batch, k, c, h * w, elem, False))  # fmt: skip
            record("sk_select", shape, "fwd+bwd", name,
                   _time(lambda fwd=fwd: torch.autograd.grad(fwd(), leaves, grad)),
                   sk_min_bytes(batch, k, c, h * w, elem, True))  # fmt: skip
        s_grad = torch.randn(batch, c, device="cuda", dtype=dtype)
        for name, fn in _implementations(kernels.sk_fuse_mean, kernels.sk_fuse_mean_reference).items():
            nbytes = fuse_mean_min_bytes(batch, k, c, h * w, elem)
            record("sk_fuse_mean", shape, "fwd", name, _time(lambda fn=fn: fn(leaves[:-1]).detach()), nbytes)
            record("sk_fuse_mean", shape, "fwd+bwd", name,
                   _time(lambda fn=fn: torch.autograd.grad(fn(leaves[:-1]), leaves[:-1], s_grad)), nbytes)  # fmt: skip
    else:
        shape = [batch, c, h, w]
        x, grad = zpool_inputs(batch, c, h, w, k, dtype, layout, "cuda")
        x.requires_grad_()
        op = f"zpool(dim={k})"
        for name, fn in _implementations(kernels.zpool, kernels.zpool_reference).items():
            record(op, shape, "fwd", name, _time(lambda fn=fn: fn(x, k).detach()),
                   zpool_min_bytes(batch, c, h, w, k, elem, False))  # fmt: skip
            record(op, shape, "fwd+bwd", name, _time(lambda fn=fn: torch.autograd.grad(fn(x, k), x, grad)),
                   zpool_min_bytes(batch, c, h, w, k, elem, True))  # fmt: skip
    return rows


def _seconds_left(time_left: Callable[[], float] | Deadline | None) -> float:
    if time_left is None:
        return float("inf")
    if isinstance(time_left, Deadline):
        return time_left.time_left()
    return float(time_left())


def measure_until_deadline(
    cases: list[Case], measure: Callable[[Case], list[dict[str, Any]]], time_left: Callable[[], float] | Deadline | None
) -> tuple[list[dict[str, Any]], list[Case]]:
    """Measure cases in order while time is left; a case starts only if the last one's duration still fits.

    Returns the rows measured and the cases left out.
    """
    rows: list[dict[str, Any]] = []
    last_s = 0.0  # duration of the previous case, read off the same clock as time_left
    for i, case in enumerate(cases):
        before = _seconds_left(time_left)
        if before <= 0 or before < last_s:
            return rows, cases[i:]
        rows += measure(case)
        last_s = before - _seconds_left(time_left) if time_left is not None else 0.0
    return rows, []


# --------------------------------------------------------------------------------------------------
# Static report (no GPU)
# --------------------------------------------------------------------------------------------------


def static_rows(
    dtype: torch.dtype, layout: str, batch: int, archs: tuple[str, ...] = STATIC_ARCHS
) -> list[dict[str, Any]]:
    """One row per distinct kernel launch of `archs` at `batch`, analysed for sm_90 (kernels.static)."""
    from tqdm import tqdm

    from fastcifar.kernels import static

    users: dict[Case, list[str]] = {}
    for arch in archs:
        for case in model_cases(arch):
            users.setdefault(case, []).append(arch)
    rows = []
    for case, models in tqdm(users.items(), desc="compiling for sm_90", unit="shape"):
        kind, k, c, h, w = case
        if kind == "sk":
            launches = static.sk_launches((batch, k, c, h, w), dtype, _fmt(layout))
            shape = [batch, k, c, h, w]
        else:
            launches = static.zpool_launches((batch, c, h, w), k, dtype, _fmt(layout))
            shape = [batch, c, h, w]
        for op, launch in launches.items():
            rows.append({"op": op, "shape": shape, "models": models, **static.analyse(launch)})
    return rows


def _static_in_subprocess(dtype: str, layout: str, batch: int) -> list[dict[str, Any]]:
    """static_rows in a fresh process with TRITON_INTERPRET=0 (interpreted kernels cannot be compiled)."""
    code = (
        "import json, sys; from bench.kernels import DTYPES, static_rows; "
        f"json.dump(static_rows(DTYPES[{dtype!r}], {layout!r}, {batch}), sys.stdout)"
    )
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"static compile failed (exit {done.returncode}); see the messages above")
    return json.loads(done.stdout)


def _widths(counts: dict[str, int]) -> str:
    """{"128": 4, "16": 1} -> "128x4 16x1": access width in bits x number of instructions."""
    return " ".join(f"{bits}x{n}" for bits, n in counts.items()) or "-"


def _static_markdown(record: dict[str, Any]) -> str:
    lines = [f"# Kernel static report (sm_90, {record['date']})", "", f"Command: `{record['command']}`", ""]
    lines += [f"Config: `{json.dumps(record['config'])}`; environment: `{json.dumps(record['environment'])}`", ""]
    lines += [
        "Per launch at the models' shapes: registers/thread and spilled bytes (cubin), shared memory, resident",
        "blocks per H200 SM (65536 registers, 228 KB shared, 32 blocks, 2048 threads) and the limiting resource,",
        "grid size in programs per SM and in waves of resident blocks over 132 SMs, the widths (bits x count)",
        "of the global loads and stores in the PTX, and the bytes the launch reads and writes.",
        "",
        (
            "| op | shape | models | blocks (R/C x Q/HW) | warps | regs | spill B | smem B | blocks/SM (limit) | "
            "grid | grid/SM | waves | loads | stores | MB |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        c = r["constexprs"]
        blocks = f"{c.get('BLOCK_C', c.get('BLOCK_R'))}x{c.get('BLOCK_HW', c.get('BLOCK_Q'))}"
        lines.append(
            f"| {r['op']} | {r['shape']} | {', '.join(r['models'])} | {blocks} | {r['num_warps']} | {r['registers']} | "
            f"{r['spill_bytes']} | {r['shared_bytes']} | {r['blocks_per_sm']} ({r['limited_by']}) | {r['grid']} | "
            f"{r['grid_per_sm']} | {r['waves']} | {_widths(r['loads_bits'])} | {_widths(r['stores_bits'])} | "
            f"{r['bytes'] / 1e6:.2f} |"
        )
    return "\n".join(lines) + "\n"


def run_static(
    out_dir: str | Path = RESULTS_DIR, dtype: str = "bf16", layout: str = "channels_last", batch: int = 256
) -> dict[str, Any]:
    """Compile every kernel launch the models use for sm_90; write kernels-static-<date>.json/.md."""
    _check(dtype, layout)
    check_out_dir(out_dir, "--out_dir")
    rows = (
        static_rows(DTYPES[dtype], layout, batch)
        if not kernels.INTERPRET
        else _static_in_subprocess(dtype, layout, batch)
    )
    record = {
        **new_record("kernels-static"),  # nothing runs on a device: no device in the record or its name
        "config": {"dtype": dtype, "layout": layout, "batch": batch, "models": list(STATIC_ARCHS), "target": "sm_90"},
        "rows": rows,
    }
    save_record(out_dir, record, _static_markdown(record))
    return record


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def _check(dtype: str, layout: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'channels_last' or 'nchw', got {layout!r}.")


def _markdown(record: dict[str, Any]) -> str:
    lines = [f"# kernels benchmark ({record['environment']['device_type']}, {record['date']})", ""]
    lines += [f"Command: `{record['command']}`", "", f"Config: `{json.dumps(record['config'])}`", ""]
    lines += [
        "## Correctness (kernels vs float64 reference, batch 2)",
        "",
        "| op | shape | max rel. error |",
        "|---|---|---|",
    ]
    lines += [f"| {r['op']} | {r['shape']} | {r['max_rel_err']:.2e} |" for r in record["correctness"]]
    lines.append("")
    if record.get("timing"):
        lines += [f"Copy bandwidth: {record['copy_gb_per_s']:.0f} GB/s ({record['copy_source']})", ""]
        if record.get("stopped_early"):
            lines += [f"Stopped at the deadline; not measured: {record['not_measured']}", ""]
        lines += [
            (
                "| op | shape | mode | triton µs | triton_compiled µs | eager µs | inductor µs | triton GB/s | "
                "triton of copy | triton vs inductor |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        groups: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {}
        for r in record["timing"]:
            groups.setdefault((r["op"], str(r["shape"]), r["mode"]), {})[r["impl"]] = r
        for (op, shape, mode), by_impl in groups.items():
            impls = ("triton", "triton_compiled", "eager", "inductor")
            us = [f"{by_impl[i]['median_ms'] * 1e3:.1f}" if i in by_impl else "-" for i in impls]
            t, ind = by_impl.get("triton"), by_impl.get("inductor")
            gbs = f"{t['gb_per_s']:.0f}" if t else "-"
            of_copy = f"{t['fraction_of_copy']:.0%}" if t else "-"
            speedup = f"{ind['median_ms'] / t['median_ms']:.2f}x" if t and ind else "-"
            lines.append(f"| {op} | {shape} | {mode} | {' | '.join(us)} | {gbs} | {of_copy} | {speedup} |")
    else:
        lines.append(f"**Timing:** {record['timing_note']}")
    return "\n".join(lines) + "\n"


def run_benchmarks(
    out_dir: str | Path = RESULTS_DIR,
    dtype: str = "bf16",
    layout: str = "channels_last",
    batch: int = 256,
    *,
    short: bool = False,
    copy_gb_per_s: float | None = None,
    time_left: Callable[[], float] | Deadline | None = None,
) -> dict[str, Any]:
    """Correctness pass, then (CUDA only) the timing table; writes kernels-<device>-<date>.json/.md in out_dir.

    short: only sk_densenet's shapes. copy_gb_per_s: the copy ceiling measured elsewhere (else measured
    here). time_left: seconds left (a callable or a bench.common.Deadline); no new shape starts once it
    runs out, and the record keeps what was measured and lists what was not.
    """
    _check(dtype, layout)
    check_out_dir(out_dir, "--out_dir")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = DTYPES[dtype]
    archs = SHORT_ARCHS if short else TIMED_ARCHS
    cases = cases_for(archs)
    config = {"dtype": dtype, "layout": layout, "batch": batch, "short": short, "models": list(archs)}
    record: dict[str, Any] = {"config": config}
    uses_kernels = kernels.use_triton(torch.empty(1, device=device))
    print(f"correctness pass ({device}, {dtype}, {layout}, kernels used: {uses_kernels})")
    record["correctness"] = correctness_pass(cases, torch_dtype, layout, device)
    for r in record["correctness"]:
        print(f"  {r['op']:>16} {r['shape']!s:>20} max rel. error {r['max_rel_err']:.2e}")
    if device == "cuda":
        if copy_gb_per_s is None:
            record["copy_gb_per_s"], record["copy_source"] = round(copy_bandwidth_gbs(), 1), "measured here"
        else:
            record["copy_gb_per_s"], record["copy_source"] = float(copy_gb_per_s), "given"
        print(f"copy bandwidth {record['copy_gb_per_s']} GB/s ({record['copy_source']})")
        measure = functools.partial(
            time_case, dtype=torch_dtype, layout=layout, batch=batch, copy_gbs=record["copy_gb_per_s"]
        )
        record["timing"], not_measured = measure_until_deadline(cases, measure, time_left)
        if not_measured:
            record["stopped_early"] = True
            record["not_measured"] = [list(c) for c in not_measured]
            print(f"deadline: {len(not_measured)} shapes not measured")
    else:
        record["timing"] = []
        record["timing_note"] = (
            "timing needs CUDA; this CPU run is the correctness pass only (kernels through TRITON_INTERPRET=1)."
        )
        print(record["timing_note"])
    record = {**new_record("kernels", device), **record}
    save_record(out_dir, record, _markdown(record))
    return record


def main(
    dtype: str = "bf16",
    layout: str = "channels_last",
    batch: int = 256,
    out_dir: str = str(RESULTS_DIR),
    static: bool = False,
    short: bool = False,
    copy_gb_per_s: float | None = None,
) -> None:
    """Run the kernel benchmark, or with --static the sm_90 static report (see the module docstring)."""
    from fastcifar.errors import UserError

    try:
        if static:
            run_static(out_dir, dtype=dtype, layout=layout, batch=batch)
        else:
            run_benchmarks(out_dir, dtype=dtype, layout=layout, batch=batch, short=short, copy_gb_per_s=copy_gb_per_s)
    except ValueError as err:
        raise UserError(str(err)) from None


if __name__ == "__main__":
    from fastcifar.cli import run_cli

    run_cli(main, "bench.kernels")
