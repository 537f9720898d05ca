"""``load_model(path)``: a trained model from a run folder, a checkpoint or an export, in eval mode.

Nothing in the file is run: a checkpoint goes through :func:`fastcifar.training.checkpoint.load_checkpoint`
(content hash, then ``torch.load(weights_only=True)``), an export through ``safetensors`` (tensors
only) plus its ``model.json`` (plain JSON). The model is rebuilt from the registry with the run's
architecture, overrides, class count and variant (memory format, kernel implementation), exactly as
the training built it, so its logits are the training's.

Which file a path means:

- a folder: its ``checkpoint.pt`` when it has one (a run folder), else its ``model.json`` (an export);
- ``*.json`` / ``*.safetensors``: an export (``model.json`` beside ``model.safetensors``);
- any other file: a checkpoint.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from fastcifar.errors import UserError

EXPORT_JSON = "model.json"
EXPORT_WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is and how its run evaluated it (everything ``model.json`` records).

    ``mean`` / ``std``: the per-channel normalisation the model expects on RGB images in [0, 1]
    (the loaders apply it). ``variant``: :meth:`fastcifar.training.variant.Variant.describe` of the
    run (compile, channels_last, amp, kernels). ``dataset`` / ``loader`` / ``eval_batch_size`` /
    ``data_root``: the run's test set and how it was read (``data_root`` None for an export).
    ``top1`` / ``top5``: the run's last-epoch test figures (%). ``kind``: ``checkpoint`` or ``export``.
    ``classes`` / ``superclasses``: names from the data set's meta.json (None / [] when unknown).
    """

    arch: str
    model_kwargs: dict[str, Any]
    num_classes: int
    classes: list[str] | None
    mean: list[float]
    std: list[float]
    variant: dict[str, Any]
    dataset: str
    loader: str
    eval_batch_size: int
    epochs: int
    top1: float | None
    top5: float | None
    source: str
    kind: str
    data_root: str | None = None
    version: str = ""
    superclasses: list[str] = field(default_factory=list)
    compile_cache: str | None = None  # the run's --compile_cache (a checkpoint's only: a local folder)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class LoadedModel(NamedTuple):
    """``model, info = load_model(path)``: the module (eval mode, on its device) and its metadata."""

    model: Any  # torch.nn.Module
    info: ModelInfo


def _normalisation() -> tuple[list[float], list[float]]:
    from fastcifar.augment import IMAGENET_MEAN, IMAGENET_STD

    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def _class_names(data_root: str, dataset: str) -> tuple[list[str] | None, list[str]]:
    """Class and superclass names from the data set's meta.json; (None, []) when it is not there."""
    from fastcifar.data.prepare import load_meta

    try:
        meta = load_meta(data_root, dataset)
    except UserError:
        return None, []
    return list(meta["classes"]), list(meta["superclasses"])


