"""The training step, one training epoch and one evaluation pass, with the study's optimiser.

:func:`train_step` is the one optimisation step of the project and :func:`build_step` the one way
its model, optimizer, schedule and scaler are built: training (:func:`train_one_epoch`), the
profiler (``fastcifar.profile``) and the training benchmark (``bench/train.py``) all use both, so
what is profiled and timed is what trains.

Recipe (docs/training.md): Adam betas (0.9, 0.999), eps 1e-8, no weight decay;
OneCycleLR with max_lr 0.01, pct_start 0.3 and beta1 cycled 0.95 -> 0.85 -> 0.95, stepped after
every batch; cross-entropy (label smoothing 0 by default). ``schedule="constant"`` and
``weight_decay`` reproduce the notebooks that deviate (see :func:`build_optimizer`). Speed options
(a :class:`fastcifar.training.variant.Variant`): autocast to bf16/fp16 (a GradScaler for fp16),
channels_last tensors, and a compiled forward passed in by the caller.

Host synchronisation: a step launches work and never waits for it. The loss is summed on the
device and read back only every ``log_every`` steps (progress bar, NaN/inf check, Ctrl-C
agreement between ranks) and at the end of the epoch.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from tqdm import tqdm

from fastcifar.errors import UserError
from fastcifar.preemption import PREEMPTION_SIGNALS, signal_name
from fastcifar.training.distributed import DistContext, all_reduce_sum
from fastcifar.training.variant import Variant, build_model

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}
SCHEDULES = ("onecycle", "constant")
# What one training step does, in order; each name is also a profiler range (record_function),
# which costs a few microseconds per step when no profiler is running.
STEP_COMPOSITION = ("data", "forward", "backward", "optimizer")

Batch = tuple[torch.Tensor, torch.Tensor]  # images (N, 3, H, W), labels (N,)
SINGLE_PROCESS = DistContext()
# (split, images, labels) -> None; called with every batch when set (debugging and tests only:
# it usually copies to the host, which costs a synchronisation per step).
BatchHook = Callable[[str, torch.Tensor, torch.Tensor], None]
# (logits (B, C) float32, labels (B,)) -> None: the outputs of every test batch, padding removed.
LogitsHook = Callable[[torch.Tensor, torch.Tensor], None]


class NonFiniteLoss(UserError):
    """The training loss became NaN or infinite (a run adds what it kept on disk)."""

    exit_code = 3


def likely_nonfinite_causes(settings: StepSettings, lr: float | None = None) -> str:
    """The likely causes of a NaN/inf loss that apply to a run with ``settings``, each with its remedy.

    Only causes these settings can have are named: a bf16 run is never told to use bf16.
    """
    causes = []
    if settings.device.type == "cpu" and settings.amp == "bf16" and settings.channels_last:
        causes.append(
            "CPU bf16 with channels_last, which gives non-finite gradients for grouped dilated convolutions "
            "(add --channels_last false)"
        )
    if settings.amp == "fp16":
        causes.append("fp16's narrow range (use --amp bf16)")
    causes.append("a learning rate too high for this model (lower --lr" + (f", now {lr:g})" if lr is not None else ")"))
    causes.append("non-finite values in the data")
    return "; ".join(causes)


@dataclass(frozen=True)
class StepSettings:
    """How each step runs: where, in which precision and memory layout, with which loss.

    ``cudagraphs``: the forward replays CUDA graphs (a ``reduce-overhead`` compiled model), so each
    step is announced to torch's CUDA-graph trees (see :func:`train_step`).
    """

    device: torch.device
    amp: str = "off"
    channels_last: bool = False
    label_smoothing: float = 0.0
    cudagraphs: bool = False

    @classmethod
    def for_variant(cls, variant: Variant, device: torch.device, *, label_smoothing: float = 0.0) -> StepSettings:
        """The step settings of ``variant`` on ``device`` (CUDA graphs exist on CUDA devices only)."""
        return cls(
            device=device,
            amp=variant.amp,
            channels_last=variant.channels_last,
            label_smoothing=label_smoothing,
            cudagraphs=variant.uses_cudagraphs and device.type == "cuda",
        )

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return AMP_DTYPES[self.amp]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare_input(self, images: torch.Tensor) -> torch.Tensor:
        """Put a batch (N, 3, H, W) in the model's memory layout (a no-op when it already is)."""
        if self.channels_last:
            return images.contiguous(memory_format=torch.channels_last)
        return images


