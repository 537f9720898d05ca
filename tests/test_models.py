"""Model zoo: exact parameter parity with the study's code, every id end to end, layers against references.

Expected counts are the counts measured on the study's own notebooks (docs/models.md §0, which
derives each one), copied here as the independent reference.
"""

from __future__ import annotations

import pytest
import torch

from fastcifar.errors import UserError
from fastcifar.models import (
    CoordinateAttention,
    GCBlock,
    SKConv,
    TripletAttention,
    create_model,
    list_models,
    resolve_impl,
    sk_select_torch,
    tiny_overrides,
    triton_available,
    zpool_torch,
)
from fastcifar.models.densenet import sk_layer_indices

# id -> parameter count measured on the study's code (functional networks; docs/models.md §0, §12).
STUDY_CODE_PARAMS = {
    "sknet26": 4_819_620,
    "sknet26_study": 4_810_532,
    "sknet_ca_post": 4_911_148,
    "sknet_ca_pre": 5_006_580,
    "ca_mobilenetv2": 9_700_472,
    "ca_resnet": 9_700_472,
    "ca_triplet": 9_703_172,
    "triplet_resnet": 11_230_212,
    "van": 11_064_100,
    "res2net": 14_026_436,
    "resnet18": 11_227_812,
    "gcnet": 11_237_125,
    "densenet121": 2_797_380,
    "sk_densenet": 4_356_300,
    "sk_densenet_catsk": 5_935_716,
    "densenet_ca": 2_919_412,
    "densenet_triplet": 2_814_780,
}

# sk_densenet functional counts for k = 2/4/5/6 (docs/models.md §12), and the reported counts with the
# 823,198 dead CA parameters the study's networks carried.
SK_DENSENET_K = {2: 3_303_116, 4: 3_961_356, 5: 4_356_300, 6: 4_487_948}
SK_DENSENET_REPORTED = {2: 4_126_314, 4: 4_784_554, 5: 5_179_498, 6: 5_311_146}
DEAD_CA_PARAMS = 823_198


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry_lists_every_documented_id():
    ids = list_models()
    assert ids == sorted(ids)
    assert set(STUDY_CODE_PARAMS) - {"ca_resnet"} <= set(ids)
    assert "ca_resnet" in list_models(include_aliases=True)
    assert "ca_resnet" not in ids


def test_unknown_model_lists_valid_ids():
    with pytest.raises(UserError) as err:
        create_model("sk_densenett")
    message = str(err.value)
    assert "sk_densenett" in message
    for name in ("sk_densenet", "triplet_resnet", "ca_resnet"):
        assert name in message


def test_unknown_override_lists_valid_options():
    with pytest.raises(UserError) as err:
        create_model("sk_densenet", growthrate=4)
    assert "growthrate" in str(err.value) and "growth_rate" in str(err.value)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("sk_densenet", {"impl": "cuda"}),
        ("sk_densenet", {"k": 0}),
        ("sk_densenet", {"sk_groups": 3}),  # 80 channels not divisible by 3
        ("resnet18", {"widths": (8, 16), "depths": (1,)}),
        ("van", {"depths": (2, 2)}),
        ("res2net", {"layers": (1, 1), "planes": (8,)}),
        ("ca_mobilenetv2", {"config": [(6, 16, 1)]}),
        ("densenet121", {"growth_rate": 0}),
        ("resnet18", {"stem": "tiny"}),
    ],
)
def test_bad_override_values_raise_user_error(name, overrides):
    with pytest.raises(UserError):
        create_model(name, **overrides)


@pytest.mark.parametrize(
    "name, overrides, named",
    [
        (
            "sknet26",
            {"widths": (32, 0), "mids": (32, 32), "depths": (1, 1)},
            "widths (32, 0), mids (32, 32) and depths",
        ),
        (
            "van",
            {"mlp_ratios": (8, 8, 4)},
            "embed_dims (64, 128, 320, 512), depths (2, 2, 2, 2) and mlp_ratios (8, 8, 4)",
        ),
        ("resnet18", {"depths": ()}, "widths (64, 128, 256, 512) and depths ()"),
    ],
)
def test_stage_list_errors_name_every_list(name, overrides, named):
    with pytest.raises(UserError, match="must be equally long lists of positive integers") as err:
        create_model(name, **overrides)
    assert named in str(err.value)


def test_catsk_rejects_a_non_positive_k():
    with pytest.raises(UserError, match="k \\(SK in every n//k-th layer\\)"):
        create_model("sk_densenet_catsk", **{**tiny_overrides("sk_densenet_catsk"), "k": 0})


