"""The one FLOP count (fastcifar.models.flops) against closed forms.

A convolution's forward is 2 x N x (output positions) x (weight elements); its weight gradient and
its input gradient cost the same again each, grouped or not; a linear layer's forward is
2 x N x in x out, with the same two gradients.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fastcifar.models import create_model, list_models, tiny_overrides
from fastcifar.models.flops import count_model, flop_counter, forward_flops, meta_model, train_flops


def closed_form_conv(n: int, c_in: int, c_out: int, k: int, stride: int, dilation: int, groups: int, h: int) -> int:
    padding = dilation * (k // 2)
    out = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    return 2 * n * c_out * out * out * (c_in // groups) * k * k


def counted(module: nn.Module, x: torch.Tensor, backward: bool) -> int:
    with flop_counter() as counter:
        y = module(x)
        if backward:
            y.sum().backward()
    return counter.get_total_flops()


CONV_KINDS = {
    "3x3": (16, 32, 3, 1, 1, 1),
    "3x3 stride 2": (16, 32, 3, 2, 1, 1),
    "3x3 dilation 2, groups 2 (SK branch)": (16, 16, 3, 1, 2, 2),
    "3x3 groups 4": (16, 32, 3, 1, 1, 4),
    "3x3 groups 32": (64, 64, 3, 1, 1, 32),
    "depthwise 3x3 stride 2": (24, 24, 3, 2, 1, 24),
    "depthwise 7x7 dilation 3 (LKA)": (8, 8, 7, 1, 3, 8),
    "1x1": (32, 16, 1, 1, 1, 1),
    "5x5": (8, 8, 5, 1, 1, 1),
}


@pytest.mark.parametrize("kind", list(CONV_KINDS))
def test_every_conv_kind_costs_its_closed_form_forward_and_twice_that_backward(kind: str) -> None:
    c_in, c_out, k, stride, dilation, groups = CONV_KINDS[kind]
    n, h = 3, 12
    conv = nn.Conv2d(c_in, c_out, k, stride, padding=dilation * (k // 2), dilation=dilation, groups=groups)
    forward = closed_form_conv(n, c_in, c_out, k, stride, dilation, groups, h)
    x = torch.randn(n, c_in, h, h)
    assert counted(conv, x, backward=False) == forward
    # Images need no gradient: forward + weight gradient only.
    assert counted(conv, x, backward=True) == 2 * forward
    # Inside a network the input gradient is computed as well.
    assert counted(conv, x.requires_grad_(), backward=True) == 3 * forward


def test_torch_counter_alone_overcounts_grouped_weight_gradients() -> None:
    """Why the correction exists: torch 2.14's formula counts backward / forward = 1 + groups."""
    from torch.utils.flop_counter import FlopCounterMode

    conv = nn.Conv2d(64, 64, 3, padding=1, groups=4)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    with FlopCounterMode(display=False) as theirs:
        conv(x).sum().backward()
    ours = counted(conv, x, backward=True)
    forward = closed_form_conv(2, 64, 64, 3, 1, 1, 4, 8)
    assert ours == 3 * forward
    assert theirs.get_total_flops() >= ours  # equal once torch's formula is fixed


@pytest.mark.parametrize("bias", [True, False])
def test_linear_costs_its_closed_form(bias: bool) -> None:
    n, d_in, d_out = 5, 24, 10
    linear = nn.Linear(d_in, d_out, bias=bias)
    x = torch.randn(n, d_in)
    assert counted(linear, x, backward=False) == 2 * n * d_in * d_out
    assert counted(linear, x, backward=True) == 2 * 2 * n * d_in * d_out
    assert counted(linear, x.requires_grad_(), backward=True) == 3 * 2 * n * d_in * d_out


def test_a_small_network_trains_at_its_closed_form_per_image() -> None:
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),  # on the images: no input gradient
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2),
        nn.Conv2d(8, 16, 1, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 100),
    )
    stem = closed_form_conv(1, 3, 8, 3, 1, 1, 1, 32)
    grouped = closed_form_conv(1, 8, 8, 3, 1, 2, 2, 32)
    pointwise = 2 * 16 * 16 * 16 * 8
    linear = 2 * 16 * 100
    assert forward_flops(net) == stem + grouped + pointwise + linear
    assert train_flops(net) == 2 * stem + 3 * (grouped + pointwise + linear)
    assert all(p.grad is None for p in net.parameters())


def _stem_forward(model: nn.Module) -> int:
    """Forward FLOPs of the first convolution the model applies to the images (one image)."""
    seen: list[int] = []

    def hook(module: nn.Conv2d, inputs: tuple, output: torch.Tensor) -> None:
        if not seen:
            seen.append(int(2 * output[0].numel() * module.weight[0].numel()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    forward_flops(model)
    for handle in handles:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_at_three_times_forward_less_the_stems_input_gradient(name: str) -> None:
    model = meta_model(name, **tiny_overrides(name))
    forward = forward_flops(model)
    assert forward > 0
    assert train_flops(model) == 3 * forward - _stem_forward(model)


def test_meta_counts_equal_counts_on_real_weights() -> None:
    overrides = tiny_overrides("sk_densenet")
    real = create_model("sk_densenet", **overrides)
    counts = count_model("sk_densenet", **overrides)
    assert counts.forward_flops == forward_flops(real)
    assert counts.train_flops == train_flops(real)
    assert counts.params == sum(p.numel() for p in real.parameters())


def test_cli_json_prints_params_and_flops_per_model(capsys: pytest.CaptureFixture) -> None:
    from fastcifar.models.__main__ import main

    main(models="resnet18", json=True)
    table = json.loads(capsys.readouterr().out)
    counts = count_model("resnet18")
    assert table == {"resnet18": counts.as_json()}
    assert table["resnet18"]["params"] == 11_227_812
    assert table["resnet18"]["train_gflops"] == pytest.approx(counts.train_flops / 1e9)