@dataclass
class PartialEpoch:
    """Progress inside an epoch stopped by Ctrl-C (all zero at an epoch boundary).

    ``loss_sum`` and ``samples`` are summed over ranks; ``seconds`` is the train time so far.
    """

    step: int = 0
    loss_sum: float = 0.0
    samples: int = 0
    seconds: float = 0.0


@dataclass
class EpochResult:
    """What one (possibly interrupted) pass over the training loader did.

    ``loss_sum`` and ``samples`` are summed over all ranks; ``steps`` counts the steps of this
    epoch completed so far including any skipped on resume. ``warmup_seconds`` is the first
    step's time above the steady-state step time (compilation on a compiled model).
    """

    loss_sum: float
    samples: int
    steps: int
    seconds: float
    warmup_seconds: float
    interrupted: bool
    lr: float  # learning rate of the last step taken

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)


@dataclass
class EvalResult:
    """Full-test-set metrics, summed over ranks. Accuracies in percent."""

    loss: float
    top1: float
    top5: float
    samples: int
    seconds: float
    warmup_seconds: float


def _unchanged(_step: int) -> float:
    """LambdaLR multiplier of the ``constant`` schedule (a module function, so state dicts pickle)."""
    return 1.0


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter],
    *,
    max_lr: float,
    epochs: int,
    steps_per_epoch: int,
    device: torch.device,
    weight_decay: float = 0.0,
    schedule: str = "onecycle",
) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LRScheduler]:
    """Adam + a learning-rate schedule exactly as the study's notebooks built them.

    ``schedule``:

    - ``"onecycle"`` (the study's): OneCycleLR, max_lr ``max_lr``, pct_start 0.3, beta1 cycled
      0.95 -> 0.85 -> 0.95, to be stepped after every batch;
    - ``"constant"``: what the VAN notebook ran. It built the same OneCycleLR but never stepped
      it; building it already sets lr = max_lr / 25 and beta1 = 0.95, so training ran at that
      constant lr and beta1. Reproduced plainly: the OneCycleLR is built (setting both) and the
      returned scheduler multiplies by 1, so the step function stays the same for both schedules.

    ``weight_decay`` is Adam's coupled L2 term (the Triplet notebook used 5e-4), not AdamW's.
    """
    if schedule not in SCHEDULES:
        raise UserError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}.")
    optimizer = torch.optim.Adam(
        parameters,
        lr=max_lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=weight_decay,
        # The fused CUDA kernel updates every parameter in one launch; CPU keeps the default.
        fused=True if device.type == "cuda" else None,
    )
    scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=max_lr,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=0.3,
        cycle_momentum=True,
    )
    if schedule == "constant":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _unchanged)
    return optimizer, scheduler


def build_scaler(settings: StepSettings) -> torch.amp.GradScaler:
    """A GradScaler that is active only for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(settings.device.type, enabled=settings.amp == "fp16")


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def synchronize(device: torch.device) -> None:
    """Wait for queued device work; timing boundaries only."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches_in_ranges(loader: Iterable[Batch]) -> Iterator[Batch]:
    """Yield ``loader``'s batches, each fetched inside a ``data`` profiler range (the loader's share)."""
    batches = iter(loader)
    while True:
        with record_function("data"):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def train_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    settings: StepSettings,
) -> torch.Tensor:
    """One optimisation step on a batch ``images (N, 3, H, W)``, ``labels (N,)``.

    Forward and loss under autocast, gradients reset, (scaled) backward, optimizer step, scaler
    update, scheduler step. Returns the loss, detached, as a device scalar. In fp32 and bf16
    nothing here reads a value back to the host, so the step queues its work and returns (and no
    host read sits inside a compiled or CUDA-graph region); fp16's GradScaler reads its inf check
    once per step, in ``scaler.step``, outside the compiled forward.

    CUDA graphs (``settings.cudagraphs``): torch's CUDA-graph trees copy each non-static input
    (the loader's batch) into the graph's own static buffer on replay, and they reuse the output
    memory of one replay for the next. ``cudagraph_mark_step_begin`` says a new step starts, so the
    previous step's outputs (the logits, already consumed by the loss) may be overwritten; without
    it torch cannot tell a new step from a second call within the same one.
    """
    if settings.cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()
    with record_function("forward"):
        images = settings.prepare_input(images)
        with settings.autocast():
            logits = forward(images)
            loss = F.cross_entropy(logits, labels, label_smoothing=settings.label_smoothing)
    with record_function("backward"):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
    with record_function("optimizer"):
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
    return loss.detach()


