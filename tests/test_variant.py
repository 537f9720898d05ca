"""The variant vocabulary: validation, device resolution and model building."""

from __future__ import annotations

import pytest
import torch

from fastcifar.errors import UserError
from fastcifar.training.variant import (
    BASELINE,
    FAST,
    VARIANTS,
    Variant,
    build_model,
    get_variant,
    parse_variants,
    resolve_device,
    resolve_overrides,
)

TINY = {"growth_rate": 4, "block_config": (2, 2, 2, 2)}


def _fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


# ---------------------------------------------------------------------------------------------
# Variant


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"amp": "fp8"}, "unknown amp"),
        ({"kernels": "cuda"}, "unknown kernels"),
        ({"compile_mode": "fast"}, "compile_mode"),
    ],
)
def test_variant_rejects_unknown_values(fields: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        Variant(**fields)


def test_named_variants_cover_the_study_and_the_fast_path() -> None:
    assert BASELINE == Variant(kernels="torch") and BASELINE.memory_format == torch.contiguous_format
    assert FAST.compile and FAST.channels_last and FAST.amp == "bf16" and FAST.kernels == "triton"
    assert FAST.memory_format == torch.channels_last
    graphs = VARIANTS["compiled_bf16_cl_triton_cudagraphs"]
    assert graphs.compile_mode == "reduce-overhead" and graphs.uses_cudagraphs
    assert not FAST.uses_cudagraphs and not BASELINE.uses_cudagraphs
    # Only the compile mode separates the CUDA-graph variant from the fast one.
    assert Variant(**{**graphs.describe(), "compile_mode": None}) == FAST


def test_get_and_parse_variants() -> None:
    assert get_variant("eager_fp32") is VARIANTS["eager_fp32"]
    assert parse_variants(" eager_fp32, compiled_bf16_cl ,eager_fp32") == ["eager_fp32", "compiled_bf16_cl"]
    assert parse_variants(["compiled_bf16"]) == ["compiled_bf16"]
    with pytest.raises(UserError, match="unknown variant.*turbo"):
        parse_variants("eager_fp32,turbo")
    with pytest.raises(UserError, match="unknown variant"):
        parse_variants(" , ")
    with pytest.raises(UserError, match="unknown variant 'fast'"):
        get_variant("fast")
    # The names used before the variants spelled out their settings are refused.
    for old in ("eager", "compiled", "compiled_triton"):
        with pytest.raises(UserError, match=f"unknown variant '{old}'"):
            get_variant(old)


def test_wrap_leaves_eager_models_alone_and_compiles_otherwise() -> None:
    model = torch.nn.Linear(2, 2)
    assert BASELINE.wrap(model) is model
    compiled = FAST.wrap(model, backend="aot_eager")
    assert compiled is not model and compiled._orig_mod is model  # an OptimizedModule over the same weights


# ---------------------------------------------------------------------------------------------
# resolve_device


def test_resolve_device_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 0)
    for automatic in (None, "", "auto"):
        assert resolve_device(automatic) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for cuda in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device(cuda)


def test_resolve_device_with_two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpus(monkeypatch, 2)
    assert resolve_device(None, local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    assert resolve_device("cuda:0", local_rank=1) == torch.device("cuda:0")
    with pytest.raises(UserError, match="does not exist: this machine has 2 GPU"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("bad", ["cuda:abc", "cuda:-1", "tpu", "mps", "CUDA", "cuda:1:2", "meta"])
def test_resolve_device_rejects_malformed_names(monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    _fake_gpus(monkeypatch, 2)
    with pytest.raises(UserError, match="is not a device"):
        resolve_device(bad)


# ---------------------------------------------------------------------------------------------
# build_model


def test_build_model_injects_the_variants_kernels_unless_overridden() -> None:
    from fastcifar.models import SKConv

    assert resolve_overrides("sk_densenet", TINY, FAST)["impl"] == "triton"
    assert resolve_overrides("sk_densenet", {**TINY, "impl": "torch"}, FAST)["impl"] == "torch"
    assert "impl" not in resolve_overrides("sk_densenet", TINY, Variant())  # model's own default
    assert "impl" not in resolve_overrides("resnet18", {}, FAST)  # no attention layers, no impl

    model = build_model("sk_densenet", TINY, VARIANTS["eager_bf16_cl"], torch.device("cpu"), num_classes=10)
    sk_layers = [m for m in model.modules() if isinstance(m, SKConv)]
    assert sk_layers and all(m.impl == "torch" for m in sk_layers)
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not hasattr(model, "_orig_mod")  # not compiled
    out = model(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert out.shape == (2, 10)


@pytest.mark.parametrize(
    "arch, overrides, message",
    [
        ("no_such_net", {}, "unknown model"),
        ("sk_densenet", {"growth": 4}, "no option 'growth'; valid model options: growth_rate, block_config"),
    ],
)
def test_build_model_rejects_unknown_names(arch: str, overrides: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        build_model(arch, overrides, BASELINE, torch.device("cpu"))


def test_fast_on_a_cpu_is_the_layout_that_trains_there(capsys: pytest.CaptureFixture) -> None:
    """--fast on a CPU: NCHW bf16 with the PyTorch layers (said in one line); the GPU preset is FAST."""
    from fastcifar.training.config import presets, resolve_config
    from fastcifar.training.variant import FAST_CPU, fast_variant

    assert fast_variant("cuda") == FAST and presets("cuda")["fast"] == {**FAST.describe(), "loader": "gpu"}
    config = resolve_config(fast=True, device="cpu", out="x")
    assert config.variant == FAST_CPU == fast_variant("cpu")
    assert (config.compile, config.channels_last, config.amp, config.kernels) == (True, False, "bf16", "torch")
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("--fast on a CPU: compile + bf16 in NCHW") and "channels_last" in line
    explicit = resolve_config(fast=True, device="cpu", channels_last=True, out="x")  # a given flag still wins
    assert explicit.channels_last and explicit.amp == "bf16"
    # The reproduction of the upstream CPU bug that --fast avoids there: a grouped dilated conv under
    # bf16 autocast gets finite weight gradients in the CPU preset's layout.
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(24, 24, 3, padding=2, dilation=2, groups=2).to(memory_format=FAST_CPU.memory_format)
    x = torch.randn(16, 24, 32, 32).contiguous(memory_format=FAST_CPU.memory_format)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x).float().square().mean().backward()
    assert torch.isfinite(conv.weight.grad).all()


def test_kernels_in_use_is_what_the_layers_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastcifar.kernels._runtime as runtime
    from fastcifar.training.variant import kernels_in_use

    cpu = torch.device("cpu")
    triton_model = build_model("sk_densenet", TINY, Variant(kernels="triton"), cpu, num_classes=10)
    torch_model = build_model("sk_densenet", TINY, Variant(kernels="torch"), cpu, num_classes=10)
    monkeypatch.setattr(runtime, "INTERPRET", False)  # a CPU without the interpreter: the reference runs
    assert kernels_in_use(triton_model, cpu) == "torch" and kernels_in_use(torch_model, cpu) == "torch"
    monkeypatch.setattr(runtime, "INTERPRET", True)  # the Triton kernels, interpreted
    assert kernels_in_use(triton_model, cpu) == "triton" and kernels_in_use(torch_model, cpu) == "torch"
    assert kernels_in_use(build_model("resnet18", {}, Variant(), cpu, num_classes=10), cpu) is None
