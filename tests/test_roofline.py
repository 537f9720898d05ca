"""The roofline floor (fastcifar.profiling.roofline, bench.roofline): its totals against an
independent per-op sum over a real CPU step, the fused bound against a hand count, and the figures."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fastcifar.models import tiny_overrides
from fastcifar.models.flops import flop_counter, meta_model, train_flops
from fastcifar.profiling.optrace import CudaAutocast, multi_tensor_launches, trace_train_step
from fastcifar.profiling.roofline import Peaks, StepCost, fused_bytes, roofline


def small_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


class PerOpSum(TorchDispatchMode):
    """Bytes and kernels of every aten call, counted directly from the tensors a real run passes.

    A view moves nothing; any other call reads each distinct tensor argument (an in-place
    overwrite by copy_/fill_/zero_ excepted) and writes each result and each argument it mutates.
    An expanded argument (stride 0) is read from its storage. The profiler's markers are no ops.
    """

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        schema = func._schema
        if func.namespace != "aten":
            return out
        if schema.returns and all(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
            return out  # a view
        if func.overloadpacket.__name__ in ("empty", "empty_like", "empty_strided", "detach", "_local_scalar_dense"):
            return out
        mutated = {
            id(t)
            for arg, value in zip(schema.arguments, args)
            if arg.alias_info is not None and arg.alias_info.is_write
            for t in tree_flatten(value)[0]
            if isinstance(t, torch.Tensor)
        }
        tensors = {id(t): t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        overwrite = func.overloadpacket.__name__ in ("copy_", "fill_", "zero_")

        def size(t: torch.Tensor) -> int:
            return min(t.numel() * t.element_size(), t.untyped_storage().nbytes())

        self.bytes += sum(size(t) for i, t in tensors.items() if not (overwrite and i in mutated))
        self.bytes += sum(size(t) for i, t in tensors.items() if i in mutated)
        results = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and id(t) not in mutated]
        self.bytes += sum(size(t) for t in results)
        self.calls += 1
        return out


def test_meta_trace_totals_equal_a_per_op_sum_over_a_real_cpu_step() -> None:
    torch.manual_seed(0)
    batch = 4
    net = small_net()
    images, labels = torch.randn(batch, 3, 16, 16), torch.randint(0, 10, (batch,))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    counter, flops = PerOpSum(), flop_counter()
    # The first step creates the optimizer state; the second and third are steady ones, one counted
    # per mode (a second mode on the stack would add its own bookkeeping ops).
    for mode in (contextlib.nullcontext(), counter, flops):
        optimizer.zero_grad(set_to_none=True)
        with mode:
            nn.functional.cross_entropy(net(images), labels).backward()
            optimizer.step()

    meta = small_net().to("meta")
    trace = trace_train_step(meta, batch, amp=False, channels_last=False, image_hw=(16, 16))
    assert trace.flops == flops.get_total_flops() > 0
    assert trace.bytes_unfused == counter.bytes
    assert sum(1 for op in trace.ops if not op.view) == counter.calls
    cost = StepCost.of(trace, batch, tflop_per_s=1.0, tb_per_s=1.0)
    assert sum(row["bytes"] for row in cost.categories.values()) == counter.bytes
    assert sum(row["flops"] for row in cost.categories.values()) == trace.flops


def test_fused_bound_of_conv_bn_relu_conv_is_the_hand_count() -> None:
    """Evaluation: BN (running statistics) and ReLU fuse into the second conv's prologue."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1, bias=False)).to("meta")  # fmt: skip
    net.eval()
    n, hw = 2, 16 * 16
    images = torch.empty(n, 3, 16, 16, device="meta")
    from fastcifar.profiling.optrace import OpRecorder

    recorder = OpRecorder()
    with recorder, torch.no_grad():
        net(images)
    f32 = 4
    conv1 = n * 3 * hw * f32 + 8 * 3 * 9 * f32 + n * 8 * hw * f32  # images + weight in, y1 out
    bn = 4 * 8 * f32  # weight, bias, running mean and variance: read by the fused prologue
    conv2 = n * 8 * hw * f32 + bn + 4 * 8 * f32 + n * 4 * hw * f32  # y1 (not BN's or ReLU's output) in, y2 out
    stats = 2 * 8 * f32  # the per-channel statistics BN returns beside its output: written once
    assert fused_bytes(recorder.trace) == conv1 + conv2 + stats
    assert recorder.trace.bytes_unfused > fused_bytes(recorder.trace)


