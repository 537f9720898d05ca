"""Deterministic synthetic CIFAR-like data: in-memory arrays and archives in the official format.

Each class has a fixed look (two colours and a sinusoidal grating of its own orientation and
frequency); each image varies it with a random phase, brightness and pixel noise. The class looks
depend only on ``num_classes`` (never on ``seed``), so a train set and a test set generated with
different seeds share their classes and a model can learn something from one and test on the other.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from fastcifar.data.archive import SPECS, md5sum
from fastcifar.errors import UserError

NUM_SUPERCLASSES = 20
# Fixed seed of the class looks: independent of the per-image ``seed`` on purpose (module doc).
_CLASS_LOOK_SEED = 20261128
# Images are generated in chunks to bound memory (float32 work arrays of 4096 images ~ 50 MB).
_CHUNK = 4096


def coarse_of(fine: np.ndarray, num_classes: int) -> np.ndarray:
    """Superclass of each fine label: 20 equal groups of consecutive classes, or all 0 below 20 classes.

    Shapes: ``fine`` (N,) int -> (N,) int64.
    """
    fine = np.asarray(fine, dtype=np.int64)
    if num_classes < NUM_SUPERCLASSES:
        return np.zeros_like(fine)
    return fine * NUM_SUPERCLASSES // num_classes


def _class_looks(num_classes: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([_CLASS_LOOK_SEED, num_classes])
    return {
        "colour_a": rng.uniform(30, 225, size=(num_classes, 3)).astype(np.float32),
        "colour_b": rng.uniform(30, 225, size=(num_classes, 3)).astype(np.float32),
        "angle": rng.uniform(0, np.pi, size=num_classes).astype(np.float32),
        "cycles": rng.uniform(1.0, 4.0, size=num_classes).astype(np.float32),
    }


def make_arrays(
    n: int, num_classes: int = 100, seed: int = 0, stream: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate ``n`` synthetic images with balanced, shuffled labels.

    Args:
        n: number of images (>= 0).
        num_classes: number of fine classes (>= 1).
        seed: seed of the per-image randomness (labels, phase, brightness, noise).
        stream: independent stream for the same seed (e.g. 0 = train, 1 = test).

    Returns:
        images (N, 32, 32, 3) uint8 RGB, fine labels (N,) int64 in [0, num_classes),
        coarse labels (N,) int64 (see :func:`coarse_of`). Same arguments -> same arrays.
    """
    if n < 0 or num_classes < 1:
        raise UserError(f"need n >= 0 and num_classes >= 1, got n={n}, num_classes={num_classes}")
    rng = np.random.default_rng([seed, stream])
    fine = rng.permutation(np.arange(n, dtype=np.int64) % num_classes)
    looks = _class_looks(num_classes)
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    ys, xs = np.meshgrid(np.arange(32, dtype=np.float32), np.arange(32, dtype=np.float32), indexing="ij")
    for start in range(0, n, _CHUNK):
        labels = fine[start : start + _CHUNK]
        m = len(labels)
        angle = looks["angle"][labels][:, None, None]
        cycles = looks["cycles"][labels][:, None, None]
        phase = rng.uniform(0, 2 * np.pi, size=(m, 1, 1)).astype(np.float32)
        along = xs * np.cos(angle) + ys * np.sin(angle)  # (m, 32, 32)
        mix = 0.5 + 0.5 * np.sin(2 * np.pi * cycles * along / 32 + phase)
        mix = mix[..., None]  # (m, 32, 32, 1)
        colour_a = looks["colour_a"][labels][:, None, None, :]
        colour_b = looks["colour_b"][labels][:, None, None, :]
        brightness = rng.uniform(0.8, 1.2, size=(m, 1, 1, 1)).astype(np.float32)
        noise = rng.normal(0, 16, size=(m, 32, 32, 3)).astype(np.float32)
        pixels = (colour_a * (1 - mix) + colour_b * mix) * brightness + noise
        images[start : start + m] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return images, fine, coarse_of(fine, num_classes)


