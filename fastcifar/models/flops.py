"""The one FLOP count: forward and training FLOPs per image of any registered model.

A multiply-add is 2 FLOPs; only convolutions, linear layers and matrix products are counted (as
``torch.utils.flop_counter`` does): normalisation, activations and element-wise work are
memory-bound and belong to the roofline (:mod:`fastcifar.profiling.roofline`), not here.

Training FLOPs are one step's forward + backward: every convolution / matrix product ``F`` in
forward costs ``F`` again for its weight gradient and ``F`` for its input gradient, except where no
input gradient is needed (the first convolution, on the images). The counts come from torch's
counter with one correction: torch 2.14's formula for ``convolution_backward`` counts a grouped
convolution's weight gradient as if it were ungrouped (``groups`` times too many: backward /
forward = 1 + groups instead of 2), which would inflate MFU several times for the depthwise and
grouped models. :func:`conv_backward_flops` replaces it.

Models are built and counted on the meta device: no memory, no arithmetic, any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, shape_wrapper

aten = torch.ops.aten

IMAGE_SHAPE = (3, 32, 32)
# BatchNorm in training mode needs more than one value per channel (the last stages are 1x1 at
# CIFAR's size), so training is counted on two images and halved; every count is linear in N.
TRAIN_COUNT_BATCH = 2


def conv_flops(x_shape: list[int], w_shape: list[int], out_shape: list[int], transposed: bool = False) -> int:
    """FLOPs of one convolution: 2 x N x (output positions) x (weight elements).

    ``x_shape (N, C_in, *spatial)``, ``w_shape (C_out, C_in / groups, *kernel)`` (transposed:
    ``(C_in, C_out / groups, *kernel)``), ``out_shape (N, C_out, *spatial_out)``. Each output
    position of each sample meets every weight element once, whatever the stride, dilation or
    groups; a transposed convolution scatters from its input positions instead.
    """
    positions = prod((x_shape if transposed else out_shape)[2:])
    return 2 * x_shape[0] * positions * prod(w_shape)


def conv_backward_flops(
    grad_out_shape: list[int],
    x_shape: list[int],
    w_shape: list[int],
    _bias: Any,
    _stride: Any,
    _padding: Any,
    _dilation: Any,
    transposed: bool,
    _output_padding: Any,
    _groups: int,
    output_mask: list[bool],
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of ``aten.convolution_backward``: the forward's count once per gradient computed.

    The input gradient (``output_mask[0]``) is a transposed convolution of the output gradient
    with the same weight and the weight gradient (``output_mask[1]``) a correlation of input and
    output gradient; each meets every (output position, weight element) pair once, as the forward
    did, grouped or not. The bias gradient is a sum (not counted, as the forward's bias add).
    """
    forward = conv_flops(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


# torch's formulas with the corrected convolution backward: what every count here uses.
FLOP_FORMULAS: dict[Any, Any] = {**flop_registry, aten.convolution_backward: shape_wrapper(conv_backward_flops)}


def op_flops(func: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """FLOPs of one aten call ``func(*args, **kwargs) -> out`` (0 for ops without a formula)."""
    formula = FLOP_FORMULAS.get(func.overloadpacket)
    return int(formula(*args, **kwargs, out_val=out)) if formula is not None else 0


def flop_counter() -> FlopCounterMode:
    """torch's ``FlopCounterMode`` (no table printed) with the corrected convolution backward."""
    return FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: conv_backward_flops})


def count_params(model: torch.nn.Module) -> int:
    """Number of parameter elements (every parameter is trainable in this zoo)."""
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: torch.nn.Module, image_shape: tuple[int, ...] = IMAGE_SHAPE) -> int:
    """Forward FLOPs of ``model`` for one image ``(1, *image_shape)``, in eval mode, on its device."""
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad(), flop_counter() as counter:
        model(torch.zeros(1, *image_shape, device=device))
    return counter.get_total_flops()


def train_flops(model: torch.nn.Module, image_shape: tuple[int, ...] = IMAGE_SHAPE) -> int:
    """Training FLOPs per image: forward + backward (weight and input gradients) of the CE loss.

    The images do not require a gradient, so the first convolution computes none for its input.
    Gradients are left unset afterwards.
    """
    device = next(model.parameters()).device
    model.train()
    images = torch.zeros(TRAIN_COUNT_BATCH, *image_shape, device=device)
    labels = torch.zeros(TRAIN_COUNT_BATCH, dtype=torch.long, device=device)
    with flop_counter() as counter:
        torch.nn.functional.cross_entropy(model(images), labels).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() // TRAIN_COUNT_BATCH


@dataclass(frozen=True)
class ModelFlops:
    """One model's size and cost per 3x32x32 image."""

    params: int
    forward_flops: int
    train_flops: int

    def as_json(self) -> dict[str, float | int]:
        """``params``, ``forward_gflops``, ``train_gflops`` (per image), as ``--json`` prints them."""
        return {
            "params": self.params,
            "forward_gflops": self.forward_flops / 1e9,
            "train_gflops": self.train_flops / 1e9,
        }


def meta_model(name: str, **overrides: Any) -> torch.nn.Module:
    """``create_model(name, **overrides)`` with every tensor on the meta device (no memory used).

    Models that take ``impl`` get the PyTorch layers unless told otherwise: the counts are of aten
    ops, which a fused kernel hides.
    """
    from fastcifar.models.registry import create_model, get_entry

    if "impl" in get_entry(name).override_names():
        overrides = {"impl": "torch", **overrides}
    with torch.device("meta"):
        return create_model(name, **overrides)


def count_model(name: str, **overrides: Any) -> ModelFlops:
    """Parameters, forward and training FLOPs per image of registered model ``name``."""
    model = meta_model(name, **overrides)
    return ModelFlops(count_params(model), forward_flops(model), train_flops(model))
