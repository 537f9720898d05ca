"""Static evidence for a GPU without one: compile a kernel launch for sm_90 and read its resources.

For one `Launch` (the exact kernel, arguments and constexprs an op would launch), this compiles the
specialisation Triton would build at run time (its own argument specialisation: 16-byte aligned
pointers, integers divisible by 16 or equal to 1) for an explicit target, then reports:

- registers per thread and local-memory bytes (spills) of the cubin (`cuobjdump --dump-resource-usage`);
- shared memory per block (Triton's metadata) and the resulting occupancy on an H200 SM;
- the width of every global load and store in the PTX (128 bits = `ld.global.v4.b32` etc.);
- the grid against the SM count and the bytes the launch reads and writes.

Must run with TRITON_INTERPRET unset: interpreted kernels cannot be compiled. Uses Triton's
launch-time binder (`triton.runtime.jit`), an internal API; written against Triton 3.6-3.8.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._runtime import Launch


@dataclass(frozen=True)
class SMLimits:
    """Per-SM limits used for occupancy (H200 = GH100, compute capability 9.0)."""

    sms: int = 132
    registers: int = 65536
    register_unit: int = 256  # registers are allocated per warp in units of 256
    shared_bytes: int = 228 * 1024
    shared_reserved_per_block: int = 1024  # the driver reserves 1 KB of shared memory per block
    max_blocks: int = 32
    max_threads: int = 2048


H200 = SMLimits()


def occupancy(registers: int, shared: int, num_warps: int, sm: SMLimits = H200) -> dict[str, Any]:
    """Resident blocks per SM and what limits them: registers, shared memory, threads or the block cap."""
    threads = 32 * num_warps
    per_warp = -(-max(registers, 1) * 32 // sm.register_unit) * sm.register_unit
    limits = {
        "registers": (sm.registers // per_warp) // num_warps,
        "shared": sm.shared_bytes // (shared + sm.shared_reserved_per_block),
        "threads": sm.max_threads // threads,
        "blocks": sm.max_blocks,
    }
    blocks = min(limits.values())
    return {
        "blocks_per_sm": blocks,
        "limited_by": min(limits, key=lambda k: limits[k]),
        "warps_per_sm": blocks * num_warps,
        "occupancy": round(blocks * threads / sm.max_threads, 3),
    }


_ACCESS = re.compile(r"\b(ld|st)\.global((?:\.[\w:]+)+)")  # the instruction and its qualifiers
_VECTOR = re.compile(r"\.v(\d)\b")
_TYPE = re.compile(r"\.[bfsu](\d+)$")


def global_access_widths(ptx: str) -> dict[str, dict[int, int]]:
    """Count global loads and stores in PTX by access width in bits, e.g. {"ld": {128: 4, 32: 1}, "st": {...}}."""
    widths: dict[str, dict[int, int]] = {"ld": {}, "st": {}}
    for kind, qualifiers in _ACCESS.findall(ptx):
        vec = _VECTOR.search(qualifiers)
        bits = _TYPE.search(qualifiers)
        if bits is None:
            continue
        width = int(vec.group(1) if vec else 1) * int(bits.group(1))
        widths[kind][width] = widths[kind].get(width, 0) + 1
    return widths


def cubin_resources(cubin: bytes, name: str) -> dict[str, int]:
    """REG / STACK / LOCAL / SHARED of kernel `name` in a cubin, from `cuobjdump --dump-resource-usage`."""
    from triton.backends.nvidia import compiler as nv

    tool = Path(nv.get_ptxas(90).path).with_name("cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.cubin"
        path.write_bytes(cubin)
        text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], check=True, capture_output=True,
                              text=True).stdout  # fmt: skip
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage for {name}:\n{text}")
    reg, stack, shared, local = map(int, found.groups())
    return {"registers": reg, "stack_bytes": stack, "static_shared": shared, "local_bytes": local}


def compile_launch(launch: Launch, arch: int = 90) -> Any:
    """Compile the specialisation `launch` would trigger, for `arch`, without a device."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*launch.args, **launch.options)
    options, signature, constexprs, attrs = kernel._pack_args(
        backend, launch.options, bound_args, specialization, options
    )
    return triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)