def test_autocast_follows_cudas_bf16_policy_and_backward_returns_fp32_gradients() -> None:
    conv = nn.Conv2d(4, 4, 3, padding=1).to("meta")
    x = torch.empty(2, 4, 8, 8, device="meta", requires_grad=True)
    with CudaAutocast():
        y = conv(x)
        weights = y.mean(dim=(2, 3)).softmax(dim=1)
        out = (y * weights[:, :, None, None]).relu()
        total = out.sum()
    assert y.dtype == torch.bfloat16  # convolutions run in bf16
    assert weights.dtype == torch.float32  # softmax runs in fp32 ...
    assert out.dtype == torch.float32  # ... and type promotion carries it on, as on CUDA
    assert total.dtype == torch.float32
    total.backward()
    assert conv.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_bf16_trace_casts_and_halves_the_activation_bytes() -> None:
    overrides = tiny_overrides("sk_densenet")
    fp32 = trace_train_step(meta_model("sk_densenet", **overrides), 8, amp=False, channels_last=False)
    bf16 = trace_train_step(meta_model("sk_densenet", **overrides), 8, amp=True, channels_last=True)
    assert fp32.flops == bf16.flops == 8 * train_flops(meta_model("sk_densenet", **overrides))
    assert not any(op.packet == "_to_copy" for op in fp32.ops)
    assert any(op.packet == "_to_copy" for op in bf16.ops)
    assert bf16.launches > fp32.launches  # the autocast casts
    assert fused_bytes(bf16) < fused_bytes(fp32)
    phases = {op.phase for op in bf16.ops}
    assert phases == {"forward", "backward", "optimizer"}
    assert [op.packet for op in bf16.ops if op.phase == "optimizer"] == ["_foreach_add_", "_fused_adam_"]


def test_floors_follow_from_the_totals() -> None:
    peaks = Peaks(tflop_per_s=100.0, tb_per_s=2.0, launch_us=5.0, source="test")
    r = roofline("sk_densenet", amp=True, batch_size=8, eval_batch_size=16, peaks=peaks,
                 overrides=tiny_overrides("sk_densenet"))  # fmt: skip
    floors = r.train_floors()
    assert floors["compute_ms"] == pytest.approx(1000 * r.train.flops / 100e12)
    assert floors["memory_fused_ms"] == pytest.approx(1000 * r.train.bytes_fused / 2e12)
    assert floors["memory_unfused_ms"] == pytest.approx(1000 * r.train.bytes_unfused / 2e12)
    assert floors["launch_ms"] == pytest.approx(r.train.launches * 5e-3)
    assert floors["floor_ms"] == max(floors["compute_ms"], floors["memory_fused_ms"])
    assert floors["per_op_ms"] >= max(floors["compute_ms"], floors["memory_unfused_ms"]) - 1e-12
    assert r.train.bytes_fused < r.train.bytes_unfused
    steps = 50_000 // 8
    eval_floor = r.eval.floors_ms(100.0, 2.0, 5.0)["floor_ms"]
    assert r.run_seconds()["floor"] == pytest.approx(
        30 * (steps * floors["floor_ms"] + 10_000 / 16 * eval_floor) / 1000
    )
    fp32 = roofline("sk_densenet", amp=False, batch_size=8, peaks=peaks, overrides=tiny_overrides("sk_densenet"))
    assert fp32.tflop_per_s == pytest.approx(100.0 * 494 / 989)  # TF32


def test_multi_tensor_apply_launches() -> None:
    assert multi_tensor_launches([10], lists=4) == 1
    assert multi_tensor_launches([10] * 36, lists=4) == 1
    assert multi_tensor_launches([10] * 37, lists=4) == 2
    assert multi_tensor_launches([10] * 110, lists=1) == 1
    assert multi_tensor_launches([320 * 65536 + 1], lists=1) == 2


def test_bench_roofline_writes_every_key_per_row(tmp_path: Path) -> None:
    from bench.roofline import main

    main(rows="van", out=str(tmp_path))
    (json_file,) = tmp_path.glob("roofline-*.json")
    record = json.loads(json_file.read_text())
    row = record["models"]["van"]
    for precision in ("bf16", "fp32"):
        figures = row[precision]
        for key in ("train_tflop_per_step", "bytes_per_step_unfused", "bytes_per_step_fused_bound",
                    "eager_kernels_per_step", "floor_ms_per_step", "floor_seconds_30_epochs"):  # fmt: skip
            assert figures[key] > 0, (precision, key)
        assert figures["bytes_per_step_fused_bound"] < figures["bytes_per_step_unfused"]
    assert row["bf16"]["eager_kernels_per_step"] > row["fp32"]["eager_kernels_per_step"]
    assert "Computed, not measured" in json_file.with_suffix(".md").read_text()


def test_bench_roofline_user_errors() -> None:
    from bench.roofline import main
    from fastcifar.errors import UserError

    with pytest.raises(UserError, match="unknown --rows"):
        main(rows="nope")
    with pytest.raises(UserError, match="--bandwidth_tb_per_s must be positive"):
        main(rows="van", bandwidth_tb_per_s=0)
