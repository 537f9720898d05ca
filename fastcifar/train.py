"""``python -m fastcifar.train``: train a model of the registry with the study's recipe.

Defaults reproduce the study: 30 epochs, batch 256, Adam (0.9, 0.999), OneCycleLR max 0.01 stepped
every batch (pct_start 0.3, beta1 cycled), plain cross-entropy, RandAugment(2, 10) + flip +
reflect-crop, ImageNet mean/std, evaluation on the full test set after every epoch.

Examples::

    python -m fastcifar.train --arch sk_densenet                 # study recipe, gpu loader, eager fp32
    python -m fastcifar.train --arch sk_densenet --fast          # compile + channels_last + bf16 + Triton
    python -m fastcifar.train --arch sk_densenet --baseline      # the study's pipeline: eager fp32, torch loader
    python -m fastcifar.train --resume runs/sk_densenet-20261128-101500
    torchrun --nproc_per_node=4 -m fastcifar.train --arch sk_densenet --fast

Every epoch writes ``<out>/metrics.jsonl``, TensorBoard scalars (``<out>/tb``), ``<out>/curves.png``
and ``<out>/checkpoint.pt``; the end of the run writes ``<out>/summary.json``.
"""

from __future__ import annotations

import ast
import os
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fastcifar.errors import UserError

PROG = "fastcifar.train"
LOADERS = ("ffcv", "gpu", "torch")
DATASETS = ("cifar100", "cifar10", "synthetic")
AMP_MODES = ("bf16", "fp16", "off")
KERNEL_IMPLS = ("triton", "torch")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# Debugging hook: when set to a folder, each rank dumps the labels and test-image fingerprints it
# saw (``seen-rank<r>.npz``) so tests can check the data sharding. Costs a sync per step.
SEEN_DIR_ENV = "FASTCIFAR_DEBUG_SEEN_DIR"

# The two presets; an explicitly given flag wins over its preset value.
FAST_PRESET = {"compile": True, "channels_last": True, "amp": "bf16", "loader": "gpu", "kernels": "triton"}
BASELINE_PRESET = {"compile": False, "channels_last": False, "amp": "off", "loader": "torch", "kernels": "torch"}
PLAIN_DEFAULTS = {"compile": False, "channels_last": False, "amp": "off", "loader": "gpu", "kernels": None}


@dataclass(frozen=True)
class TrainConfig:
    """A fully resolved and validated run configuration (saved in every checkpoint)."""

    arch: str = "sk_densenet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 256
    eval_batch_size: int = 512
    lr: float = 0.01
    loader: str = "gpu"
    dataset: str = "cifar100"
    data_root: str = "data"
    device: str | None = None
    compile: bool = False
    compile_mode: str | None = None
    amp: str = "off"
    channels_last: bool = False
    kernels: str | None = None
    seed: int = 0
    out: str = ""
    workers: int | None = None
    label_smoothing: float = 0.0
    log_every: int = 25


# ------------------------------------------------------------------------------------------
# Flag validation (no torch import: bad flags fail fast)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise UserError(f"--{name} takes true or false, got {value!r}.")


def _as_int(name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"--{name} must be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise UserError(f"--{name} must be at least {minimum}, got {value}.")
    return value


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"--{name} must be a number, got {value!r}.")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"unknown --{name} {value!r}; choose one of: {', '.join(choices)}.")
    return value


def _model_kwargs(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):  # fire leaves strings it cannot parse as Python literals alone
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise UserError(
                f"--model_kwargs must be a dict such as '{{\"growth_rate\": 12}}', got {value!r}."
            ) from None
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise UserError(f"--model_kwargs must be a dict of option names to values, got {value!r}.")
    if "num_classes" in value:
        raise UserError("--model_kwargs cannot set num_classes: it comes from the dataset.")
    return dict(value)


def _default_out(arch: str) -> str:
    return str(Path("runs") / f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}")


