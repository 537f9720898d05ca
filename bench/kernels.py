"""SK select and Z-pool: Triton kernels vs eager PyTorch vs torch.compile of the reference.

Shapes are the ones the study's models run at batch 256:
- ``sk_densenet``: SK select with M=2 on C=80 at 32x32, 16x16, 8x8, 4x4 and the stem's C=40 at 32x32;
- ``triplet_resnet``: Z-pool along C, H and W of (C, H=W) = (64, 8), (128, 4), (256, 2), (512, 1).

Each case is timed forward and forward+backward (``torch.autograd.grad``, so no ``.grad``
accumulation is timed) for four implementations:
``triton`` (``kernels.sk_select`` / ``kernels.zpool``), ``triton_compiled`` (the same under
``torch.compile``: Inductor launches the kernels), ``eager`` (the pure-PyTorch reference) and
``inductor`` (``torch.compile`` of the reference). Times are medians of
``triton.testing.do_bench(..., return_mode="median")``. Achieved GB/s counts only the fewest bytes
the op must move (listed per op below), and is also given as a fraction of the measured
device-to-device copy bandwidth (``dst.copy_(src)`` of 1 GiB, read + write counted).

Fewest bytes (e = element size, X = N*C*H*W elements, R = pooled size, small logits included):
- SK fwd: read M*X, write X.  SK fwd+bwd: fwd + read dV, M*X branches, write M*X grads.
- Z-pool fwd: read X, write 2X/R.  fwd+bwd: fwd + read 2X/R, write X (the argmax the kernel saves,
  1-4 bytes per X/R, is not counted).

Every run starts with a correctness pass (kernels vs a float64 reference, batch 2, full channel and
spatial sizes). Without CUDA only the correctness pass runs (through TRITON_INTERPRET=1) and the
result says that timing needs CUDA.

Usage: ``python -m bench.kernels [--dtype=bf16] [--layout=channels_last] [--batch=256] [--out_dir=bench/results]``
"""

import datetime
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

if not torch.cuda.is_available():
    # Without CUDA the correctness pass runs the kernels through the interpreter; Triton decides at
    # decoration time, so this must precede importing kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import kernels  # noqa: E402
from bench.common import RESULTS_DIR, write_text_atomic

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SK_CASES = [(80, 32), (80, 16), (80, 8), (80, 4), (40, 32)]  # (C, H = W), M = 2
ZPOOL_CASES = [(64, 8), (128, 4), (256, 2), (512, 1)]  # (C, H = W), pooled along dims 1, 2, 3
SK_BRANCHES = 2


# --------------------------------------------------------------------------------------------------
# Inputs and byte counts
# --------------------------------------------------------------------------------------------------


def _fmt(layout: str) -> torch.memory_format:
    return torch.channels_last if layout == "channels_last" else torch.contiguous_format