def _json_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe_step(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    settings: StepSettings,
) -> dict[str, Any]:
    """What :func:`train_step` does with these objects, as plain data (run.json, comparisons).

    Read from the objects themselves (after a checkpoint load they show what that run used).
    The optimizer's ``lr`` / ``betas`` are left out where a schedule moves them; the schedule's
    fixed points are given instead. ``total_steps`` is the schedule's length, which differs
    between a profile (a few steps) and a training run.
    """
    group = optimizer.param_groups[0]
    moving = ("params", "lr", "betas", "initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")
    described: dict[str, Any] = {
        "optimizer": {
            "class": f"{type(optimizer).__module__}.{type(optimizer).__qualname__}",
            **{k: _json_value(v) for k, v in sorted(group.items()) if k not in moving},
            "beta2": float(group["betas"][1]),
        }
    }
    if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
        peak_end = scheduler._schedule_phases[0]["end_step"]  # float(pct_start * total_steps) - 1
        described["schedule"] = {
            "name": "onecycle",
            "class": type(scheduler).__qualname__,
            "stepped": "after every batch",
            "initial_lr": float(group["initial_lr"]),
            "max_lr": float(group["max_lr"]),
            "min_lr": float(group["min_lr"]),
            "pct_start": round((peak_end + 1) / scheduler.total_steps, 6),
            "cycle_momentum": bool(scheduler.cycle_momentum),
            "beta1": [float(group["max_momentum"]), float(group["base_momentum"]), float(group["max_momentum"])],
            "total_steps": int(scheduler.total_steps),
        }
    else:  # "constant": the multiplier-1 LambdaLR over a never-stepped OneCycleLR
        described["schedule"] = {
            "name": "constant",
            "class": type(scheduler).__qualname__,
            "lr": float(group["lr"]),
            "beta1": float(group["betas"][0]),
        }
    described["step"] = {
        "composition": list(STEP_COMPOSITION),
        "loss": "cross_entropy",
        "label_smoothing": settings.label_smoothing,
        "amp": settings.amp,
        "grad_scaler": scaler.is_enabled(),
        "channels_last": settings.channels_last,
        "zero_grad": "set_to_none",
        "cudagraph_step_marks": settings.cudagraphs,
    }
    return described


@dataclass
class TrainingStep:
    """What one training step needs, built by :func:`build_step` for training, the profiler and bench.train.

    ``model`` is the plain module (its parameters are the optimizer's; checkpoints save it);
    ``forward`` is what a step calls: ``variant.wrap(model)``, compiled or the model itself.
    """

    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    settings: StepSettings

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """:func:`train_step` on ``images (N, 3, H, W)``, ``labels (N,)``; the loss as a device scalar."""
        return train_step(self.forward, images, labels, self.optimizer, self.scheduler, self.scaler, self.settings)

    def describe(self) -> dict[str, Any]:
        """:func:`describe_step` of this step's objects."""
        return describe_step(self.optimizer, self.scheduler, self.scaler, self.settings)


def build_step(
    arch: str,
    model_kwargs: dict[str, Any],
    variant: Variant,
    device: torch.device,
    *,
    lr: float,
    epochs: int,
    steps_per_epoch: int,
    num_classes: int = 100,
    weight_decay: float = 0.0,
    schedule: str = "onecycle",
    label_smoothing: float = 0.0,
    compile_backend: str = "inductor",
) -> TrainingStep:
    """Model, forward, optimizer, schedule, scaler and settings of ``variant``'s training step.

    The model is registry model ``arch`` with ``model_kwargs`` (weights drawn from torch's global
    generator: seeding is the caller's); the schedule spans ``epochs * steps_per_epoch`` steps
    peaking at ``lr`` (see :func:`build_optimizer`); ``compile_backend`` goes to
    :meth:`Variant.wrap` for compiled variants.
    """
    model = build_model(arch, model_kwargs, variant, device, num_classes=num_classes)
    settings = StepSettings.for_variant(variant, device, label_smoothing=label_smoothing)
    optimizer, scheduler = build_optimizer(
        model.parameters(),
        max_lr=lr,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        device=device,
        weight_decay=weight_decay,
        schedule=schedule,
    )
    forward = variant.wrap(model, backend=compile_backend)
    return TrainingStep(model, forward, optimizer, scheduler, build_scaler(settings), settings)


