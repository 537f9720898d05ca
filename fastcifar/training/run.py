"""One training run: set up (:func:`setup`), train epochs (:func:`train_epoch`), finish or stop.

:func:`run` drives these for ``python -m fastcifar.train`` (see :mod:`fastcifar.train` for the
flags). Everything a run holds lives in one :class:`TrainingRun`; the progress inside an epoch
that Ctrl-C interrupted is a :class:`PartialEpoch`. There is one way out besides finishing:
:func:`interrupt`, which saves a checkpoint (rank 0) and tells how to continue.

Files (rank 0 only): the run folder is held by this run alone for its whole life
(:func:`hold_run_folder`, :mod:`fastcifar.locks`) and checked for writability before any work,
``checkpoint.pt`` is written after every epoch, ``metrics.jsonl`` / ``tb/`` / ``curves.png`` from
the first finished epoch on; :func:`finish` writes everything a finished run has besides (the
export ``model.safetensors`` + ``model.json``, then ``summary.json``: the one place for a run's
final files), also when a complete checkpoint is resumed. A run that fails before its first
checkpoint removes the folder again when it created it.

A checkpoint records the identity of the data it was trained on (:func:`fastcifar.data.prepare.data_identity`);
a resumed run checks it against the data it finds and never prepares data itself.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shlex
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fastcifar.atomic import folder_write_problem, remove_stale_temporaries
from fastcifar.environment import is_rank_zero
from fastcifar.errors import UserError
from fastcifar.evaluation.export import EXPORT_FILES, export_run
from fastcifar.locks import hold_folder, remove_lock_file
from fastcifar.training import checkpoint as ckpt
from fastcifar.training import distributed, engine
from fastcifar.training.compile_cache import cache_counts, compile_cache, counts_since
from fastcifar.training.config import TrainConfig
from fastcifar.training.distributed import DistContext
from fastcifar.training.engine import PartialEpoch
from fastcifar.training.metrics import RUN_FILES, RunLogger, plot_curves, summarize
from fastcifar.training.variant import kernels_in_use

PROG = "fastcifar.train"
# Files whose presence makes a folder a run (refused as --out of a new run).
RUN_MARKERS = (ckpt.CHECKPOINT_NAME, *RUN_FILES)
# Atomic writes in a run folder leave ``.<name>.*.tmp`` when killed; the next run removes them.
OWNED_NAMES = (ckpt.CHECKPOINT_NAME, ckpt.PREVIOUS_NAME, *RUN_FILES, *EXPORT_FILES)


class QuietExit(SystemExit):
    """Ends a non-zero rank whose error rank 0 reports: nothing printed, exit code 0.

    Exit code 0 so that torchrun does not stop rank 0 (SIGTERM) before it has printed the error;
    rank 0 exits 2, which torchrun reports as the job's failure.
    """

    def __init__(self) -> None:
        super().__init__(0)


@dataclass
class TrainingRun:
    """Everything one run holds between :func:`setup` and its end."""

    config: TrainConfig
    ctx: DistContext
    device: torch.device
    out: Path
    model: nn.Module  # the plain module: saved and loaded
    train_model: nn.Module  # what a step calls: compiled and/or wrapped in DDP
    eval_model: nn.Module  # compiled when the config says so, never DDP
    train_loader: Any
    test_loader: Any
    settings: engine.StepSettings
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    logger: RunLogger
    num_classes: int
    data: dict[str, Any] = field(default_factory=dict)  # the data's identity, saved with every checkpoint
    batch_hook: engine.BatchHook | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    partial: PartialEpoch = field(default_factory=PartialEpoch)
    epoch_rng: dict[str, Any] | None = None  # generator states at the start of the current epoch
    cache_dir: str | None = None  # the compile cache of a compiled run (fastcifar.training.compile_cache)

    @property
    def checkpoint_file(self) -> Path:
        return ckpt.checkpoint_path(self.out)

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_loader)

    def save(self, epoch: int, partial: PartialEpoch, rng: dict[str, Any]) -> None:
        """Write the checkpoint at (``epoch`` done, ``partial`` of the next); rank 0 only."""
        if not self.ctx.is_main:
            return
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "epoch": epoch,
            "step": partial.step,
            "partial": asdict(partial),
            "history": self.history,
            "num_classes": self.num_classes,
            "data": self.data,
            "config": asdict(self.config),
        }
        with disk_errors(self.checkpoint_file, "the previous checkpoint is kept", self.out):
            ckpt.save_checkpoint(self.checkpoint_file, state)


@contextlib.contextmanager
def disk_errors(path: Path, kept: str, out: Path | None = None) -> Iterator[None]:
    """Turn an OSError while writing ``path`` (full disk, permissions) into one line saying what remains.

    With ``out`` the line ends with the ``--resume`` command that continues the run.
    """
    try:
        yield
    except OSError as err:
        advice = "free some space" if err.errno == errno.ENOSPC else ""
        if out is not None:
            advice = f"{advice + ' and ' if advice else ''}continue with --resume {shlex.quote(str(out))}"
        message = f"cannot write {path}: {err.strerror or err}; {kept}" + (f" ({advice})" if advice else "")
        raise UserError(message) from None


# ------------------------------------------------------------------------------------------
# Setup


def ensure_dataset(config: TrainConfig, ctx: DistContext) -> None:
    """Prepare the betons when missing (rank 0 only; the other ranks wait)."""
    # Imported from the module itself: the package attribute `prepare` is that module once loaded.
    from fastcifar.data.prepare import dataset_dir, prepare

    folder = Path(dataset_dir(config.data_root, config.dataset))
    missing = [name for name in ("train.beton", "test.beton", "meta.json") if not (folder / name).is_file()]
    if missing and ctx.is_main:
        print(f"{folder} lacks {', '.join(missing)}: preparing {config.dataset} first", flush=True)
        prepare(dataset=config.dataset, root=config.data_root)
    distributed.barrier(ctx)


@contextlib.contextmanager
def hold_run_folder(out: str | os.PathLike) -> Iterator[bool]:
    """Hold the run folder for this run alone (rank 0; see :mod:`fastcifar.locks`); yield whether it was created.

    A second training or a ``--resume`` of the same folder while this one lives is refused with
    one line naming this process.
    """
    created = not Path(out).exists()
    if not is_rank_zero():  # the other ranks write nothing (and may have stamped another default folder)
        yield created
        return
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError:  # claim_out_dir reports it in one line, from rank 0 alone under torchrun
        yield created
        return
    try:
        with hold_folder(out, PROG):
            yield created
    finally:
        if created:  # a run refused or failed before writing anything leaves no folder behind
            with contextlib.suppress(OSError):
                Path(out).rmdir()


def data_problem(saved: dict[str, Any], meta: dict[str, Any]) -> str | None:
    """How the data described by ``meta`` differs from the identity ``saved`` in a checkpoint, or None."""
    from fastcifar.data.prepare import data_identity

    found = data_identity(meta)
    for key, what in (("dataset", "data set"), ("counts", "image counts"), ("hashes", "beton contents")):
        if key in saved and saved[key] != found[key]:
            detail = "" if key == "hashes" else f": {saved[key]} then, {found[key]} now"
            return f"{what} differ{detail}"
    return None


def check_resumed_data(config: TrainConfig, saved: dict[str, Any] | None) -> dict[str, Any]:
    """The meta.json of the data a resumed run finds; UserError when it is missing or not the saved data.

    Never prepares anything: data that is gone is reported, not silently made again (or downloaded).
    """
    from fastcifar.data.prepare import dataset_dir, load_meta

    folder = dataset_dir(config.data_root, config.dataset)
    if not (folder / "meta.json").is_file():
        raise UserError(
            f"the run in {config.out} was trained on {config.dataset} in {folder}, which holds no prepared data now; "
            "if the data moved, resume with --data_root pointing to its new root"
        )
    meta = load_meta(config.data_root, config.dataset)
    problem = data_problem(saved or {}, meta)
    if problem is not None:
        raise UserError(
            f"{folder} is not the data the run in {config.out} was trained on: {problem}; resume with "
            "--data_root pointing to that data, or start a new run"
        )
    return meta


def start(config: TrainConfig, batch_hook: engine.BatchHook | None = None) -> dict[str, Any]:
    """A new run in ``config.out`` (refused when the folder holds another run or another process)."""
    refuse_existing_run(config.out)  # before the lock: a refused folder is left exactly as it was
    with hold_run_folder(config.out) as created:
        refuse_existing_run(config.out)  # and under it: a run that ended meanwhile counts too
        return run(config, batch_hook=batch_hook, created_out=created)


def resume(
    folder: str | os.PathLike, changes: dict[str, Any], batch_hook: engine.BatchHook | None = None
) -> dict[str, Any]:
    """Continue the run saved in ``folder`` with the allowed ``changes``; finish a complete one.

    The checks come first, so a refused resume leaves the folder as it was; the checkpoint is read
    again under the folder's lock when it changed meanwhile (a run that was still training).
    """
    from fastcifar.training.config import resumed_config

    path = ckpt.checkpoint_path(folder)

    def version() -> tuple[int, int, int]:
        stat = path.stat()
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    seen = version()
    state = ckpt.load_checkpoint(path)
    config = resumed_config(state["config"], str(folder), changes)
    with hold_run_folder(folder):
        if version() != seen:
            state = ckpt.load_checkpoint(path)
            config = resumed_config(state["config"], str(folder), changes)
        return run(config, resume_state=state, batch_hook=batch_hook)


def refuse_existing_run(out: str | os.PathLike) -> None:
    """A new run never writes into a folder that holds another run (files would mix)."""
    found = [name for name in RUN_MARKERS if (Path(out) / name).exists()]
    if found:
        raise UserError(
            f"{out} already holds a run ({', '.join(found)}); continue it with --resume {out}, or pass another --out."
        )


def claim_out_dir(out: Path, ctx: DistContext) -> None:
    """Make sure rank 0 can write ``out`` and clear stale temporaries there.

    Under torchrun rank 0 decides and the other ranks follow: on failure rank 0 raises the
    UserError (its one line) and the others leave quietly.
    """
    problem = None
    if ctx.is_main:
        reason = folder_write_problem(out)
        if reason is None:
            try:
                remove_stale_temporaries(out, OWNED_NAMES)
            except OSError as err:
                reason = err.strerror or str(err)
        if reason is not None:
            problem = f"cannot write the run folder {out}: {reason}; pass a writable --out"
    if ctx.is_distributed:
        shared = [problem]
        torch.distributed.broadcast_object_list(shared, src=0)
        problem = shared[0]
    if problem is not None:
        if ctx.is_main:
            raise UserError(problem)
        raise QuietExit()


def _restore(training: TrainingRun, state: dict[str, Any]) -> None:
    """Load a checkpoint's states into ``training`` (its RNG states are restored last, by the caller)."""
    try:
        training.model.load_state_dict(state["model"])
        training.optimizer.load_state_dict(state["optimizer"])
        training.scheduler.load_state_dict(state["scheduler"])
        training.scaler.load_state_dict(state["scaler"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise UserError(
            f"the checkpoint in {training.out} does not fit its own config ({str(err).splitlines()[0][:120]}); "
            "start a new run"
        ) from None
    training.history = list(state["history"])
    training.start_epoch = int(state["epoch"])
    training.partial = PartialEpoch(**state["partial"])


def _loaders(config: TrainConfig, device: torch.device, ctx: DistContext) -> tuple[Any, Any]:
    """The run's train loader (augmented, this rank's shard) and test loader."""
    from fastcifar.data.loaders import build_loader

    loader_options = dict(
        root=config.data_root,
        dataset=config.dataset,
        device=device,
        seed=config.seed,
        num_workers=config.workers,
        rank=ctx.rank,
        world_size=ctx.world_size,
        dtype=torch.float32,
        channels_last=config.channels_last,
    )
    train_loader = build_loader(
        config.loader, "train", batch_size=config.batch_size, randaugment=config.randaugment, **loader_options
    )
    test_loader = build_loader(config.loader, "test", batch_size=config.eval_batch_size, **loader_options)
    return train_loader, test_loader


def setup(
    config: TrainConfig,
    device: torch.device,
    ctx: DistContext,
    resume_state: dict[str, Any] | None = None,
    batch_hook: engine.BatchHook | None = None,
) -> TrainingRun:
    """Data, model, optimizer, schedule, scaler and logger for ``config`` (restored from ``resume_state``)."""
    from fastcifar.data.prepare import data_identity, load_meta

    if resume_state is None:
        ensure_dataset(config, ctx)
        meta = load_meta(config.data_root, config.dataset)
    else:
        meta = check_resumed_data(config, resume_state.get("data"))
    num_classes = int(meta["num_classes"])
    saved_classes = num_classes if resume_state is None else int(resume_state.get("num_classes", num_classes))
    if saved_classes != num_classes:
        raise UserError(
            f"the run in {config.out} trained a {saved_classes}-class model, but {config.dataset} in "
            f"{config.data_root} has {num_classes} classes; resume with the data it was started on."
        )
    train_loader, test_loader = _loaders(config, device, ctx)

    # Same seed, same initial weights on every rank (DDP also broadcasts rank 0's).
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    step = engine.build_step(
        config.arch,
        config.model_kwargs,
        config.variant,
        device,
        lr=config.lr,
        epochs=config.epochs,
        steps_per_epoch=len(train_loader),
        num_classes=num_classes,
        weight_decay=config.weight_decay,
        schedule=config.schedule,
        label_smoothing=config.label_smoothing,
    )
    train_model = step.forward
    if ctx.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(
            step.forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    training = TrainingRun(
        config=config,
        ctx=ctx,
        device=device,
        out=Path(config.out),
        model=step.model,
        train_model=train_model,
        eval_model=step.forward,
        train_loader=train_loader,
        test_loader=test_loader,
        settings=step.settings,
        optimizer=step.optimizer,
        scheduler=step.scheduler,
        scaler=step.scaler,
        logger=RunLogger(Path(config.out), enabled=ctx.is_main),
        num_classes=num_classes,
        data=data_identity(meta),
        batch_hook=batch_hook,
    )
    if resume_state is not None:
        _restore(training, resume_state)
        training.logger.restart_from(training.history)
    # GradScaler skipping an fp16 step makes the scheduler step "before" the optimizer: expected.
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
    return training


def _announce(training: TrainingRun, resuming: bool) -> None:
    config, ctx = training.config, training.ctx
    if not ctx.is_main:
        return
    what = "training"
    if resuming and training.start_epoch >= config.epochs:
        what = f"finishing {training.out}: all {config.epochs} epochs are trained, writing what is missing"
    elif resuming:
        step = training.partial.step
        what = f"resuming {training.out} at epoch {training.start_epoch + 1}" + (f" step {step}" if step else "")
    print(
        f"{what}: {config.arch} on {config.dataset} ({training.train_loader.num_samples * ctx.world_size} train "
        f"images, {training.steps_per_epoch} steps/epoch), device {training.device}, loader {config.loader}, "
        f"amp {config.amp}, compile {config.compile}"
        + (f" (cache {training.cache_dir})" if training.cache_dir else "")
        + f", channels_last {config.channels_last}, "
        f"world_size {ctx.world_size}; out {training.out}",
        flush=True,
    )
    if training.device.type == "cpu" and config.amp == "bf16" and config.channels_last:
        print(
            "note: on CPU, bf16 + channels_last gives non-finite weight gradients for grouped dilated convs "
            "(SK layers) in current torch releases; if the loss becomes NaN, add --channels_last false",
            flush=True,
        )


# ------------------------------------------------------------------------------------------
# Epochs and the two ways out


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train_loss {row['train_loss']:.4f}  test_loss {row['test_loss']:.4f}  "
        f"top1 {row['top1']:6.2f}%  top5 {row['top5']:6.2f}%  {row['images_per_s']:9.1f} img/s  "
        f"{row['epoch_seconds']:7.2f} s  lr {row['lr']:.2e}"
    )


def train_epoch(training: TrainingRun, epoch: int, stop: engine.StopRequest) -> PartialEpoch | None:
    """Train and evaluate epoch ``epoch`` (0-based), checkpoint and log it.

    Returns None when the epoch finished, or the :class:`PartialEpoch` where Ctrl-C stopped it.
    """
    config, ctx, partial = training.config, training.ctx, training.partial
    training.epoch_rng = ckpt.capture_rng_state()
    lookups_before = cache_counts()
    training.train_loader.set_epoch(epoch)
    description = f"epoch {epoch + 1}/{config.epochs}"
    try:
        result = engine.train_one_epoch(
            training.train_model,
            training.train_loader,
            training.optimizer,
            training.scheduler,
            training.scaler,
            training.settings,
            ctx=ctx,
            stop=stop,
            partial=partial,
            log_every=config.log_every,
            description=description,
            batch_hook=training.batch_hook,
            compiling=config.compile and epoch == training.start_epoch,  # this process's first step
        )
    except engine.NonFiniteLoss as err:
        kept = (
            f"the last good checkpoint (epoch {training.history[-1]['epoch']}) is kept at {training.checkpoint_file}"
            if training.history and training.checkpoint_file.is_file()
            else "no checkpoint was written"
        )
        causes = engine.likely_nonfinite_causes(training.settings, lr=config.lr)
        raise engine.NonFiniteLoss(
            f"training loss became NaN/inf in {description}; {kept}; likely causes: {causes}."
        ) from err
    train_seconds = partial.seconds + result.seconds
    if result.interrupted:
        return PartialEpoch(step=result.steps, loss_sum=result.loss_sum, samples=result.samples, seconds=train_seconds)

    distributed.broadcast_buffers(training.model, ctx)
    evaluation = engine.evaluate(
        training.eval_model,
        training.test_loader,
        training.settings,
        ctx=ctx,
        pad_last_batch=config.compile,
        batch_hook=training.batch_hook,
    )
    warmup = result.warmup_seconds + evaluation.warmup_seconds
    # Throughput leaves out the first step's excess over a steady step (compilation).
    timed_train = max(train_seconds - result.warmup_seconds, 1e-9)
    row = {
        "epoch": epoch + 1,
        "train_loss": result.loss,
        "test_loss": evaluation.loss,
        "top1": evaluation.top1,
        "top5": evaluation.top5,
        "images_per_s": result.samples / timed_train,
        "epoch_seconds": train_seconds + evaluation.seconds,
        "lr": result.lr,
        "train_seconds": train_seconds,
        "eval_seconds": evaluation.seconds,
        "train_images": result.samples,
        "warmup_seconds": warmup,
        "compile_seconds": warmup if config.compile else 0.0,
        # Inductor's FX graph cache lookups of this epoch (this process's compiles happen in its first).
        "compile_cache_lookups": counts_since(lookups_before),
    }
    training.history.append(row)
    training.partial = PartialEpoch()
    training.save(epoch + 1, training.partial, ckpt.capture_rng_state())
    if ctx.is_main:
        with disk_errors(training.out, f"the checkpoint of epoch {epoch + 1} is saved", training.out):
            training.logger.log_epoch(row, training.history)
        print(_epoch_line(row, config.epochs), flush=True)
    return None


def resume_command(out: Path) -> str:
    """The shell command that continues the run in ``out`` (quoted: a path with spaces survives a paste)."""
    return shlex.join(["python", "-m", PROG, "--resume", str(out)])


def interrupt(training: TrainingRun, epoch: int, partial: PartialEpoch, stop_signal: str = "SIGINT") -> dict[str, Any]:
    """Stop after Ctrl-C or a preemption signal (``stop_signal``): checkpoint at (``epoch`` done,
    ``partial`` of the next) and say how to go on."""
    where = (
        f"in epoch {epoch + 1} after step {partial.step}/{training.steps_per_epoch}"
        if partial.step
        else (f"after epoch {epoch}")
    )
    if partial.step:  # an epoch boundary was checkpointed when its epoch ended
        # The RNG states of the epoch's start: the resumed run replays that epoch's loader.
        training.save(epoch, partial, training.epoch_rng or ckpt.capture_rng_state())
    preempted = stop_signal != "SIGINT"
    if training.ctx.is_main:
        print(
            f"{f'preempted by {stop_signal}' if preempted else 'interrupted'} {where}; checkpoint saved to "
            f"{training.checkpoint_file}; continue with: {resume_command(training.out)}",
            flush=True,
        )
    return {
        "interrupted": True,
        "preempted": stop_signal if preempted else None,
        "epoch": epoch,
        "step": partial.step,
        "checkpoint": str(training.checkpoint_file),
    }


def finish(training: TrainingRun) -> dict[str, Any]:
    """Write everything a finished run has besides its checkpoint (rank 0); return the summary.

    The one place for a run's final files: ``curves.png`` (when missing), the export
    (``model.safetensors`` + ``model.json``), then ``summary.json``, the run's end marker.
    Idempotent: resuming a complete checkpoint comes here again and writes what is missing (a kill
    or a full disk at the very end); files already there are kept (an existing summary.json is
    returned as it is).
    """
    logger = training.logger
    kept = "every epoch is in metrics.jsonl and the final checkpoint"
    if training.ctx.is_main and not logger.curves_path.is_file():
        with disk_errors(logger.curves_path, kept):
            plot_curves(training.history, logger.curves_path)
    if training.ctx.is_main and not all((training.out / name).is_file() for name in EXPORT_FILES):
        # before summary.json, which stays the last file a run writes (its end marker)
        with disk_errors(training.out, kept, training.out):
            export_run(training.out, quiet=True)
    if logger.summary_path.is_file():
        existing = _read_summary(logger.summary_path)
        if existing is not None:
            if training.ctx.is_main:
                print(f"done: {training.out} was already finished; {logger.summary_path} is kept", flush=True)
            return existing
    extra = {
        "compile_cache": compile_cache_summary(training),
        "world_size": training.ctx.world_size,
        "device": str(training.device),
        # What the SK / Triplet layers ran (config.kernels is what was asked: triton runs the PyTorch
        # reference on a CPU); None for a model without them.
        "kernels": kernels_in_use(training.model, training.device),
        # What each step did (optimizer, schedule, precision, composition), as fastcifar.profile records it.
        "step": engine.describe_step(training.optimizer, training.scheduler, training.scaler, training.settings),
    }
    summary = summarize(training.history, asdict(training.config), extra)
    with disk_errors(logger.summary_path, kept):
        logger.write_summary(summary)
    if training.ctx.is_main:
        print(
            f"done: final top1 {summary['final_top1']:.2f}% top5 {summary['final_top5']:.2f}%, best top1 "
            f"{summary['best_top1']:.2f}% (epoch {summary['best_top1_epoch']}), {summary['total_seconds']:.1f} s, "
            f"{summary['images_per_s']:.0f} img/s, compile {summary['compile_seconds']:.1f} s"
            f"{_cache_words(summary['compile_cache'])}; "
            f"{training.out}/summary.json",
            flush=True,
        )
    return summary


def _cache_words(cache: dict[str, Any]) -> str:
    if cache["hit"] is None:
        return ""
    found = f"{cache['hits']} of {cache['hits'] + cache['misses']} graphs found"
    return f" (cache {'hit' if cache['hit'] else 'miss'}: {found})"


def compile_cache_summary(training: TrainingRun) -> dict[str, Any]:
    """The compile cache a run used and its lookups over all epochs (every process of a resumed run).

    ``hit``: every lookup found its graph (True), some had to compile (False), none happened (None).
    """
    lookups = {"hits": 0, "misses": 0, "bypasses": 0}
    for row in training.history:
        for name, count in row.get("compile_cache_lookups", {}).items():
            lookups[name] = lookups.get(name, 0) + count
    used = lookups["hits"] + lookups["misses"]
    return {"dir": training.cache_dir, **lookups, "hit": (lookups["misses"] == 0) if used else None}


def _read_summary(path: Path) -> dict[str, Any] | None:
    """An existing summary.json, or None when it is unreadable (a truncated one is written again)."""
    import json

    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def run(
    config: TrainConfig,
    resume_state: dict[str, Any] | None = None,
    batch_hook: engine.BatchHook | None = None,
    created_out: bool = False,
) -> dict[str, Any]:
    """Train according to ``config`` (continuing ``resume_state`` when given); return the summary.

    Callers hold the run folder (:func:`start`, :func:`resume`); ``created_out``: whether they
    created it, so that a run failing before its first checkpoint removes it again.

    The summary dict is the content of summary.json, or ``{"interrupted": True, ...}`` after Ctrl-C
    or a preemption signal (``"preempted"``: that signal's name, None for Ctrl-C).
    ``batch_hook(split, images, labels)`` sees every train and test batch (tests and debugging).
    """
    from fastcifar.training.variant import resolve_device

    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    with compile_cache(config.compile_cache, enabled=config.compile) as cache_dir:
        return _run(config, device, cache_dir, resume_state, batch_hook, created_out)


def _run(
    config: TrainConfig,
    device: torch.device,
    cache_dir: str | None,
    resume_state: dict[str, Any] | None,
    batch_hook: engine.BatchHook | None,
    created_out: bool,
) -> dict[str, Any]:
    ctx = distributed.setup(device.type)
    training = None
    try:
        if ctx.is_distributed and resume_state is None:
            # Ranks may have stamped different default folders: everyone uses rank 0's.
            shared = [config.out]
            torch.distributed.broadcast_object_list(shared, src=0)
            config = replace(config, out=shared[0])
        claim_out_dir(Path(config.out), ctx)
        training = setup(config, device, ctx, resume_state, batch_hook)
        training.cache_dir = cache_dir
        _announce(training, resuming=resume_state is not None)
        if resume_state is not None:  # last, after everything above that may draw random numbers
            ckpt.restore_rng_state(resume_state["rng"])
        with engine.StopRequest(announce=ctx.is_main) as stop:
            for epoch in range(training.start_epoch, config.epochs):
                stopped_at = train_epoch(training, epoch, stop)
                if stopped_at is not None:
                    return interrupt(training, epoch, stopped_at, stop.signal or "SIGINT")
                if stop.requested and epoch + 1 < config.epochs:
                    return interrupt(training, epoch + 1, PartialEpoch(), stop.signal or "SIGINT")
        return finish(training)
    except BaseException:
        if created_out and ctx.is_main and not ckpt.checkpoint_path(config.out).exists():
            _remove_empty_run_dir(Path(config.out))
        raise
    finally:
        if training is not None:
            training.logger.close()
        distributed.cleanup(ctx)


def _remove_empty_run_dir(out: Path) -> None:
    """Remove a run folder this run created when it holds nothing (a failure before any checkpoint).

    The folder's lock file goes with it (the caller still holds the lock while removing).
    """
    try:
        if [p.name for p in out.iterdir()] == [".lock"]:
            remove_lock_file(out)
        out.rmdir()
    except OSError:  # not empty (someone else's files) or already gone: leave it
        pass