def test_default_impl_rule():
    expected = "triton" if torch.cuda.is_available() and triton_available() else "torch"
    assert resolve_impl(None) == expected
    assert resolve_impl("torch") == "torch"


# --------------------------------------------------------------------------------------------
# Every id end to end
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STUDY_CODE_PARAMS))
def test_model_end_to_end(name):
    """Exact count; train forward/backward; eval determinism; channels_last; bf16 autocast."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=100)
    assert n_params(model) == STUDY_CODE_PARAMS[name]

    x = _randn(2, 3, 32, 32)
    model.train()
    out = model(x)
    assert out.shape == (2, 100) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())

    model.eval()
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(ref, model(x))  # eval is deterministic (dropout off, running stats)
        assert torch.isfinite(ref).all()
        # channels_last weights and input: same numbers as the contiguous layout.
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model_cl(x.contiguous(memory_format=torch.channels_last))
        assert out_bf16.shape == (2, 100) and torch.isfinite(out_bf16).all()
        rel = (out_bf16.float() - ref).norm() / ref.norm()
        assert rel < 0.1, f"bf16 autocast deviates by {rel:.3f} (relative L2)"


@pytest.mark.parametrize("k", sorted(SK_DENSENET_K))
def test_sk_densenet_k_override_counts(k):
    assert n_params(create_model("sk_densenet", k=k)) == SK_DENSENET_K[k]
    # The report's figures are these plus the dead CA modules we deliberately do not build.
    assert SK_DENSENET_K[k] + DEAD_CA_PARAMS == SK_DENSENET_REPORTED[k]


def test_sk_layer_rule_matches_the_documented_table():
    blocks = (6, 12, 24, 16)
    totals = {k: sum(len(sk_layer_indices(n, k)) for n in blocks) for k in (2, 4, 5, 6)}
    assert totals == {2: 8, 4: 18, 5: 24, 6: 26}
    assert sk_layer_indices(24, 5) == set(range(0, 24, 4))
    assert sk_layer_indices(16, 6) == set(range(0, 16, 2))


def test_committed_variants_reachable_by_overrides():
    """The counts of the study's other committed states follow from overrides alone."""
    assert n_params(create_model("van", depths=(2, 2, 4, 2))) == 13_400_100
    assert n_params(create_model("sk_densenet_catsk", growth_rate=16)) == 3_850_180
    head_config = [(1, 32, 1, 1), (6, 64, 2, 2), (6, 128, 3, 2), (6, 192, 2, 2), (6, 256, 1, 1)]
    assert n_params(create_model("ca_mobilenetv2", config=head_config)) == 2_732_788


def test_sknet_stride_bug_changes_resolution_only():
    """sknet26 downsamples per stage, sknet26_study stays at 8x8 (the stride->M bug)."""
    feats = {}
    for name in ("sknet26", "sknet26_study"):
        model = create_model(name).eval()
        with torch.no_grad():
            feats[name] = model.units(model.stem(_randn(1, 3, 32, 32))).shape
    assert feats["sknet26"] == (1, 1024, 1, 1)
    assert feats["sknet26_study"] == (1, 1024, 8, 8)
    first_sk = create_model("sknet26_study").units[0].sk
    assert first_sk.num_branches == 1


def test_every_model_has_a_small_tiny_config():
    for name in list_models():
        overrides = tiny_overrides(name)
        assert overrides, name
        model = create_model(name, num_classes=10, **overrides)
        assert n_params(model) < 100_000, name
        assert model(_randn(2, 3, 32, 32)).shape == (2, 10)


def test_tiny_overrides_are_a_fresh_copy_and_unknown_ids_fail():
    tiny_overrides("sk_densenet")["growth_rate"] = 999
    assert tiny_overrides("sk_densenet")["growth_rate"] != 999
    assert tiny_overrides("ca_resnet") == tiny_overrides("ca_mobilenetv2")
    with pytest.raises(UserError):
        tiny_overrides("sk_densenett")


def test_register_model_rejects_a_stale_tiny_config():
    from fastcifar.models import register_model

    with pytest.raises(ValueError, match="growthrate"):
        register_model("never_registered", summary="", tiny={"growthrate": 4})(
            lambda num_classes=100, *, growth_rate=1: None
        )
    assert "never_registered" not in list_models()


# --------------------------------------------------------------------------------------------
# Layers against the formulas of docs/models.md §1 and independent references
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channels, groups, expected", [(80, 2, 65_824), (40, 2, 18_544), (80, 4, 37_024), (40, 4, 11_344)]
)
def test_skconv_param_formula(channels, groups, expected):
    layer = SKConv(channels, branches=2, groups=groups, reduction=8, min_dim=32, impl="torch")
    assert n_params(layer) == expected