class StopRequest:
    """Ctrl-C (SIGINT) and a cluster's stop signals turned into a flag the training loop checks between steps.

    The first Ctrl-C, SIGTERM, SIGUSR1 or SIGHUP (:data:`fastcifar.preemption.PREEMPTION_SIGNALS`)
    lets the current step finish so a checkpoint can be written; ``signal`` names it. A second
    Ctrl-C raises KeyboardInterrupt at once; a repeated preemption signal is ignored (a scheduler
    may signal every process of the job, and its SIGKILL ends the grace period anyway).
    """

    def __init__(self, announce: bool = True) -> None:
        self.requested = False
        self.signal: str | None = None  # "SIGINT", "SIGTERM", ... once requested
        self.announce = announce
        self._previous: dict[int, Any] = {}

    @property
    def preempted(self) -> bool:
        """True when a preemption signal (not Ctrl-C) asked to stop."""
        return self.requested and self.signal != "SIGINT"

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested, self.signal = True, signal_name(signum)
        if self.announce:
            what = "Ctrl-C" if signum == signal.SIGINT else self.signal
            print(f"\n{what}: stopping after this step and saving a checkpoint (Ctrl-C again to abort)", flush=True)

    def __enter__(self) -> StopRequest:
        try:
            for signum in (signal.SIGINT, *PREEMPTION_SIGNALS):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread (e.g. embedded use): no handler, never set
            pass
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def _leave_out_of_rate(bar: tqdm, description: str) -> None:
    """Show ``description`` on ``bar`` and count its rate and ETA from now on, from its current count
    (what came before, a compiled first step, is left out)."""
    done = bar.n
    bar.reset()  # restarts the clock and the smoothed rate
    bar.n = bar.initial = bar.last_print_n = done
    bar.set_description_str(description)


def _stop_or_diverged(stop: bool, loss_sum: torch.Tensor, ctx: DistContext, device: torch.device) -> tuple[bool, bool]:
    """Read back (one sync) whether any rank wants to stop and whether any rank's loss is non-finite."""
    flags = torch.stack(
        [
            torch.tensor(1.0 if stop else 0.0, device=device, dtype=torch.float64),
            (~torch.isfinite(loss_sum)).to(torch.float64),
        ]
    )
    all_reduce_sum(flags, ctx)
    stop_any, bad_any = flags.tolist()
    return stop_any > 0, bad_any > 0