def resolve_config(
    *,
    arch: Any = "sk_densenet",
    model_kwargs: Any = None,
    epochs: Any = 30,
    batch_size: Any = 256,
    eval_batch_size: Any = 512,
    lr: Any = 0.01,
    loader: Any = None,
    dataset: Any = "cifar100",
    data_root: Any = "data",
    device: Any = None,
    compile: Any = None,
    compile_mode: Any = None,
    amp: Any = None,
    channels_last: Any = None,
    kernels: Any = None,
    seed: Any = 0,
    out: Any = None,
    workers: Any = None,
    label_smoothing: Any = 0.0,
    log_every: Any = 25,
    fast: Any = False,
    baseline: Any = False,
) -> TrainConfig:
    """Check every flag and apply the presets; raises UserError with one clear sentence."""
    fast, baseline = _as_bool("fast", fast), _as_bool("baseline", baseline)
    if fast and baseline:
        raise UserError("--fast and --baseline are opposite presets; pass at most one of them.")
    preset = FAST_PRESET if fast else BASELINE_PRESET if baseline else PLAIN_DEFAULTS
    explicit = {"compile": compile, "channels_last": channels_last, "amp": amp, "loader": loader, "kernels": kernels}
    chosen = {key: preset[key] if value is None else value for key, value in explicit.items()}

    if not isinstance(arch, str) or not arch:
        raise UserError(f"--arch must be a model id, got {arch!r}; list them with python -m fastcifar.models.")
    if chosen["amp"] is False:  # `--amp=false` / `--noamp`
        chosen["amp"] = "off"
    if chosen["kernels"] == "auto":
        chosen["kernels"] = None
    if chosen["kernels"] is not None:
        _choice("kernels", chosen["kernels"], KERNEL_IMPLS)
    if device in (None, "auto"):
        device = None
    elif not (isinstance(device, str) and (device in ("cpu", "cuda") or device.startswith("cuda:"))):
        raise UserError(f"unknown --device {device!r}; use cpu, cuda, cuda:N or auto.")
    if compile_mode is not None:
        _choice("compile_mode", compile_mode, COMPILE_MODES)
    if workers is not None:
        _as_int("workers", workers, minimum=0)
    smoothing = _as_float("label_smoothing", label_smoothing)
    if not 0.0 <= smoothing < 1.0:
        raise UserError(f"--label_smoothing must be in [0, 1), got {smoothing}.")
    learning_rate = _as_float("lr", lr)
    if not learning_rate > 0:
        raise UserError(f"--lr must be positive, got {lr!r}.")
    if not isinstance(data_root, str) or not data_root:
        raise UserError(f"--data_root must be a folder path, got {data_root!r}.")
    if out is not None and (not isinstance(out, str) or not out):
        raise UserError(f"--out must be a folder path, got {out!r}.")
    return TrainConfig(
        arch=arch,
        model_kwargs=_model_kwargs(model_kwargs),
        epochs=_as_int("epochs", epochs, minimum=1),
        batch_size=_as_int("batch_size", batch_size, minimum=1),
        eval_batch_size=_as_int("eval_batch_size", eval_batch_size, minimum=1),
        lr=learning_rate,
        loader=_choice("loader", chosen["loader"], LOADERS),
        dataset=_choice("dataset", dataset, DATASETS),
        data_root=data_root,
        device=device,
        compile=_as_bool("compile", chosen["compile"]),
        compile_mode=compile_mode,
        amp=_choice("amp", chosen["amp"], AMP_MODES),
        channels_last=_as_bool("channels_last", chosen["channels_last"]),
        kernels=chosen["kernels"],
        seed=_as_int("seed", seed, minimum=0),
        out=out if out is not None else _default_out(arch),
        workers=workers,
        label_smoothing=smoothing,
        log_every=_as_int("log_every", log_every, minimum=1),
    )


def check_model_flags(config: TrainConfig) -> dict[str, Any]:
    """Validate --arch / --model_kwargs / --kernels against the registry; return create_model kwargs."""
    from fastcifar.models import get_entry

    entry = get_entry(config.arch)  # unknown id: UserError listing the valid ones
    valid = entry.override_names()
    unknown = sorted(set(config.model_kwargs) - set(valid))
    if unknown:
        raise UserError(
            f"model {entry.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"valid --model_kwargs keys: {', '.join(valid) or '(none)'}."
        )
    kwargs = dict(config.model_kwargs)
    # --kernels only matters for models with SK / Triplet layers (the ones taking `impl`).
    if config.kernels is not None and "impl" in valid and "impl" not in kwargs:
        kwargs["impl"] = config.kernels
    return kwargs