def sk_inputs(n: int, c: int, s: int, dtype: torch.dtype, layout: str, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    branches = [
        torch.randn(n, c, s, s, generator=g).to(device=device, dtype=dtype, memory_format=_fmt(layout))
        for _ in range(SK_BRANCHES)
    ]
    logits = torch.randn(n, SK_BRANCHES, c, generator=g).to(device=device, dtype=dtype)
    grad = torch.randn(n, c, s, s, generator=g).to(device=device, dtype=dtype, memory_format=_fmt(layout))
    return branches, logits, grad


def zpool_inputs(n: int, c: int, s: int, dim: int, dtype: torch.dtype, layout: str, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, s, s, generator=g).to(device=device, dtype=dtype, memory_format=_fmt(layout))
    out_shape = list(x.shape)
    out_shape[dim] = 2
    grad = torch.randn(out_shape, generator=g).to(device=device, dtype=dtype)
    return x, grad


def sk_min_bytes(n: int, c: int, s: int, elem: int, backward: bool) -> int:
    x = n * c * s * s * elem
    logits = n * SK_BRANCHES * c * elem
    fwd = (SK_BRANCHES + 1) * x + logits
    return fwd + (2 * SK_BRANCHES + 1) * x + 2 * logits if backward else fwd


def zpool_min_bytes(n: int, c: int, s: int, dim: int, elem: int, backward: bool) -> int:
    x = n * c * s * s * elem
    pooled = (n * c * s * s // (c if dim == 1 else s)) * elem
    fwd = x + 2 * pooled
    return fwd + 2 * pooled + x if backward else fwd


# --------------------------------------------------------------------------------------------------
# Correctness pass
# --------------------------------------------------------------------------------------------------


def _max_rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    scale = max(expected.abs().max().item(), 1.0)
    return (actual.double() - expected).abs().max().item() / scale


def correctness_pass(dtype: torch.dtype, layout: str, device: str) -> list[dict[str, Any]]:
    """Kernels (forward and gradients) vs float64 references at batch 2 on every benchmark shape."""
    rows = []
    for c, s in SK_CASES:
        branches, logits, grad = sk_inputs(2, c, s, dtype, layout, device, seed=1)
        inputs = [t.requires_grad_() for t in (*branches, logits)]
        out = kernels.sk_select(inputs[:-1], inputs[-1])
        grads = torch.autograd.grad(out, inputs, grad)
        ref_in = [t.detach().double().requires_grad_() for t in inputs]
        ref = kernels.sk_select_reference(ref_in[:-1], ref_in[-1])
        ref_grads = torch.autograd.grad(ref, ref_in, grad.double())
        err = max(_max_rel_err(a, b) for a, b in zip((out, *grads), (ref, *ref_grads)))
        rows.append({"op": "sk_select", "shape": [2, c, s, s], "max_rel_err": err})
    for c, s in ZPOOL_CASES:
        for dim in (1, 2, 3):
            x, grad = zpool_inputs(2, c, s, dim, dtype, layout, device, seed=1)
            x.requires_grad_()
            out = kernels.zpool(x, dim)
            (dx,) = torch.autograd.grad(out, x, grad)
            xd = x.detach().double().requires_grad_()
            ref = kernels.zpool_reference(xd, dim)
            (ref_dx,) = torch.autograd.grad(ref, xd, grad.double())
            err = max(_max_rel_err(out, ref), _max_rel_err(dx, ref_dx))
            rows.append({"op": f"zpool(dim={dim})", "shape": [2, c, s, s], "max_rel_err": err})
    return rows


# --------------------------------------------------------------------------------------------------
# Timing (CUDA)
# --------------------------------------------------------------------------------------------------


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy bandwidth: read + write bytes of a 1 GiB copy over its median time."""
    from triton.testing import do_bench

    src = torch.randn(2**28, device="cuda")  # 1 GiB of fp32
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _implementations(op: str) -> dict[str, Callable]:
    if op == "sk_select":
        kernel, reference = kernels.sk_select, kernels.sk_select_reference
    else:
        kernel, reference = kernels.zpool, kernels.zpool_reference
    torch._dynamo.reset()  # fresh compile caches per case: no recompile limit, no dynamic-shape reuse
    return {
        "triton": kernel,
        "triton_compiled": torch.compile(kernel, fullgraph=True, dynamic=False),
        "eager": reference,
        "inductor": torch.compile(reference, fullgraph=True, dynamic=False),
    }


def _time(fn: Callable[[], Any]) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def time_cases(dtype: torch.dtype, layout: str, batch: int, copy_gbs: float, device: str = "cuda") -> list[dict[str, Any]]:
    rows = []
    elem = torch.empty((), dtype=dtype).element_size()

    def record(op: str, shape: list[int], mode: str, impl: str, ms: float, nbytes: int) -> None:
        gbs = nbytes / (ms * 1e-3) / 1e9
        rows.append({
            "op": op, "shape": shape, "mode": mode, "impl": impl, "median_ms": round(ms, 5),
            "min_bytes": nbytes, "gb_per_s": round(gbs, 1), "fraction_of_copy": round(gbs / copy_gbs, 3),
        })  # fmt: skip
        print(f"{op:>16} {str(shape):>20} {mode:>7} {impl:>16} {ms * 1e3:9.1f} us {gbs:8.1f} GB/s {gbs / copy_gbs:6.1%}")

    for c, s in SK_CASES:
        impls = _implementations("sk_select")
        branches, logits, grad = sk_inputs(batch, c, s, dtype, layout, device)
        leaves = [t.requires_grad_() for t in (*branches, logits)]
        for name, fn in impls.items():
            fwd = lambda fn=fn: fn(leaves[:-1], leaves[-1])  # noqa: E731
            ms = _time(lambda: fwd().detach())
            record("sk_select", [batch, c, s, s], "fwd", name, ms, sk_min_bytes(batch, c, s, elem, False))
            ms = _time(lambda: torch.autograd.grad(fwd(), leaves, grad))
            record("sk_select", [batch, c, s, s], "fwd+bwd", name, ms, sk_min_bytes(batch, c, s, elem, True))

    for c, s in ZPOOL_CASES:
        for dim in (1, 2, 3):
            impls = _implementations("zpool")
            x, grad = zpool_inputs(batch, c, s, dim, dtype, layout, device)
            x.requires_grad_()
            op = f"zpool(dim={dim})"
            for name, fn in impls.items():
                ms = _time(lambda fn=fn: fn(x, dim).detach())
                record(op, [batch, c, s, s], "fwd", name, ms, zpool_min_bytes(batch, c, s, dim, elem, False))
                ms = _time(lambda fn=fn: torch.autograd.grad(fn(x, dim), x, grad))
                record(op, [batch, c, s, s], "fwd+bwd", name, ms, zpool_min_bytes(batch, c, s, dim, elem, True))
    return rows


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def _environment(device: str) -> dict[str, Any]:
    import triton

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "device_type": device,
        "triton_interpret": kernels.INTERPRET,
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env["cpu"] = platform.machine()
        env["cpu_count"] = os.cpu_count()
    return env


def _markdown(record: dict[str, Any]) -> str:
    lines = [f"# kernels benchmark ({record['environment']['device_type']}, {record['date']})", ""]
    lines += [f"Command: `{record['command']}`", "", f"Config: `{json.dumps(record['config'])}`", ""]
    lines += ["## Correctness (kernels vs float64 reference, batch 2)", "", "| op | shape | max rel. error |", "|---|---|---|"]
    lines += [f"| {r['op']} | {r['shape']} | {r['max_rel_err']:.2e} |" for r in record["correctness"]]
    lines.append("")
    if record.get("timing"):
        lines += [f"Copy bandwidth: {record['copy_gb_per_s']:.0f} GB/s", ""]
        lines += ["| op | shape | mode | impl | median µs | GB/s | of copy |", "|---|---|---|---|---|---|---|"]
        lines += [
            f"| {r['op']} | {r['shape']} | {r['mode']} | {r['impl']} | {r['median_ms'] * 1e3:.1f} | "
            f"{r['gb_per_s']:.0f} | {r['fraction_of_copy']:.0%} |"
            for r in record["timing"]
        ]
    else:
        lines.append(f"**Timing:** {record['timing_note']}")
    return "\n".join(lines) + "\n"


def run_benchmarks(
    out_dir: str | Path = RESULTS_DIR, dtype: str = "bf16", layout: str = "channels_last", batch: int = 256
) -> dict[str, Any]:
    """Correctness pass, then (CUDA only) the timing table; writes kernels-<device>-<date>.json/.md in out_dir."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}.")
    if layout not in ("channels_last", "nchw"):
        raise ValueError(f"layout must be 'channels_last' or 'nchw', got {layout!r}.")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = DTYPES[dtype]
    now = datetime.datetime.now(datetime.timezone.utc)
    record: dict[str, Any] = {
        "benchmark": "kernels",
        "command": (
            " ".join(["python -m bench.kernels", *sys.argv[1:]])
            if sys.argv and sys.argv[0].endswith("kernels.py")
            else f"run_benchmarks({str(out_dir)!r}, dtype={dtype!r}, layout={layout!r}, batch={batch}) from: {' '.join(sys.argv)}"
        ),
        "date": now.isoformat(timespec="seconds"),
        "environment": _environment(device),
        "config": {"dtype": dtype, "layout": layout, "batch": batch, "sk_branches": SK_BRANCHES},
    }
    print(f"correctness pass ({device}, {dtype}, {layout}, kernels used: {kernels.use_triton(torch.empty(1, device=device))})")
    record["correctness"] = correctness_pass(torch_dtype, layout, device)
    for r in record["correctness"]:
        print(f"  {r['op']:>16} {str(r['shape']):>18} max rel. error {r['max_rel_err']:.2e}")
    if device == "cuda":
        record["copy_gb_per_s"] = round(copy_bandwidth_gbs(), 1)
        print(f"copy bandwidth {record['copy_gb_per_s']} GB/s")
        record["timing"] = time_cases(torch_dtype, layout, batch, record["copy_gb_per_s"])
    else:
        record["timing"] = []
        record["timing_note"] = "timing needs CUDA; this CPU run is the correctness pass only (kernels through TRITON_INTERPRET=1)."
        print(record["timing_note"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"kernels-{device}-{now.date().isoformat()}"
    write_text_atomic(out / f"{stem}.json", json.dumps(record, indent=2))
    write_text_atomic(out / f"{stem}.md", _markdown(record))
    print(f"wrote {out / stem}.json and .md")
    return record


def main(dtype: str = "bf16", layout: str = "channels_last", batch: int = 256, out_dir: str = str(RESULTS_DIR)) -> None:
    """Run the kernel benchmark (see the module docstring)."""
    from fastcifar.errors import UserError

    try:
        run_benchmarks(out_dir, dtype=dtype, layout=layout, batch=batch)
    except ValueError as err:
        raise UserError(str(err)) from None


if __name__ == "__main__":
    from fastcifar.cli import run_cli

    run_cli(main, "python -m bench.kernels")