def test_small_layer_counts():
    assert n_params(CoordinateAttention(80)) == 2_104
    assert n_params(TripletAttention(impl="torch")) == 300
    assert n_params(TripletAttention(no_spatial=True, impl="torch")) == 200
    assert n_params(GCBlock(256)) == 16_993


def test_sk_select_torch_matches_explicit_formula():
    branches = [_randn(2, 5, 3, 4, seed=s) for s in range(3)]
    logits = _randn(2, 3, 5, seed=9)
    expected = torch.zeros(2, 5, 3, 4)
    for n in range(2):
        for c in range(5):
            w = torch.exp(logits[n, :, c]) / torch.exp(logits[n, :, c]).sum()
            for m in range(3):
                expected[n, c] += w[m] * branches[m][n, c]
    torch.testing.assert_close(sk_select_torch(branches, logits), expected)


def test_skconv_single_branch_is_conv_bn_relu():
    """M=1 (the study's first SKNet unit): the softmax is 1, so the layer is its one branch."""
    layer = SKConv(16, branches=1, groups=4, impl="torch").eval()
    x = _randn(2, 16, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer.branches[0](x))


def test_zpool_torch():
    x = _randn(2, 3, 4, 5)
    for dim in (1, 2, 3):
        out = zpool_torch(x, dim)
        assert out.shape[dim] == 2
        torch.testing.assert_close(out.select(dim, 0), x.max(dim=dim).values)
        torch.testing.assert_close(out.select(dim, 1), x.sum(dim=dim) / x.shape[dim])