# ------------------------------------------------------------------------------------------
# Run setup helpers


def resolve_device(requested: str | None, local_rank: int = 0):
    import torch

    if requested is None:
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {requested} was asked for but CUDA is not available here; use --device cpu.")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
        if device.index >= torch.cuda.device_count():
            raise UserError(f"--device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s).")
    return device


def ensure_dataset(config: TrainConfig, ctx) -> None:
    """Prepare the betons when missing (rank 0 only; the other ranks wait)."""
    from fastcifar import distributed
    # Imported from the module itself: the package attribute `prepare` is that module once loaded.
    from fastcifar.data.prepare import dataset_dir, prepare

    folder = Path(dataset_dir(config.data_root, config.dataset))
    missing = [name for name in ("train.beton", "test.beton", "meta.json") if not (folder / name).is_file()]
    if missing and ctx.is_main:
        print(f"{folder} lacks {', '.join(missing)}: preparing {config.dataset} first", flush=True)
        prepare(dataset=config.dataset, root=config.data_root)
    distributed.barrier(ctx)


class SeenRecorder:
    """Collects the labels and test-image fingerprints this rank sees (debugging aid, see SEEN_DIR_ENV)."""

    def __init__(self, folder: Path, rank: int) -> None:
        import torch

        self.path = Path(folder) / f"seen-rank{rank}.npz"
        self.records: dict[str, list] = {"train_labels": [], "test_labels": [], "test_fingerprints": []}
        # Random projection of each image: distinct images give distinct values (with probability 1).
        self._weights = torch.randn(3 * 32 * 32, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)

    def __call__(self, split: str, images, labels) -> None:
        self.records[f"{split}_labels"].append(labels.cpu().numpy())
        if split == "test":
            flat = images.detach().cpu().to(dtype=self._weights.dtype).reshape(images.shape[0], -1)
            self.records["test_fingerprints"].append((flat @ self._weights).numpy())

    def save(self) -> None:
        import numpy as np

        self.path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(self.path, **{k: np.concatenate(v) if v else np.zeros(0) for k, v in self.records.items()})


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train_loss {row['train_loss']:.4f}  test_loss {row['test_loss']:.4f}  "
        f"top1 {row['top1']:6.2f}%  top5 {row['top5']:6.2f}%  {row['images_per_s']:9.1f} img/s  "
        f"{row['epoch_seconds']:7.2f} s  lr {row['lr']:.2e}"
    )


# ------------------------------------------------------------------------------------------
# The run


