"""The engine's optimiser schedules, the one training step and its description."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fastcifar.errors import UserError


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(2))]


def test_constant_schedule_is_a_never_stepped_onecycle() -> None:
    """The VAN notebook: OneCycleLR built, never stepped -> lr max_lr/25 and beta1 0.95 throughout."""
    from fastcifar.training.engine import build_optimizer

    params = _params()
    optimizer, scheduler = build_optimizer(
        params, max_lr=0.01, epochs=2, steps_per_epoch=5, device=torch.device("cpu"), schedule="constant"
    )
    # What the notebook's objects did: build both, step only the optimizer.
    ref_params = _params()
    reference = torch.optim.Adam(ref_params, lr=0.01, betas=(0.9, 0.999))
    torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=0.01, epochs=2, steps_per_epoch=5, pct_start=0.3)
    for _ in range(10):  # more steps than one epoch: the constant schedule has no end
        for p in (*params, *ref_params):
            p.grad = torch.ones_like(p)
        optimizer.step()
        scheduler.step()
        reference.step()
        group, ref_group = optimizer.param_groups[0], reference.param_groups[0]
        assert group["lr"] == pytest.approx(0.01 / 25) == ref_group["lr"]
        assert group["betas"] == pytest.approx((0.95, 0.999)) and ref_group["betas"] == group["betas"]
    torch.testing.assert_close(params[0], ref_params[0])


def test_weight_decay_is_adams_coupled_l2() -> None:
    from fastcifar.training.engine import build_optimizer

    optimizer, _ = build_optimizer(
        _params(), max_lr=0.001, epochs=1, steps_per_epoch=3, device=torch.device("cpu"), weight_decay=5e-4
    )
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["weight_decay"] == 5e-4


def test_unknown_schedule_is_a_user_error() -> None:
    from fastcifar.training.engine import build_optimizer

    with pytest.raises(UserError, match="unknown schedule 'cosine'"):
        build_optimizer(
            _params(), max_lr=0.01, epochs=1, steps_per_epoch=1, device=torch.device("cpu"), schedule="cosine"
        )


def test_train_step_runs_the_profiler_ranges_and_returns_a_device_loss() -> None:
    from fastcifar.training.engine import (
        STEP_COMPOSITION,
        StepSettings,
        batches_in_ranges,
        build_optimizer,
        build_scaler,
        train_step,
    )

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    settings = StepSettings(device=torch.device("cpu"), label_smoothing=0.1)
    optimizer, scheduler = build_optimizer(
        model.parameters(), max_lr=0.01, epochs=1, steps_per_epoch=2, device=settings.device
    )
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 5, (4,))) for _ in range(2)]
    expected = nn.functional.cross_entropy(model(batches[0][0]), batches[0][1], label_smoothing=0.1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        losses = [
            train_step(model, x, y, optimizer, scheduler, build_scaler(settings), settings)
            for x, y in batches_in_ranges(batches)
        ]
    assert losses[0] == pytest.approx(expected.item()) and not losses[0].requires_grad
    assert scheduler.last_epoch == 2  # stepped once per batch
    names = [e.name for e in prof.events() if e.name in STEP_COMPOSITION]
    assert all(names.count(n) >= 2 for n in STEP_COMPOSITION)


def test_describe_step_reads_what_the_objects_do() -> None:
    from fastcifar.training.engine import StepSettings, build_optimizer, build_scaler, describe_step

    settings = StepSettings(device=torch.device("cpu"), amp="bf16", label_smoothing=0.1)
    optimizer, scheduler = build_optimizer(
        _params(), max_lr=0.01, epochs=2, steps_per_epoch=10, device=settings.device, weight_decay=5e-4
    )
    described = describe_step(optimizer, scheduler, build_scaler(settings), settings)
    assert described["optimizer"]["class"] == "torch.optim.adam.Adam"
    assert described["optimizer"]["weight_decay"] == 5e-4 and described["optimizer"]["eps"] == 1e-8
    assert described["optimizer"]["beta2"] == 0.999
    schedule = described["schedule"]
    assert schedule["name"] == "onecycle" and schedule["total_steps"] == 20 and schedule["pct_start"] == 0.3
    assert schedule["max_lr"] == 0.01 and schedule["initial_lr"] == pytest.approx(0.01 / 25)
    assert schedule["beta1"] == [0.95, 0.85, 0.95]
    assert described["step"]["amp"] == "bf16" and described["step"]["grad_scaler"] is False
    assert described["step"]["label_smoothing"] == 0.1

    optimizer, scheduler = build_optimizer(
        _params(), max_lr=0.01, epochs=2, steps_per_epoch=10, device=settings.device, schedule="constant"
    )
    constant = describe_step(optimizer, scheduler, build_scaler(settings), settings)["schedule"]
    assert constant["name"] == "constant"
    assert constant["lr"] == pytest.approx(0.0004) and constant["beta1"] == pytest.approx(0.95)


def test_step_settings_follow_the_variant() -> None:
    from fastcifar.training.engine import StepSettings
    from fastcifar.training.variant import BASELINE, VARIANTS

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    graphs = VARIANTS["compiled_bf16_cl_triton_cudagraphs"]
    on_gpu = StepSettings.for_variant(graphs, gpu, label_smoothing=0.1)
    assert on_gpu == StepSettings(device=gpu, amp="bf16", channels_last=True, label_smoothing=0.1, cudagraphs=True)
    assert not StepSettings.for_variant(graphs, cpu).cudagraphs  # no CUDA graphs on CPU: no step marks
    assert StepSettings.for_variant(BASELINE, cpu) == StepSettings(device=cpu)


def test_cudagraph_steps_are_marked_once_per_step_and_eval_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastcifar.training.engine import StepSettings, build_optimizer, build_scaler, evaluate, train_one_epoch

    marks: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 5, (4,))) for _ in range(3)]
    for cudagraphs, expected in ((False, 0), (True, 3)):
        marks.clear()
        settings = StepSettings(device=torch.device("cpu"), cudagraphs=cudagraphs)
        optimizer, scheduler = build_optimizer(
            model.parameters(), max_lr=0.01, epochs=1, steps_per_epoch=3, device=settings.device
        )
        train_one_epoch(model, batches, optimizer, scheduler, build_scaler(settings), settings, progress=False)
        assert len(marks) == expected
        evaluate(model, batches, settings)
        assert len(marks) == 2 * expected


def test_build_step_is_the_chain_training_used_to_assemble() -> None:
    """build_step: registry model, the variant's settings, the study's optimiser and schedule, a scaler."""
    from fastcifar.training.engine import StepSettings, build_optimizer, build_scaler, build_step, describe_step
    from fastcifar.training.variant import VARIANTS, build_model

    cpu, tiny = torch.device("cpu"), {"growth_rate": 4, "block_config": (2, 2, 2, 2)}
    variant = VARIANTS["eager_bf16"]
    torch.manual_seed(0)
    step = build_step(
        "sk_densenet", tiny, variant, cpu, lr=0.02, epochs=2, steps_per_epoch=3, num_classes=10, label_smoothing=0.1
    )
    torch.manual_seed(0)
    model = build_model("sk_densenet", tiny, variant, cpu, num_classes=10)
    settings = StepSettings.for_variant(variant, cpu, label_smoothing=0.1)
    optimizer, scheduler = build_optimizer(model.parameters(), max_lr=0.02, epochs=2, steps_per_epoch=3, device=cpu)
    assert step.forward is step.model and step.settings == settings  # eager: the model is the forward
    for mine, theirs in zip(step.model.state_dict().values(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(mine, theirs)  # the same weights from the same seed
    assert [p for g in step.optimizer.param_groups for p in g["params"]] == list(step.model.parameters())
    assert step.describe() == describe_step(optimizer, scheduler, build_scaler(settings), settings)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    before = [p.detach().clone() for p in step.model.parameters()]
    assert torch.isfinite(step(images, labels)) and step.scheduler.last_epoch == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, step.model.parameters(), strict=True))
    compiled = build_step("sk_densenet", tiny, VARIANTS["compiled_bf16"], cpu, lr=0.01, epochs=1, steps_per_epoch=1)
    assert compiled.forward is not compiled.model and compiled.forward._orig_mod is compiled.model


def test_a_partial_epoch_continues_where_it_stopped() -> None:
    """train_one_epoch(partial=...) skips the steps already taken and carries their loss and samples."""
    from fastcifar.training.engine import PartialEpoch, StepSettings, build_optimizer, build_scaler, train_one_epoch

    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    seen: list[int] = []
    batches = [(torch.full((4, 3, 2, 2), float(i)), torch.randint(0, 5, (4,))) for i in range(5)]
    settings = StepSettings(device=torch.device("cpu"))
    optimizer, scheduler = build_optimizer(
        model.parameters(), max_lr=0.01, epochs=1, steps_per_epoch=5, device=settings.device
    )
    partial = PartialEpoch(step=2, loss_sum=10.0, samples=8, seconds=1.0)
    result = train_one_epoch(
        model,
        batches,
        optimizer,
        scheduler,
        build_scaler(settings),
        settings,
        partial=partial,
        progress=False,
        batch_hook=lambda split, images, labels: seen.append(int(images[0, 0, 0, 0])),
    )
    assert seen == [2, 3, 4] and result.steps == 5 and result.samples == 8 + 12
    assert result.loss_sum > 10.0 and scheduler.last_epoch == 3


@pytest.mark.parametrize("compiling", [True, False], ids=["compiling", "eager"])
def test_the_first_compiled_step_says_so_and_stays_out_of_the_rate(monkeypatch, compiling) -> None:
    """The bar reads "(compiling)" during the first step of a compiled model; after it, the bar's rate and
    ETA count from the end of that step (tqdm's ``initial`` moves past it), an eager bar counts it."""
    import fastcifar.training.engine as engine

    bars = []

    class RecordedBar(engine.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    seen = []

    def hook(split, images, labels):
        bar = bars[-1]
        seen.append((bar.desc, bar.n, bar.format_dict["initial"]))

    monkeypatch.setattr(engine, "tqdm", RecordedBar)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    settings = engine.StepSettings(device=torch.device("cpu"))
    optimizer, scheduler = engine.build_optimizer(
        model.parameters(), max_lr=0.01, epochs=1, steps_per_epoch=3, device=settings.device
    )
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 5, (4,))) for _ in range(3)]
    engine.train_one_epoch(
        model,
        batches,
        optimizer,
        scheduler,
        engine.build_scaler(settings),
        settings,
        description="epoch 1/1",
        batch_hook=hook,
        compiling=compiling,
    )
    if compiling:
        assert seen == [("epoch 1/1 (compiling)", 0, 0), ("epoch 1/1", 1, 1), ("epoch 1/1", 2, 1)]
    else:
        assert seen == [("epoch 1/1", 0, 0), ("epoch 1/1", 1, 0), ("epoch 1/1", 2, 0)]
