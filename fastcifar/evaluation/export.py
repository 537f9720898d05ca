"""A run's model as ``model.safetensors`` (weights only) + ``model.json`` (what the weights are).

``model.json`` holds the architecture and its overrides, the class count and names, the input
normalisation (mean/std), the run's variant and last-epoch top-1/top-5, the fastcifar version, and
the BLAKE2b hash of ``model.safetensors``: a pair that does not belong together is refused on
load. Both are written atomically, the weights first, so a folder with a ``model.json`` always
has the weights it describes. Every finished run writes them (:func:`export_run` from the run's
finish); ``python -m fastcifar.export RUN`` does it for runs that finished before.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fastcifar.atomic import write_bytes_atomic, write_json_atomic
from fastcifar.errors import UserError
from fastcifar.evaluation.loading import EXPORT_JSON, EXPORT_WEIGHTS, ModelInfo
from fastcifar.locks import hold_folder

FORMAT = "fastcifar-model"
FORMAT_VERSION = 1
EXPORT_FILES = (EXPORT_WEIGHTS, EXPORT_JSON)
_HASH = "blake2b"


def _digest(data: bytes) -> str:
    return f"{_HASH}:{hashlib.blake2b(data, digest_size=32).hexdigest()}"


def encode_weights(state_dict: dict[str, Any]) -> bytes:
    """``state_dict`` as safetensors bytes: each tensor on the CPU, contiguous, in its own storage.

    (safetensors stores dense row-major tensors: channels_last weights are made contiguous; the
    values are the same, and loading copies them back into the model's own layout.)
    """
    from safetensors.torch import save

    tensors = {name: value.detach().cpu().contiguous().clone() for name, value in state_dict.items()}
    return save(tensors, metadata={"format": "pt"})


def model_json(info: ModelInfo, weights: bytes) -> dict[str, Any]:
    """The content of ``model.json`` for ``info`` and the bytes of ``model.safetensors``."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": info.arch,
        "model_kwargs": info.model_kwargs,
        "num_classes": info.num_classes,
        "classes": info.classes,
        "superclasses": info.superclasses,
        "normalization": {"mean": info.mean, "std": info.std, "input": "RGB (N, 3, 32, 32) in [0, 1]"},
        "variant": info.variant,
        "run": {
            "dataset": info.dataset,
            "loader": info.loader,
            "eval_batch_size": info.eval_batch_size,
            "epochs": info.epochs,
            "top1": info.top1,
            "top5": info.top5,
        },
        "weights": {"file": EXPORT_WEIGHTS, "hash": _digest(weights)},
        "fastcifar_version": info.version,
    }


def export_run(run: str | os.PathLike, *, quiet: bool = False) -> Path:
    """Write ``<run>/model.safetensors`` and ``<run>/model.json`` from the run's checkpoint; return model.json.

    Content depends only on the checkpoint (and the data set's class names), so writing it again
    gives the same bytes. Needs the class names (the data set's meta.json) for ``classes``;
    without them ``classes`` is null.
    """
    from fastcifar.evaluation.loading import checkpoint_info
    from fastcifar.training import checkpoint as ckpt

    folder = Path(run).expanduser()
    file = ckpt.checkpoint_path(folder)
    if not folder.is_dir() or not file.is_file():
        raise UserError(f"{folder} is not a run folder (no {ckpt.CHECKPOINT_NAME}); pass the folder of a finished run")
    # One writer per run folder: a training still running there is refused (its own finish, which
    # already holds the folder, comes here as a nested hold).
    with hold_folder(folder, "fastcifar.export"):
        state = ckpt.load_checkpoint(file)
        info = checkpoint_info(state, file)
        weights = encode_weights(state["model"])
        write_bytes_atomic(folder / EXPORT_WEIGHTS, weights)
        write_json_atomic(folder / EXPORT_JSON, model_json(info, weights))
    if not quiet:
        print(f"exported {folder / EXPORT_WEIGHTS} and {folder / EXPORT_JSON}", flush=True)
    return folder / EXPORT_JSON


# model.json's keys the loader relies on, with their types.
_TYPES: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "arch": str,
    "model_kwargs": dict,
    "num_classes": int,
    "classes": (list, type(None)),
    "normalization": dict,
    "variant": dict,
    "run": dict,
    "weights": dict,
    "fastcifar_version": str,
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; an export is model.json beside model.safetensors") from None
    except (OSError, ValueError) as err:
        raise UserError(f"{path} is not a readable model.json ({str(err).splitlines()[0][:120]})") from None
    problem = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        problem = "it is not a fastcifar model description"
    elif data.get("format_version") != FORMAT_VERSION:
        problem = f"format version {data.get('format_version')!r}, this version reads {FORMAT_VERSION}"
    else:
        for key, kind in _TYPES.items():
            if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
                problem = f"{key!r} is missing or not of the right type"
                break
    if problem:
        raise UserError(f"{path} cannot be loaded: {problem}; export the run again (python -m fastcifar.export RUN)")
    return data


def read_export(path: str | os.PathLike) -> tuple[ModelInfo, dict[str, Any]]:
    """(:class:`ModelInfo`, weights) of the export whose ``model.json`` is ``path``.

    The weights file must hash to what model.json records (else they are not the weights it
    describes); it is parsed by safetensors, which reads tensors only.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    data = _read_json(path)
    weights_path = path.with_name(str(data["weights"].get("file", EXPORT_WEIGHTS)))
    try:
        raw = weights_path.read_bytes()
    except OSError as err:
        raise UserError(
            f"cannot read {weights_path}, the weights {path.name} describes: {err.strerror or err}"
        ) from None
    if _digest(raw) != data["weights"].get("hash"):
        raise UserError(
            f"{weights_path} does not match {path} (its content hash differs from the one recorded there): "
            "they come from different exports; export the run again (python -m fastcifar.export RUN)"
        )
    try:
        weights = load(raw)
    except (SafetensorError, ValueError) as err:
        raise UserError(f"{weights_path} is not a safetensors file ({str(err).splitlines()[0][:120]})") from None
    run, norm = data["run"], data["normalization"]
    info = ModelInfo(
        arch=data["arch"],
        model_kwargs=data["model_kwargs"],
        num_classes=data["num_classes"],
        classes=data["classes"],
        mean=list(norm.get("mean", [])),
        std=list(norm.get("std", [])),
        variant=data["variant"],
        dataset=str(run.get("dataset", "cifar100")),
        loader=str(run.get("loader", "gpu")),
        eval_batch_size=int(run.get("eval_batch_size", 512)),
        epochs=int(run.get("epochs", 0)),
        top1=run.get("top1"),
        top5=run.get("top5"),
        source=str(path),
        kind="export",
        version=data["fastcifar_version"],
        superclasses=list(data.get("superclasses") or []),
    )
    if info.classes is not None and len(info.classes) != info.num_classes:
        raise UserError(f"{path} names {len(info.classes)} classes for a {info.num_classes}-class model")
    return info, weights