def run(config: TrainConfig, resume_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train according to ``config`` (continuing ``resume_state`` when given); return the summary.

    The summary dict is the content of summary.json, or ``{"interrupted": True, ...}`` after Ctrl-C.
    """
    import numpy as np
    import torch

    from fastcifar import checkpoint as ckpt
    from fastcifar import distributed, engine
    from fastcifar.data.loaders import build_loader
    from fastcifar.data.prepare import load_meta
    from fastcifar.metrics import RunLogger, summarize
    from fastcifar.models import create_model

    model_kwargs = check_model_flags(config)
    device = resolve_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    ctx = distributed.setup(device.type)
    logger = None
    recorder = None
    try:
        if ctx.is_distributed and resume_state is None and config.out:
            # Ranks may have stamped different default folders: everyone uses rank 0's.
            shared = [config.out]
            torch.distributed.broadcast_object_list(shared, src=0)
            config = replace(config, out=shared[0])
        out = Path(config.out)
        ensure_dataset(config, ctx)
        meta = load_meta(config.data_root, config.dataset)

        loader_opts = dict(
            root=config.data_root, dataset=config.dataset, device=device, seed=config.seed,
            num_workers=config.workers, rank=ctx.rank, world_size=ctx.world_size,
            dtype=torch.float32, channels_last=config.channels_last,
        )
        train_loader = build_loader(config.loader, "train", batch_size=config.batch_size, **loader_opts)
        test_loader = build_loader(config.loader, "test", batch_size=config.eval_batch_size, **loader_opts)
        steps_per_epoch = len(train_loader)

        # Same seed, same initial weights on every rank (DDP also broadcasts rank 0's).
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        import random

        random.seed(config.seed)
        model = create_model(config.arch, num_classes=int(meta["num_classes"]), **model_kwargs)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model = model.to(device=device, memory_format=memory_format)
        settings = engine.StepSettings(
            device=device, amp=config.amp, channels_last=config.channels_last, label_smoothing=config.label_smoothing
        )
        optimizer, scheduler = engine.build_optimizer(
            model.parameters(), max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch, device=device
        )
        scaler = engine.build_scaler(settings)

        history: list[dict[str, Any]] = []
        start_epoch, skip_steps = 0, 0
        partial = {"loss_sum": 0.0, "samples": 0, "seconds": 0.0}
        rng_state = None
        if resume_state is not None:
            model.load_state_dict(resume_state["model"])
            optimizer.load_state_dict(resume_state["optimizer"])
            scheduler.load_state_dict(resume_state["scheduler"])
            scaler.load_state_dict(resume_state["scaler"])
            history = list(resume_state["history"])
            start_epoch, skip_steps = int(resume_state["epoch"]), int(resume_state["step"])
            partial = dict(resume_state["partial"])
            rng_state = resume_state["rng"]

        train_model = eval_model = model
        if config.compile:
            eval_model = torch.compile(model, mode=config.compile_mode)
            train_model = eval_model
        if ctx.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            train_model = DistributedDataParallel(train_model, device_ids=ids)

        logger = RunLogger(out, enabled=ctx.is_main)
        if resume_state is not None:
            logger.restart_from(history)
        seen_dir = os.environ.get(SEEN_DIR_ENV)
        recorder = SeenRecorder(Path(seen_dir), ctx.rank) if seen_dir else None
        # GradScaler skipping an fp16 step makes the scheduler step "before" the optimizer: expected.
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")

        if ctx.is_main:
            what = f"resuming {out} at epoch {start_epoch + 1}" + (f" step {skip_steps}" if skip_steps else "")
            print(
                f"{what if resume_state else 'training'}: {config.arch} on {config.dataset} ({train_loader.num_samples * ctx.world_size} "
                f"train images, {steps_per_epoch} steps/epoch), device {device}, loader {config.loader}, amp {config.amp}, "
                f"compile {config.compile}, channels_last {config.channels_last}, world_size {ctx.world_size}; out {out}",
                flush=True,
            )
        if ctx.is_main and device.type == "cpu" and config.amp == "bf16" and config.channels_last:
            print(
                "note: on CPU, bf16 + channels_last gives non-finite weight gradients for grouped dilated convs "
                "(SK layers) in current torch releases; if the loss becomes NaN, add --channels_last false",
                flush=True,
            )
        if rng_state is not None:  # last, after everything above that may draw random numbers
            ckpt.restore_rng_state(rng_state)

        def state(epoch: int, step: int, rng: dict[str, Any], partial_state: dict[str, Any]) -> dict[str, Any]:
            return {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng,
                "epoch": epoch,
                "step": step,
                "partial": partial_state,
                "history": history,
                "config": asdict(config),
            }

        checkpoint_file = ckpt.checkpoint_path(out)
        with engine.StopRequest(announce=ctx.is_main) as stop:
            for epoch in range(start_epoch, config.epochs):
                rng_at_start = ckpt.capture_rng_state()
                train_loader.set_epoch(epoch)
                description = f"epoch {epoch + 1}/{config.epochs}"
                try:
                    result = engine.train_one_epoch(
                        train_model, train_loader, optimizer, scheduler, scaler, settings,
                        ctx=ctx, stop=stop, skip_steps=skip_steps,
                        carried_loss_sum=partial["loss_sum"], carried_samples=partial["samples"],
                        log_every=config.log_every, description=description, batch_hook=recorder,
                    )
                except engine.NonFiniteLoss as err:
                    kept = (
                        f"the last good checkpoint (epoch {history[-1]['epoch']}) is kept at {checkpoint_file}"
                        if history and checkpoint_file.is_file() else "no checkpoint was written"
                    )
                    raise engine.NonFiniteLoss(
                        f"training loss became NaN/inf in {description}; {kept}; lower --lr or use --amp bf16 instead of fp16."
                    ) from err
                seconds_so_far = partial["seconds"] + result.seconds
                if result.interrupted:
                    if ctx.is_main:
                        partial_state = {"loss_sum": result.loss_sum, "samples": result.samples, "seconds": seconds_so_far}
                        ckpt.save_checkpoint(checkpoint_file, state(epoch, result.steps, rng_at_start, partial_state))
                        print(
                            f"interrupted in {description} after step {result.steps}/{steps_per_epoch}; checkpoint saved "
                            f"to {checkpoint_file}; continue with: python -m {PROG} --resume {out}",
                            flush=True,
                        )
                    return {"interrupted": True, "epoch": epoch, "step": result.steps, "checkpoint": str(checkpoint_file)}
                skip_steps = 0
                partial = {"loss_sum": 0.0, "samples": 0, "seconds": 0.0}

                distributed.broadcast_buffers(model, ctx)
                evaluation = engine.evaluate(
                    eval_model, test_loader, settings, ctx=ctx, pad_last_batch=config.compile, batch_hook=recorder
                )
                warmup = result.warmup_seconds + evaluation.warmup_seconds
                train_images = result.samples
                # Throughput leaves out the first step's excess over a steady step (compilation).
                timed_train = max(seconds_so_far - result.warmup_seconds, 1e-9)
                row = {
                    "epoch": epoch + 1,
                    "train_loss": result.loss,
                    "test_loss": evaluation.loss,
                    "top1": evaluation.top1,
                    "top5": evaluation.top5,
                    "images_per_s": train_images / timed_train,
                    "epoch_seconds": seconds_so_far + evaluation.seconds,
                    "lr": result.lr,
                    "train_seconds": seconds_so_far,
                    "eval_seconds": evaluation.seconds,
                    "train_images": train_images,
                    "warmup_seconds": warmup,
                    "compile_seconds": warmup if config.compile else 0.0,
                }
                history.append(row)
                if ctx.is_main:
                    ckpt.save_checkpoint(checkpoint_file, state(epoch + 1, 0, ckpt.capture_rng_state(), partial))
                    logger.log_epoch(row, history)
                    print(_epoch_line(row, config.epochs), flush=True)
                if stop.requested and epoch + 1 < config.epochs:
                    if ctx.is_main:
                        print(
                            f"interrupted after {description}; checkpoint saved to {checkpoint_file}; "
                            f"continue with: python -m {PROG} --resume {out}",
                            flush=True,
                        )
                    return {"interrupted": True, "epoch": epoch + 1, "step": 0, "checkpoint": str(checkpoint_file)}

        summary = summarize(history, asdict(config), {"world_size": ctx.world_size, "device": str(device)})
        logger.write_summary(summary)
        if ctx.is_main:
            print(
                f"done: final top1 {summary['final_top1']:.2f}% top5 {summary['final_top5']:.2f}%, best top1 "
                f"{summary['best_top1']:.2f}% (epoch {summary['best_top1_epoch']}), {summary['total_seconds']:.1f} s, "
                f"{summary['images_per_s']:.0f} img/s, compile {summary['compile_seconds']:.1f} s; {out}/summary.json",
                flush=True,
            )
        return summary
    finally:
        if recorder is not None:
            recorder.save()
        if logger is not None:
            logger.close()
        distributed.cleanup(ctx)


def train(
    arch: str = "sk_densenet",
    model_kwargs: dict | None = None,
    epochs: int = 30,
    batch_size: int = 256,
    lr: float = 0.01,
    loader: str | None = None,
    dataset: str = "cifar100",
    data_root: str = "data",
    device: str | None = None,
    compile: bool | None = None,
    compile_mode: str | None = None,
    amp: str | None = None,
    channels_last: bool | None = None,
    kernels: str | None = None,
    seed: int = 0,
    out: str | None = None,
    resume: str | bool | None = None,
    workers: int | None = None,
    label_smoothing: float = 0.0,
    eval_batch_size: int = 512,
    log_every: int = 25,
    fast: bool = False,
    baseline: bool = False,
) -> dict[str, Any]:
    """Train ``arch`` on ``dataset``; returns the summary (also written to ``<out>/summary.json``).

    Args:
        arch: model id (``python -m fastcifar.models`` lists them).
        model_kwargs: registry overrides, e.g. ``{"growth_rate": 12, "k": 4}``.
        epochs: number of epochs (the study: 30).
        batch_size: training batch per process (the study: 256).
        lr: OneCycle's max_lr (the study: 0.01).
        loader: ``gpu`` (default), ``ffcv`` or ``torch``.
        dataset: ``cifar100``, ``cifar10`` or ``synthetic``; missing betons are prepared first.
        data_root: folder holding ``<dataset>/{train,test}.beton``.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (default: cuda when available).
        compile: ``torch.compile`` the model.
        compile_mode: torch.compile's mode (default, reduce-overhead, max-autotune, ...).
        amp: ``bf16``, ``fp16`` (with GradScaler) or ``off``.
        channels_last: NHWC memory format for model and batches.
        kernels: ``triton`` or ``torch`` for the SK/Triplet layers (default: the model's choice).
        seed: weights, shuffle and augmentation seed.
        out: run folder (default ``runs/<arch>-<timestamp>``).
        resume: a run folder to continue (or ``--resume`` with ``--out``); its saved config is used, only --device, --workers and --log_every may change.
        workers: CPU workers of the ffcv/torch loaders.
        label_smoothing: cross-entropy label smoothing (the study: 0).
        eval_batch_size: test batch size (the study: 512).
        log_every: steps between progress-bar loss updates (each one a host sync).
        fast: preset: compile + channels_last + bf16 + gpu loader + Triton kernels.
        baseline: preset: the study's pipeline: eager fp32 NCHW + torch loader + PyTorch layers.
    """
    flags = dict(
        arch=arch, model_kwargs=model_kwargs, epochs=epochs, batch_size=batch_size, lr=lr, loader=loader,
        dataset=dataset, data_root=data_root, device=device, compile=compile, compile_mode=compile_mode,
        amp=amp, channels_last=channels_last, kernels=kernels, seed=seed, out=out, workers=workers,
        label_smoothing=label_smoothing, eval_batch_size=eval_batch_size, log_every=log_every,
        fast=fast, baseline=baseline,
    )
    if resume is None or resume is False:
        return run(resolve_config(**flags))
    if resume is True:
        if out is None:
            raise UserError("--resume without a folder needs --out RUN_FOLDER (or pass --resume RUN_FOLDER).")
        resume = out
    if not isinstance(resume, str):
        raise UserError(f"--resume takes a run folder, got {resume!r}.")
    if not (Path(resume) / "checkpoint.pt").is_file():  # checked before the (slow) torch import
        raise UserError(f"no checkpoint at {Path(resume) / 'checkpoint.pt'}: pass the folder of a run started by fastcifar.train")
    from fastcifar import checkpoint as ckpt

    state = ckpt.load_checkpoint(ckpt.checkpoint_path(resume))
    saved = TrainConfig(**state["config"])
    config = replace(
        saved, out=str(resume),
        device=resolve_config(device=device).device,
        workers=saved.workers if workers is None else _as_int("workers", workers, minimum=0),
        log_every=_as_int("log_every", log_every, minimum=1),
    )
    if int(state["epoch"]) >= config.epochs:
        raise UserError(f"the run in {resume} already finished all {config.epochs} epochs; start a new run.")
    return run(config, resume_state=state)


def _check_flag_names(argv: list[str]) -> None:
    """Reject unknown ``--flags`` before anything runs.

    fire would call ``train`` with the flags it knows and only then complain about the rest, i.e.
    after a whole training run; a typo must fail at once instead.
    """
    import inspect

    known = set(inspect.signature(train).parameters)
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--") or token in ("--help",):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name in known or (name.startswith("no") and name[2:] in known):
            continue
        raise UserError(f"unknown flag {token.split('=', 1)[0]}; valid flags: "
                        + ", ".join(f"--{n}" for n in sorted(known)) + ".")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m fastcifar.train --help``."""
    import functools

    args = sys.argv[1:] if argv is None else argv
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]

    @functools.wraps(train)
    def command(*positional: Any, **flags: Any) -> None:
        _check_flag_names(args)
        train(*positional, **flags)  # the summary is in <out>/summary.json; nothing for fire to print

    from fastcifar.cli import run_cli

    run_cli(command, PROG)


if __name__ == "__main__":
    main()
