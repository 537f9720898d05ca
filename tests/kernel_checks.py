"""What both kernel test files share: devices, dtypes, layouts, tolerances, output poisoning, checks."""

import pytest
import torch

from fastcifar.kernels import _runtime

CUDA_OK = torch.cuda.is_available() and not _runtime.INTERPRET
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not CUDA_OK, reason="needs CUDA and TRITON_INTERPRET unset (=0)"),
        ],
    ),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = ["nchw", "channels_last"]

# Tolerance relative to the largest reference magnitude: about two units in the last place of the
# output dtype (the interpreter truncates to bfloat16 instead of rounding) plus float32 summation error.
TOL = {torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """Every buffer the ops allocate starts as NaN: an element the kernel skips shows up."""
    _runtime.set_output_poison(float("nan"))
    yield
    _runtime.set_output_poison(None)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype} != {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: output not fully written (NaN/inf present)"
    scale = expected.abs().max().item()
    err = (actual.double() - expected).abs().max().item()
    assert err <= TOL[dtype] * max(scale, 1.0), f"{what}: max error {err:.3g} (scale {scale:.3g})"
