"""The test set's logits, computed the way the training evaluated after every epoch.

:func:`predict` runs :func:`fastcifar.training.engine.evaluate` (the training's own evaluation:
its loss, top-1 and top-5, padding of the last batch for compiled models, autocast, memory format)
over the run's test loader and keeps every batch's logits. Without TTA its figures are therefore
the run's last-epoch figures. ``tta="flip"`` averages the logits of each image and its horizontal
mirror (as airbench does); it is deterministic (no random draw).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fastcifar.errors import UserError
from fastcifar.evaluation.loading import LoadedModel
from fastcifar.training import engine
from fastcifar.training.variant import Variant

TTA_MODES = ("none", "flip")


class FlipAveraged(nn.Module):
    """``(model(x) + model(flip(x))) / 2`` in float32: test-time augmentation by horizontal mirror.

    ``x``: ``(N, 3, H, W)``; the mirror flips the width axis and keeps ``x``'s memory format.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        mirrored = images.flip(3)
        if images.is_contiguous(memory_format=torch.channels_last):
            mirrored = mirrored.contiguous(memory_format=torch.channels_last)
        return (self.model(images).float() + self.model(mirrored).float()) / 2


@dataclass
class Predictions:
    """Logits ``(N, C)`` float32 and labels ``(N,)`` int64 on the CPU, with the engine's figures."""

    logits: torch.Tensor
    labels: torch.Tensor
    result: engine.EvalResult


@dataclass
class TestSet:
    """A prepared test split: its loader, meta.json and the superclass of each class (None: none)."""

    loader: Any
    meta: dict[str, Any]
    fine_to_coarse: np.ndarray | None  # (C,) int64, -1 for a class found in neither beton
    data_root: str
    dataset: str


def superclass_map(root: str | Path, dataset: str, meta: dict[str, Any]) -> np.ndarray | None:
    """The superclass of each class, read from both betons' label fields (no image is decoded).

    None when the data set has no superclasses (meta.json names none) or its labels do not give
    every class one superclass. A class that occurs in neither beton maps to -1 (the train beton
    is read when present: a test set of few images may lack classes).
    """
    from fastcifar.data.beton import open_checked
    from fastcifar.data.prepare import dataset_dir

    if not meta["superclasses"]:
        return None
    mapping = np.full(int(meta["num_classes"]), -1, dtype=np.int64)
    for name in ("train.beton", "test.beton"):
        path = dataset_dir(root, dataset) / name
        if name == "train.beton" and not path.is_file():
            continue  # a folder holding the test split only: its classes are enough
        reader = open_checked(path)
        fine = np.asarray(reader.metadata["f1"], dtype=np.int64).reshape(-1)
        coarse = np.asarray(reader.metadata["f2"], dtype=np.int64).reshape(-1)
        seen = mapping[fine] >= 0
        if np.any(mapping[fine[seen]] != coarse[seen]):
            return None
        mapping[fine] = coarse
        # Within one beton a class could carry two superclasses: checked after the assignment.
        if np.any(mapping[fine] != coarse):
            return None
    return mapping


def open_test_set(
    loaded: LoadedModel,
    device: torch.device,
    *,
    data_root: str | None = None,
    dataset: str | None = None,
    batch_size: int | None = None,
) -> TestSet:
    """The test loader the run used (kind, batch size, layout), on ``data_root`` / ``dataset`` when given.

    UserError when the data set is missing or damaged, or its class count is not the model's.
    """
    from fastcifar.data import DATASETS
    from fastcifar.data.loaders import build_loader
    from fastcifar.data.prepare import load_meta

    info = loaded.info
    dataset = dataset or info.dataset
    if dataset not in DATASETS:
        raise UserError(f"unknown --dataset {dataset!r}; choose one of: {', '.join(DATASETS)}.")
    data_root = str(Path(data_root or info.data_root or "data").expanduser())
    meta = load_meta(data_root, dataset)
    if int(meta["num_classes"]) != info.num_classes:
        raise UserError(
            f"the model has {info.num_classes} classes but {dataset} in {data_root} has {meta['num_classes']}; "
            "evaluate it on a data set with the classes it was trained on (--dataset, --data_root)"
        )
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise UserError(f"--batch_size must be a whole number >= 1, got {batch_size!r}.")
    variant = Variant(**info.variant)
    loader = build_loader(
        info.loader,
        "test",
        root=data_root,
        dataset=dataset,
        batch_size=batch_size or info.eval_batch_size,
        device=device,
        dtype=torch.float32,
        channels_last=variant.channels_last,
    )
    return TestSet(loader, meta, superclass_map(data_root, dataset, meta), data_root, dataset)


def predict(
    model: nn.Module, variant: Variant, test_set: TestSet, device: torch.device, tta: str = "none"
) -> Predictions:
    """Every test image's logits through :func:`fastcifar.training.engine.evaluate`, with a progress bar.

    ``model``: the plain module (eval mode, on ``device``); it is wrapped as the run wrapped its
    evaluation model (compiled when the run compiled) and, for ``tta="flip"``, mirror-averaged.
    """
    if tta not in TTA_MODES:
        raise UserError(f"unknown --tta {tta!r}; choose one of: {', '.join(TTA_MODES)}.")
    forward = variant.wrap(model)
    if tta == "flip":
        forward = FlipAveraged(forward)
    settings = engine.StepSettings.for_variant(variant, device)
    chunks: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []

    def keep(logits: torch.Tensor, batch_labels: torch.Tensor) -> None:
        chunks.append(logits.detach().clone())  # a CUDA-graph replay may reuse the output memory
        labels.append(batch_labels.detach().clone())

    batches = tqdm(
        test_set.loader,
        total=len(test_set.loader),
        desc=f"test set{' (flip TTA)' if tta == 'flip' else ''}",
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
    )
    result = engine.evaluate(forward, batches, settings, pad_last_batch=variant.compile, logits_hook=keep)
    return Predictions(torch.cat(chunks).cpu(), torch.cat(labels).cpu(), result)