def _triplet_reference(layer: TripletAttention, x: torch.Tensor) -> torch.Tensor:
    """The original formulation: permute, pool dim 1, gate, multiply, permute back."""

    def gate(module, t):
        pooled = torch.cat([t.max(dim=1, keepdim=True).values, t.mean(dim=1, keepdim=True)], 1)
        return t * torch.sigmoid(module.bn(module.conv(pooled)))

    cw = gate(layer.cw, x.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
    hc = gate(layer.hc, x.permute(0, 3, 2, 1)).permute(0, 3, 2, 1)
    if layer.hw is None:
        return (cw + hc) / 2
    return (cw + hc + gate(layer.hw, x)) / 3


@pytest.mark.parametrize("no_spatial", [False, True])
def test_triplet_matches_original_formulation(no_spatial):
    torch.manual_seed(0)
    layer = TripletAttention(no_spatial=no_spatial, impl="torch").eval()
    for p in layer.parameters():  # non-trivial BN affine
        torch.nn.init.normal_(p)
    x = _randn(2, 6, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _triplet_reference(layer, x))


def test_coordinate_attention_matches_reference():
    torch.manual_seed(0)
    layer = CoordinateAttention(16).eval()
    x = _randn(2, 16, 5, 7)
    with torch.no_grad():
        xh = x.mean(3, keepdim=True)  # (N, C, H, 1)
        xw = x.mean(2, keepdim=True).permute(0, 1, 3, 2)  # (N, C, W, 1)
        y = layer.bn1(layer.conv1(torch.cat([xh, xw], 2)))
        y = y * torch.clamp(y + 3, 0, 6) / 6
        ah = torch.sigmoid(layer.conv_h(y[:, :, :5]))
        aw = torch.sigmoid(layer.conv_w(y[:, :, 5:].permute(0, 1, 3, 2)))
        torch.testing.assert_close(layer(x), x * ah * aw)


def test_gc_block_starts_as_identity_and_pools_by_softmax():
    torch.manual_seed(0)
    block = GCBlock(16).eval()
    x = _randn(2, 16, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)
        torch.nn.init.normal_(block.transform[-1].weight)
        weights = torch.softmax(block.mask(x).flatten(2), -1)  # (N, 1, HW)
        context = (x.flatten(2) * weights).sum(-1)[:, :, None, None]
        torch.testing.assert_close(block(x), x + block.transform(context))


# --------------------------------------------------------------------------------------------
# impl="triton": same parameters, same keys, same numbers
# --------------------------------------------------------------------------------------------


def test_impl_does_not_change_state_dict_keys():
    layer_t = SKConv(16, groups=4, impl="torch")
    assert "impl" not in str(list(layer_t.state_dict()))
    keys = list(create_model("sk_densenet", **tiny_overrides("sk_densenet"), impl="torch").state_dict())
    assert all("impl" not in k for k in keys)


def test_impl_triton_models_match_torch():
    # Interpreted Triton is slow on CPU: two-stage nets on 16x16 inputs.
    for name in ("sk_densenet", "triplet_resnet"):
        overrides = tiny_overrides(name)
        torch.manual_seed(0)
        ref = create_model(name, **overrides, impl="torch")
        fused = create_model(name, **overrides, impl="triton")
        assert list(ref.state_dict()) == list(fused.state_dict())
        assert n_params(ref) == n_params(fused)
        fused.load_state_dict(ref.state_dict())
        x = _randn(2, 3, 16, 16)
        out_ref, out_fused = ref(x), fused(x)
        torch.testing.assert_close(out_fused, out_ref, rtol=1e-4, atol=1e-5)
        out_ref.square().sum().backward()
        out_fused.square().sum().backward()
        # Train-mode BN on batch 2 amplifies float32 rounding: the torch path alone is ~1e-3 off
        # a float64 run, so compare each gradient relative to its own scale.
        for (n, p_ref), p_fused in zip(ref.named_parameters(), fused.parameters()):
            scale = p_ref.grad.abs().max().clamp_min(1e-6)
            err = (p_fused.grad - p_ref.grad).abs().max() / scale
            assert err < 5e-3, f"{name}: gradient of {n} differs by {err:.2e} of its scale"


def test_impl_triton_layers_match_torch_channels_last():
    x = _randn(2, 8, 6, 5).contiguous(memory_format=torch.channels_last)
    for make in (lambda i: SKConv(8, groups=4, impl=i), lambda i: TripletAttention(impl=i)):
        torch.manual_seed(0)
        ref, fused = make("torch").eval(), make("triton").eval()
        fused.load_state_dict(ref.state_dict())
        with torch.no_grad():
            torch.testing.assert_close(fused(x), ref(x), rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# python -m fastcifar.models
# --------------------------------------------------------------------------------------------

# Forward MFLOPs for one 3x32x32 image measured on the study's code (docs/models.md §0, FlopCounterMode).
STUDY_CODE_MFLOPS = {"sknet26": 66.2, "sknet26_study": 571.7, "resnet18": 74.1, "sk_densenet": 1664.9}


def test_forward_flops_match_the_study_code():
    from fastcifar.models.flops import forward_flops

    for name, mflops in STUDY_CODE_MFLOPS.items():
        assert round(forward_flops(create_model(name)) / 1e6, 1) == mflops, name


def test_cli_table_lists_counts_and_study_figures(capsys):
    from fastcifar.models.__main__ import main

    main(models="resnet18,sk_densenet", markdown=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| id | params | GFLOPs/img")
    rows = {line.split("|")[1].strip(" `"): line for line in lines[2:]}
    assert set(rows) == {"resnet18", "sk_densenet k=2", "sk_densenet k=4", "sk_densenet", "sk_densenet k=6"}
    assert f"{STUDY_CODE_PARAMS['resnet18']:,}" in rows["resnet18"]
    for k in (2, 4, 6):
        assert f"{SK_DENSENET_K[k]:,}" in rows[f"sk_densenet k={k}"]
    assert "5.18M" in rows["sk_densenet"] and "77.27" in rows["sk_densenet"]


def test_cli_unknown_model_is_user_error():
    from fastcifar.models.__main__ import main

    with pytest.raises(UserError):
        main(models="resnet19")


def test_entries_are_data_over_their_networks_signature():
    """An id's options are its network's keyword parameters less those the id fixes; defaults apply first."""
    import inspect

    from fastcifar.models import get_entry

    for name in list_models():
        entry = get_entry(name)
        params = inspect.signature(entry.network).parameters
        assert entry.override_names() == [p for p in params if p != "num_classes" and p not in entry.fixed], name
        assert set(entry.defaults) <= set(entry.override_names()) and set(entry.fixed) <= set(params), name
    triplet = get_entry("triplet_resnet")
    assert triplet.fixed["triplet"] and "triplet" not in triplet.override_names()
    assert "impl" in triplet.override_names() and "impl" not in get_entry("resnet18").override_names()
    sk = get_entry("sk_densenet")
    assert sk.option_defaults()["k"] == 5 and get_entry("sk_densenet_catsk").option_defaults()["k"] == 2
    # An override replaces the id's default; a fixed argument is not an option.
    assert n_params(create_model("sk_densenet", k=2)) == SK_DENSENET_K[2]
    with pytest.raises(UserError, match="no option 'stride_bug'"):
        create_model("sknet26", stride_bug=True)