def _run_figures(folder: Path, history: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    """The run's last-epoch top-1 / top-5: summary.json's, else the checkpoint history's last row."""
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            data = json.loads(summary.read_text())
            return float(data["final_top1"]), float(data["final_top5"])
        except (ValueError, KeyError, TypeError):
            pass
    if history:
        return float(history[-1]["top1"]), float(history[-1]["top5"])
    return None, None


def checkpoint_info(state: dict[str, Any], path: Path) -> ModelInfo:
    """The :class:`ModelInfo` of a loaded checkpoint ``state`` read from ``path``; UserError if it is not a run's."""
    import fastcifar
    from fastcifar.training.config import TrainConfig, config_fields

    saved = state.get("config")
    names = {spec.name for spec in config_fields()}
    if not isinstance(saved, dict) or not set(saved) <= names or "model" not in state:
        raise UserError(f"{path} is a fastcifar checkpoint without a model and its run's config; it cannot be loaded")
    config = TrainConfig(**saved)
    num_classes = int(state.get("num_classes", 100))
    classes, superclasses = _class_names(config.data_root, config.dataset)
    if classes is not None and len(classes) != num_classes:
        classes, superclasses = None, []
    top1, top5 = _run_figures(path.parent, list(state.get("history", [])))
    mean, std = _normalisation()
    return ModelInfo(
        arch=config.arch,
        model_kwargs=dict(config.model_kwargs),
        num_classes=num_classes,
        classes=classes,
        mean=mean,
        std=std,
        variant=config.variant.describe(),
        dataset=config.dataset,
        loader=config.loader,
        eval_batch_size=config.eval_batch_size,
        epochs=int(state.get("epoch", 0)),
        top1=top1,
        top5=top5,
        source=str(path),
        kind="checkpoint",
        data_root=config.data_root,
        version=fastcifar.__version__,
        superclasses=superclasses,
        compile_cache=config.compile_cache,
    )


def build_model(info: ModelInfo, weights: dict[str, Any], device: Any) -> Any:
    """The registry model ``info`` describes on ``device``, with ``weights`` (strict), in eval mode.

    Built as the training built it (:func:`fastcifar.training.variant.build_model`: the variant's
    memory format and kernels), uncompiled; UserError when the weights do not fit.
    """
    from fastcifar.training.variant import Variant
    from fastcifar.training.variant import build_model as build_variant_model

    try:
        variant = Variant(**info.variant)
        model = build_variant_model(info.arch, info.model_kwargs, variant, device, num_classes=info.num_classes)
    except (TypeError, ValueError) as err:
        raise UserError(f"{info.source} describes a model that cannot be built: {str(err).splitlines()[0]}") from None
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, KeyError, TypeError) as err:
        raise UserError(
            f"the weights in {info.source} do not fit {info.arch} with {info.model_kwargs or 'no overrides'} "
            f"({str(err).splitlines()[0][:160]})"
        ) from None
    return model.eval()


def resolve(path: str | os.PathLike) -> tuple[str, Path]:
    """(``"checkpoint"`` or ``"export"``, the file to read) for ``path``; UserError when there is none."""
    from fastcifar.training.checkpoint import CHECKPOINT_NAME

    given = Path(path).expanduser()
    if given.is_dir():
        if (given / CHECKPOINT_NAME).is_file():
            return "checkpoint", given / CHECKPOINT_NAME
        if (given / EXPORT_JSON).is_file():
            return "export", given / EXPORT_JSON
        raise UserError(
            f"{given} is not a run folder (no {CHECKPOINT_NAME}) nor an export (no {EXPORT_JSON}); "
            "pass the folder of a run of fastcifar.train, its checkpoint or its model.json"
        )
    if not given.is_file():
        raise UserError(f"{given} does not exist; pass a run folder, a checkpoint or a model.json")
    if given.suffix == ".safetensors":
        return "export", given.with_name(EXPORT_JSON)
    if given.suffix == ".json":
        return "export", given
    return "checkpoint", given


def load_model(path: str | os.PathLike, device: Any = None) -> LoadedModel:
    """Load a trained model: ``model, info = fastcifar.load_model("runs/sk_densenet-...")``.

    Args:
        path: a run folder, a ``checkpoint.pt``, or an export (its folder, ``model.json`` or
            ``model.safetensors``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device``, or None (CUDA when available).
    Returns:
        :class:`LoadedModel`: the ``torch.nn.Module`` in eval mode on ``device`` (inputs: float
        ``(N, 3, 32, 32)`` RGB in [0, 1] normalised with ``info.mean`` / ``info.std``; outputs:
        logits ``(N, info.num_classes)``), and its :class:`ModelInfo`.
    Raises:
        UserError: not a run / checkpoint / export, a damaged or foreign file, weights that do not
            fit their description.
    """
    from fastcifar.training import checkpoint as ckpt
    from fastcifar.training.variant import resolve_device

    kind, file = resolve(path)
    target = resolve_device(device)
    if kind == "export":
        from fastcifar.evaluation.export import read_export

        info, weights = read_export(file)
    else:
        state = ckpt.load_checkpoint(file)
        info, weights = checkpoint_info(state, file), state["model"]
    return LoadedModel(build_model(info, weights, target), info)