def launch_bytes(launch: Launch) -> int:
    """Bytes of the distinct tensors a launch touches (each read or written once: the fewest it must move)."""
    seen: dict[int, torch.Tensor] = {}
    for a in launch.args:
        if isinstance(a, torch.Tensor):
            seen.setdefault(id(a), a)
    return sum(t.numel() * t.element_size() for t in seen.values())


def analyse(launch: Launch, sm: SMLimits = H200) -> dict[str, Any]:
    """Compile `launch` for sm_90 and report resources, occupancy, access widths, grid and bytes."""
    compiled = compile_launch(launch)
    name = launch.kernel.fn.__name__
    res = cubin_resources(compiled.asm["cubin"], name)
    num_warps = int(launch.options.get("num_warps", 4))
    shared = int(compiled.metadata.shared) + res["static_shared"]
    widths = global_access_widths(compiled.asm["ptx"])
    grid = 1
    for g in launch.grid:
        grid *= g
    occ = occupancy(res["registers"], shared, num_warps, sm)
    return {
        "kernel": name,
        "constexprs": {k: v for k, v in launch.options.items() if k != "num_warps"},
        "num_warps": num_warps,
        "registers": res["registers"],
        "spill_bytes": res["stack_bytes"] + res["local_bytes"],
        "shared_bytes": shared,
        **occ,
        "grid": grid,
        "grid_per_sm": round(grid / sm.sms, 2),
        "waves": round(grid / (sm.sms * max(occ["blocks_per_sm"], 1)), 2),
        "loads_bits": {str(k): v for k, v in sorted(widths["ld"].items(), reverse=True)},
        "stores_bits": {str(k): v for k, v in sorted(widths["st"].items(), reverse=True)},
        "vector_loads": 128 in widths["ld"],
        "vector_stores": 128 in widths["st"],
        "bytes": launch_bytes(launch),
    }


def sk_launches(
    shape: tuple[int, int, int, int, int], dtype: torch.dtype, memory_format: torch.memory_format
) -> dict[str, Launch]:
    """The launches of SK select forward, backward and fuse mean for branches (N, M, C, H, W) on the meta device.

    Tensors are laid out as in SKConv: branches, dV and gradients in `memory_format`, logits (N, M, C) dense.
    """
    import importlib

    sk = importlib.import_module("fastcifar.kernels.sk_select")
    N, M, C, H, W = shape
    branches = [torch.empty(N, C, H, W, device="meta", dtype=dtype, memory_format=memory_format) for _ in range(M)]
    logits = torch.empty(N, M, C, device="meta", dtype=dtype)
    out = sk._alloc_select(branches, logits)
    grads, dlogits = sk._alloc_select_grads(out, branches, logits)
    return {
        "sk_select fwd": sk.select_forward_launch(branches, logits, out),
        "sk_select bwd": sk.select_backward_launch(out, branches, logits, grads, dlogits),
        "sk_fuse_mean": sk.fuse_mean_launch(branches, sk._alloc_fuse_mean(branches)),
    }


def zpool_launches(
    shape: tuple[int, int, int, int], dim: int, dtype: torch.dtype, memory_format: torch.memory_format
) -> dict[str, Launch]:
    """The launches of Z-pool forward and backward along `dim` for x (N, C, H, W) on the meta device."""
    import importlib

    zp = importlib.import_module("fastcifar.kernels.zpool")
    x = torch.empty(shape, device="meta", dtype=dtype, memory_format=memory_format)
    out, idx = zp._alloc_zpool(x, dim)
    dx = zp._alloc_zpool_grad(out, idx, list(shape), dim, memory_format == torch.channels_last)
    return {
        f"zpool(dim={dim}) fwd": zp.forward_launch(x, dim, out, idx),
        f"zpool(dim={dim}) bwd": zp.backward_launch(out, idx, dx, dim),
    }