def class_names(num_classes: int) -> list[str]:
    """Names of the synthetic fine classes: ``synthetic_class_000`` ..."""
    return [f"synthetic_class_{i:03d}" for i in range(num_classes)]


def superclass_names(num_classes: int) -> list[str]:
    """Names of the synthetic superclasses (none below 20 classes)."""
    if num_classes < NUM_SUPERCLASSES:
        return []
    return [f"synthetic_superclass_{i:02d}" for i in range(NUM_SUPERCLASSES)]


def _batch_dict(images: np.ndarray, fine: np.ndarray, coarse: np.ndarray, batch_label: str, cifar10: bool) -> dict:
    """One pickled split as the originals hold it: bytes keys, (N, 3072) rows of R, G, B planes."""
    data = np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)
    record: dict = {
        b"batch_label": batch_label.encode(),
        b"filenames": [f"synthetic_{batch_label.replace(' ', '_')}_{i:06d}.png".encode() for i in range(len(images))],
        b"data": data,
    }
    if cifar10:
        record[b"labels"] = [int(v) for v in fine]
    else:
        record[b"fine_labels"] = [int(v) for v in fine]
        record[b"coarse_labels"] = [int(v) for v in coarse]
    return record


def _add_pickle(tar: tarfile.TarFile, name: str, obj: object) -> None:
    # Protocol 2 is what the original (Python 2) pickles use.
    payload = pickle.dumps(obj, protocol=2)
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def write_archive(path: str | os.PathLike, n_train: int, n_test: int, seed: int = 0, dataset: str = "cifar100") -> str:
    """Write a synthetic ``.tar.gz`` laid out exactly as the official CIFAR archive of ``dataset``.

    cifar100: ``cifar-100-python/{train,test,meta}`` with fine and coarse labels (100 classes);
    cifar10: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (10 classes).
    Train images come from ``make_arrays(n_train, C, seed, stream=0)``, test images from
    ``make_arrays(n_test, C, seed, stream=1)``. Written under a temporary name, then renamed;
    the bytes depend only on the arguments (so does the md5).

    Returns:
        the md5 hex digest of the written archive.
    """
    if dataset not in SPECS:
        raise UserError(f"unknown dataset {dataset!r} for a synthetic archive; choose one of {sorted(SPECS)}")
    spec = SPECS[dataset]
    cifar10 = dataset == "cifar10"
    train = make_arrays(n_train, spec.num_classes, seed, stream=0)
    test = make_arrays(n_test, spec.num_classes, seed, stream=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # gzip with a zero timestamp and tar members with mtime 0: the same arguments give the same bytes.
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar,
        ):
            folder = spec.folder
            dir_info = tarfile.TarInfo(folder)
            dir_info.type = tarfile.DIRTYPE
            dir_info.mode = 0o755
            tar.addfile(dir_info)
            if cifar10:
                # Five training batches as in the original; the last takes the remainder.
                bounds = np.linspace(0, n_train, 6).astype(int)
                for b in range(5):
                    part = slice(bounds[b], bounds[b + 1])
                    record = _batch_dict(*(a[part] for a in train), f"training batch {b + 1} of 5", True)
                    _add_pickle(tar, f"{folder}/data_batch_{b + 1}", record)
                _add_pickle(tar, f"{folder}/test_batch", _batch_dict(*test, "testing batch 1 of 1", True))
                meta = {
                    b"label_names": [n.encode() for n in class_names(10)],
                    b"num_cases_per_batch": int(bounds[1] - bounds[0]),
                    b"num_vis": 3072,
                }
                _add_pickle(tar, f"{folder}/batches.meta", meta)
            else:
                _add_pickle(tar, f"{folder}/train", _batch_dict(*train, "training batch 1 of 1", False))
                _add_pickle(tar, f"{folder}/test", _batch_dict(*test, "testing batch 1 of 1", False))
                meta = {
                    b"fine_label_names": [n.encode() for n in class_names(100)],
                    b"coarse_label_names": [n.encode() for n in superclass_names(100)],
                }
                _add_pickle(tar, f"{folder}/meta", meta)
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return md5sum(path)
