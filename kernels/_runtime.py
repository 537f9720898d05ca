"""Runtime switches shared by the Triton ops: interpreter detection, launch wrapping, output allocation.

Kept free of Triton kernels so that it imports on machines without Triton.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

try:  # Triton is optional: without it every op runs its pure-PyTorch reference.
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - Triton ships with Linux x86-64 torch wheels
    HAS_TRITON = False


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on", "y")


# Read once at import, like Triton itself: `@triton.jit` picks interpreter or compiler at decoration time.
INTERPRET: bool = HAS_TRITON and _env_flag("TRITON_INTERPRET")

# Test hook: when not None, every output and gradient buffer the ops allocate is filled with this value
# instead of left uninitialised, so tests can prove the kernels write every element.
_POISON: float | None = None


def set_output_poison(value: float | None) -> None:
    """Fill freshly allocated op outputs with `value` (e.g. NaN) until reset with None. Testing aid."""
    global _POISON
    _POISON = value


def use_triton(*tensors: torch.Tensor) -> bool:
    """Whether the Triton path handles these tensors: CUDA tensors, or CPU tensors under TRITON_INTERPRET=1."""
    if not HAS_TRITON:
        return False
    device_type = tensors[0].device.type
    if device_type == "cuda":
        return True
    return INTERPRET and device_type == "cpu"


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """channels_last for a 4-D tensor laid out NHWC (and not also NCHW), else contiguous_format."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def new_output(
    shape: Sequence[int],
    dtype: torch.dtype,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Allocate an op output; with the poison hook set it is filled with the poison value (testing only)."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device, memory_format=memory_format)
    if _POISON is not None:
        out.fill_(_POISON)
    return out


def wrap_triton(kernel: Any) -> Any:
    """`torch.library.wrap_triton(kernel)`, except for interpreted kernels, which are launched bare.

    Under TRITON_INTERPRET=1 `@triton.jit` yields an InterpretedFunction that torch < 2.14 refuses to
    wrap; interpreted kernels run eagerly on CPU tensors, so no wrapping is needed.
    """
    if INTERPRET:
        return kernel
    return torch.library.wrap_triton(kernel)


def keep_opaque_when_interpreted(op: Any, fake_impl: Callable[..., Any]) -> None:
    """Make a triton_op compile on CPU under TRITON_INTERPRET=1.

    `triton_op` decomposes the op into its kernels for Inductor, which cannot lower an interpreted
    (CPU) kernel. In interpreter mode, the op instead stays an opaque custom op in the graph (Inductor
    calls it as an extern kernel at run time) and gets a shape-only fake implementation.
    On CUDA nothing changes: Inductor sees and schedules the kernels.
    """
    if not INTERPRET:
        return
    from torch._subclasses.functional_tensor import FunctionalTensorMode

    def no_decomposition(mode, func, types, args, kwargs):  # type: ignore[no-untyped-def]
        return mode.__torch_dispatch__(func, types, args, kwargs)

    op.register_torch_dispatch(FunctionalTensorMode, no_decomposition)
    op.register_fake(fake_impl)


@dataclass
class Launch:
    """One kernel launch, described before it runs: the ops launch it, and the static report
    (kernels.static) compiles exactly this specialisation for a target without a device.

    args: the kernel's positional arguments (tensors, ints, floats); options: constexprs and num_warps.
    """

    kernel: Any
    grid: tuple[int, ...]
    args: list[Any]
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> None:
        wrap_triton(self.kernel)[self.grid](*self.args, **self.options)