def train_one_epoch(
    model: torch.nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    settings: StepSettings,
    *,
    ctx: DistContext = SINGLE_PROCESS,
    stop: StopRequest | None = None,
    partial: PartialEpoch | None = None,
    log_every: int = 25,
    description: str = "train",
    batch_hook: BatchHook | None = None,
    progress: bool = True,
    compiling: bool = False,
) -> EpochResult:
    """Train for one pass over ``loader``; ``model`` is in train mode on return.

    ``partial`` continues an epoch stopped by Ctrl-C: its ``step`` batches are drawn and dropped
    first (the loader replays the same epoch, so they are the ones already trained on) and its
    loss sum and sample count are carried into the result.

    ``compiling``: the first step compiles the model; the progress bar says so until it is done and
    leaves it out of its rate and ETA.

    Raises NonFiniteLoss when the loss becomes NaN/inf (checked every ``log_every`` steps).
    """
    # One loop on purpose (~90 lines): timing, Ctrl-C, NaN checks and the progress bar all read and
    # update the same per-step state; split apart, each piece would take all of it as arguments.
    partial = partial or PartialEpoch()
    skip_steps = partial.step
    device = settings.device
    model.train()
    total_steps = len(loader)  # type: ignore[arg-type]
    local_loss = torch.zeros((), device=device, dtype=torch.float64)
    local_samples = 0
    steps = skip_steps
    interrupted = False
    first_step_seconds = 0.0
    last_lr = current_lr(optimizer)
    bar = tqdm(
        total=total_steps,
        initial=skip_steps,
        desc=f"{description} (compiling)" if compiling else description,
        disable=not (progress and ctx.is_main),
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    synchronize(device)
    start = time.perf_counter()
    for index, (images, labels) in enumerate(batches_in_ranges(loader)):
        if index < skip_steps:
            continue
        timed_first = index == skip_steps
        if timed_first:
            synchronize(device)
            first_start = time.perf_counter()
        if batch_hook is not None:
            batch_hook("train", images, labels)
        last_lr = current_lr(optimizer)  # the lr this step uses (a Python float: no device sync)
        loss = train_step(model, images, labels, optimizer, scheduler, scaler, settings)
        local_loss += loss.to(torch.float64) * labels.shape[0]
        local_samples += labels.shape[0]
        steps += 1
        if timed_first:
            synchronize(device)
            first_step_seconds = time.perf_counter() - first_start
        bar.update(1)
        if timed_first and compiling:
            _leave_out_of_rate(bar, description)
        stop_now = stop is not None and stop.requested
        at_check = steps % log_every == 0 or steps == total_steps
        # Single process: honour Ctrl-C after any step (no sync needed). Several ranks: agree at
        # the check points only, where all ranks meet anyway.
        if at_check or (stop_now and not ctx.is_distributed):
            stop_any, bad_any = _stop_or_diverged(stop_now, local_loss, ctx, device)
            if bad_any:
                bar.close()
                raise NonFiniteLoss(
                    f"training loss became NaN/inf in step {steps} of {description}; "
                    f"likely causes: {likely_nonfinite_causes(settings)}"
                )
            if ctx.is_main:
                bar.set_postfix(loss=f"{local_loss.item() / max(local_samples, 1):.4f}", lr=f"{last_lr:.2e}")
            if stop_any:
                interrupted = steps < total_steps
                break
    synchronize(device)
    seconds = time.perf_counter() - start
    bar.close()
    totals = torch.tensor([local_loss.item(), float(local_samples)], dtype=torch.float64, device=device)
    all_reduce_sum(totals, ctx)
    done = steps - skip_steps
    steady = (seconds - first_step_seconds) / (done - 1) if done > 1 else first_step_seconds
    return EpochResult(
        loss_sum=partial.loss_sum + float(totals[0]),
        samples=partial.samples + int(totals[1]),
        steps=steps,
        seconds=seconds,
        warmup_seconds=max(first_step_seconds - steady, 0.0),
        interrupted=interrupted,
        lr=last_lr,
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    settings: StepSettings,
    *,
    ctx: DistContext = SINGLE_PROCESS,
    pad_last_batch: bool = False,
    batch_hook: BatchHook | None = None,
    logits_hook: LogitsHook | None = None,
) -> EvalResult:
    """Test loss (plain CE, mean over images), top-1 and top-5 over every test image.

    ``pad_last_batch`` pads a short final batch with zeros to the first batch's size so a compiled
    model sees one shape only (no recompilation); the padded rows are ignored. In eval mode
    BatchNorm uses running statistics, so padding does not change the real rows' outputs.
    ``logits_hook(logits, labels)`` sees each batch's float32 logits ``(B, C)`` as the figures are
    computed from them (``fastcifar.evaluation`` keeps them for its per-class figures).
    """
    device = settings.device
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top-1 hits, top-5 hits, n
    full_batch = 0
    first_batch_seconds = 0.0
    batches = 0
    synchronize(device)
    start = time.perf_counter()
    for images, labels in loader:
        if batches == 0:
            first_start = time.perf_counter()
        images = settings.prepare_input(images)
        if batch_hook is not None:
            batch_hook("test", images, labels)
        count = labels.shape[0]
        full_batch = full_batch or count
        if pad_last_batch and count < full_batch:
            padded = torch.zeros((full_batch, *images.shape[1:]), dtype=images.dtype, device=device)
            padded[:count] = images
            images = settings.prepare_input(padded)
        if settings.cudagraphs:  # as in train_step: this batch's replay may reuse the last one's outputs
            torch.compiler.cudagraph_mark_step_begin()
        with settings.autocast():
            logits = model(images)
        logits = logits[:count].float()
        if logits_hook is not None:
            logits_hook(logits, labels)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels[:, None]
        sums += torch.stack(
            [
                F.cross_entropy(logits, labels, reduction="sum").to(torch.float64),
                hits[:, 0].sum().to(torch.float64),
                hits.any(dim=1).sum().to(torch.float64),
                torch.tensor(float(count), device=device, dtype=torch.float64),
            ]
        )
        if batches == 0:
            synchronize(device)
            first_batch_seconds = time.perf_counter() - first_start
        batches += 1
    all_reduce_sum(sums, ctx)
    loss_sum, top1, top5, n = sums.tolist()
    seconds = time.perf_counter() - start
    model.train(was_training)
    steady = (seconds - first_batch_seconds) / (batches - 1) if batches > 1 else first_batch_seconds
    if n == 0:
        raise UserError("the test set is empty: prepare the dataset again (python -m fastcifar.data prepare)")
    loss = loss_sum / n
    return EvalResult(
        loss=loss if math.isfinite(loss) else float("nan"),
        top1=100.0 * top1 / n,
        top5=100.0 * top5 / n,
        samples=int(n),
        seconds=seconds,
        warmup_seconds=max(first_batch_seconds - steady, 0.0),
    )
