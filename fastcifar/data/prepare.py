"""Turn a CIFAR archive (downloaded, given, already extracted, or synthetic) into FFCV betons.

Layout under ``root``::

    <root>/downloads/<official archive>        kept so a later prepare needs no network
    <root>/<dataset>/train.beton, test.beton   fields image (raw 32x32x3 uint8), label, coarse_label
    <root>/<dataset>/meta.json                 names, counts, mean/std, source checksum, fingerprint

A run whose inputs match the fingerprint in ``meta.json`` (and whose betons are present with the
recorded sizes) does nothing. ``meta.json`` is removed before a beton is replaced and written last,
so a run cut short never leaves a folder that looks prepared. One prepare at a time writes a data
root: it holds ``<root>/.lock`` (:mod:`fastcifar.locks`) and a second one is refused. ``meta.json`` records a content hash
of each beton (:mod:`fastcifar.data.integrity`), checked before a prepared folder is trusted.
Temporary files a killed run left behind are removed by the next run (:mod:`fastcifar.atomic`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shlex
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from fastcifar.atomic import locked_tempdir, remove_stale, write_json_atomic
from fastcifar.data import DATASETS, expand_root, integrity
from fastcifar.data import archive as archives
from fastcifar.data.beton import PAGE_SIZE, ffcv_version, write_beton
from fastcifar.errors import UserError
from fastcifar.locks import hold_folder

SYNTHETIC_DEFAULT_SIZES = (5000, 1000)  # train, test
# Bumped when the betons or meta.json change shape, so older folders get prepared again.
# 2: meta.json gained ``hashes`` (content hash of each beton).
FORMAT_VERSION = 2
BETONS = ("train.beton", "test.beton")
_IMAGE_BYTES = 32 * 32 * 3
_DISK_MARGIN = 32 << 20


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise UserError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def dataset_dir(root: str | os.PathLike, dataset: str) -> Path:
    """The folder ``<root>/<dataset>/`` that holds a prepared dataset's betons and meta.json (``~`` expanded)."""
    _check_dataset(dataset)
    return expand_root(root) / dataset


def prepare_command(root: str | os.PathLike, dataset: str, source: dict[str, Any] | None = None) -> str:
    """The shell command that (re)builds ``<root>/<dataset>``; synthetic sizes and seed from ``source``."""
    words = ["python", "-m", "fastcifar.data", "prepare", "--dataset", dataset, "--root", str(root)]
    if dataset == "synthetic" and source:
        for flag in ("n_train", "n_test", "seed"):
            if flag in source:
                words += [f"--{flag}", str(source[flag])]
    return " ".join(shlex.quote(w) for w in words)


# meta.json's keys that code relies on, with their types (bool is refused where int is expected).
_META_TYPES: dict[str, type] = {
    "dataset": str,
    "synthetic": bool,
    "num_classes": int,
    "classes": list,
    "superclasses": list,
    "counts": dict,
    "mean": list,
    "std": list,
    "source": dict,
    "files": dict,
    "hashes": dict,
    "fingerprint": str,
    "format_version": int,
}


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a parsed meta.json, or None."""
    if not isinstance(meta, dict):
        return f"it holds a {type(meta).__name__}, not an object"
    for key, kind in _META_TYPES.items():
        if key not in meta:
            return f"the key {key!r} is missing"
        value = meta[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return f"{key!r} is {value!r}, not of type {kind.__name__}"
    if meta["format_version"] != FORMAT_VERSION:
        return f"it has format version {meta['format_version']}, this version of fastcifar writes {FORMAT_VERSION}"
    if meta["num_classes"] < 1 or len(meta["classes"]) != meta["num_classes"]:
        return f"num_classes {meta['num_classes']} does not match the {len(meta['classes'])} class names"
    for split in ("train", "test"):
        count = meta["counts"].get(split)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return f"counts[{split!r}] is {count!r}, not a count"
    for key in ("mean", "std"):
        if len(meta[key]) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in meta[key]):
            return f"{key!r} is {meta[key]!r}, not three numbers"
    for name in BETONS:
        size, digest = meta["files"].get(name), meta["hashes"].get(name)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            return f"files[{name!r}] is {size!r}, not a size in bytes"
        if not isinstance(digest, str) or not digest.startswith(f"{integrity.HASH_NAME}:"):
            return f"hashes[{name!r}] is {digest!r}, not a {integrity.HASH_NAME} digest"
    return None


def _read_meta(path: Path) -> dict[str, Any]:
    """Parse and check ``path``; a UserError of one line says what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is damaged (not UTF-8 text)") from None
    except OSError as err:
        raise UserError(f"{path} is unreadable ({err.strerror or err})") from None
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise UserError(f"{path} is damaged ({'empty' if not text.strip() else f'not JSON: {err}'})") from None
    problem = _meta_problem(meta)
    if problem:
        raise UserError(f"{path} is damaged or from another version ({problem})")
    return meta


def load_meta(root: str | os.PathLike, dataset: str) -> dict[str, Any]:
    """The parsed and checked ``meta.json`` of a prepared dataset; UserError (one line) otherwise."""
    path = dataset_dir(root, dataset) / "meta.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist; run `{prepare_command(root, dataset)}` first")
    try:
        meta = _read_meta(path)
    except UserError as err:
        command = prepare_command(root, dataset)
        raise UserError(f"{err}; run `{command}` (with the flags it was prepared with) again") from None
    if meta["dataset"] != dataset:  # a folder copied or renamed into place: never train on the wrong data
        raise UserError(
            f"{path} describes the data set {meta['dataset']!r}, not {dataset!r}; "
            f"pass --dataset {meta['dataset']} or run `{prepare_command(root, dataset)}`"
        )
    return meta


def data_identity(meta: dict[str, Any]) -> dict[str, Any]:
    """What identifies a prepared data set (recorded in every checkpoint): its name, image counts, the
    betons' content hashes and sizes. Equal identities mean the same images in the same order."""
    return {
        "dataset": meta["dataset"],
        "counts": dict(meta["counts"]),
        "hashes": dict(meta["hashes"]),
        "files": dict(meta["files"]),
    }


def verify_beton(root: str | os.PathLike, dataset: str, name: str, meta: dict[str, Any]) -> Path:
    """Check ``<root>/<dataset>/<name>`` against the content hash in ``meta``; returns its path.

    Cached (see :mod:`fastcifar.data.integrity`): the second check of an unchanged file is free.
    """
    path = dataset_dir(root, dataset) / name
    integrity.verify(path, meta["hashes"][name], prepare_command(root, dataset, meta["source"]))
    return path


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std in the 0..1 scale of (N, H, W, 3) uint8 images.

    Sums are accumulated in exact integers, so the result does not depend on chunking or order.
    """
    n = images.shape[0] * images.shape[1] * images.shape[2]
    if n == 0:
        return [0.0] * 3, [0.0] * 3
    total = np.zeros(3, dtype=np.int64)
    total_sq = np.zeros(3, dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].reshape(-1, 3).astype(np.int64)
        total += block.sum(axis=0)
        total_sq += (block * block).sum(axis=0)
    mean = [int(s) / n / 255 for s in total]
    # n*sum(x^2) - sum(x)^2 in Python integers: exact, no cancellation error.
    var = [(n * int(q) - int(s) ** 2) / n**2 for s, q in zip(total, total_sq)]
    std = [float(np.sqrt(v)) / 255 for v in var]
    return mean, std


def _fingerprint(inputs: dict[str, Any]) -> str:
    text = json.dumps({"format_version": FORMAT_VERSION, **inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _is_prepared(root: Path, dataset: str, fingerprint: str) -> bool:
    """Whether ``<root>/<dataset>`` was prepared from the same inputs and its betons are intact.

    A damaged meta.json or beton is not an error here (this run rebuilds it): it is said and
    answered False.
    """
    out = dataset_dir(root, dataset)
    if not (out / "meta.json").is_file():
        return False
    try:
        meta = _read_meta(out / "meta.json")
        if meta["fingerprint"] != fingerprint:
            return False
        if not all((out / name).is_file() and (out / name).stat().st_size == meta["files"][name] for name in BETONS):
            print(f"{out} is incomplete; preparing it again", flush=True)
            return False
        for name in BETONS:
            verify_beton(root, dataset, name, meta)
    except UserError as err:
        print(f"{err}; preparing it again", flush=True)
        return False
    return True


def _remove_leftovers(root: Path, out: Path) -> None:
    """Remove temporary files and folders that killed runs of prepare left (see :mod:`fastcifar.atomic`)."""
    removed = remove_stale(root, (".synthetic-*", ".extract-*"))
    owned = (*BETONS, "meta.json", integrity.CACHE_NAME)
    removed += remove_stale(out, [f".{name}.*.tmp" for name in owned])
    removed += remove_stale(root / "downloads", (".*.part",))
    if removed:
        print(
            f"removed {len(removed)} temporary file(s) left by an interrupted run: "
            + ", ".join(p.name for p in removed),
            flush=True,
        )


def _ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root):
            pass
    except OSError as err:
        raise UserError(f"cannot write to --root {root} ({err.strerror or err}); pass a writable folder") from None


def _ensure_free_space(root: Path, needed: int, what: str) -> None:
    free = shutil.disk_usage(root).free
    if free < needed + _DISK_MARGIN:
        raise UserError(
            f"not enough free disk under {root} for {what}: {free / 2**20:.0f} MiB free, "
            f"about {(needed + _DISK_MARGIN) / 2**20:.0f} MiB needed; free some space or pass another --root"
        )


def _beton_bytes(num_images: int) -> int:
    # Raw pixels plus per-sample metadata, plus partly filled pages (two writers, two splits).
    return num_images * (_IMAGE_BYTES + 64) + 8 * PAGE_SIZE


def _resolve_official_source(
    spec: archives.DatasetSpec, root: Path, archive: str | os.PathLike | None
) -> tuple[str, Path | None, str]:
    """Where the data comes from: (kind 'archive'|'folder'|'download', path or None, md5).

    The md5 of a download is the official one (a downloaded file must match it), so an already
    prepared folder is recognised without touching the network.
    """
    if archive is not None:
        path = Path(archive).expanduser()
        if path.is_dir():
            folder = archives.find_folder(path, spec)
            if folder is None:
                raise UserError(
                    f"{path} holds no {spec.folder}/ folder with '{spec.meta_file}' in it; "
                    "pass the archive or that folder"
                )
            return "folder", folder, archives.folder_md5(folder, spec)
        if not path.is_file():
            raise UserError(f"--archive {path} does not exist; pass the path of {spec.filename}")
        given = f"the official {spec.filename} has {spec.md5}"
        return "archive", path, _official_md5(path, spec, given, f"download it again from {spec.url}")
    path = root / "downloads" / spec.filename
    if path.is_file():
        return "archive", path, _official_md5(path, spec, f"expected {spec.md5}", "delete it and run prepare again")
    return "download", None, spec.md5


def _official_md5(path: Path, spec: archives.DatasetSpec, expected: str, advice: str) -> str:
    """md5 of an archive file, which must be the official one; ``expected`` and ``advice`` word the error."""
    md5 = archives.md5sum(path)
    if md5 != spec.md5:
        raise UserError(
            f"checksum mismatch: {path} has md5 {md5}, {expected}; the file is truncated or altered, {advice}"
        )
    return md5


def _write_dataset(out: Path, data: archives.CifarData, meta: dict[str, Any]) -> None:
    """Write both betons and then meta.json (completed with counts, stats and file sizes)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "meta.json").unlink(missing_ok=True)  # the folder no longer counts as prepared from here on
    files, hashes = {}, {}
    for split_name, split in (("train", data.train), ("test", data.test)):
        print(f"writing {out / f'{split_name}.beton'} ({len(split.images)} images)", flush=True)
        path = write_beton(out / f"{split_name}.beton", split.images, split.fine, split.coarse)
        files[path.name] = path.stat().st_size
        hashes[path.name] = integrity.content_hash(path)  # read back from the page cache: fast
        integrity.remember(path, hashes[path.name])
    mean, std = channel_stats(data.train.images)
    num_classes = meta["num_classes"]
    meta.update(
        classes=data.classes,
        superclasses=data.superclasses,
        num_superclasses=len(data.superclasses),
        image_shape=[32, 32, 3],
        counts={"train": len(data.train.fine), "test": len(data.test.fine)},
        class_counts={
            "train": np.bincount(data.train.fine, minlength=num_classes).tolist(),
            "test": np.bincount(data.test.fine, minlength=num_classes).tolist(),
        },
        mean=mean,
        std=std,
        ffcv_version=ffcv_version(),
        files=files,
        hashes=hashes,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    write_json_atomic(out / "meta.json", meta)


def _read_archive(path: Path, spec: archives.DatasetSpec, scratch_parent: Path) -> archives.CifarData:
    """Extract ``path`` safely into a scratch folder, read it, and remove the scratch folder."""
    with locked_tempdir(scratch_parent, ".extract-") as folder_tmp:
        archives.extract(path, folder_tmp)
        folder = archives.find_folder(folder_tmp, spec)
        if folder is None:
            raise UserError(f"{path} holds no {spec.folder}/{spec.meta_file}; it is not the {spec.name} archive")
        return archives.read_folder(folder, spec)


def _prepare_synthetic(root: Path, out: Path, n_train: int | None, n_test: int | None, seed: int) -> Path:
    from fastcifar.data import synthetic

    n_train = SYNTHETIC_DEFAULT_SIZES[0] if n_train is None else n_train
    n_test = SYNTHETIC_DEFAULT_SIZES[1] if n_test is None else n_test
    for flag, value in (("--n_train", n_train), ("--n_test", n_test), ("--seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if flag == "--seed" else 1):
            kind = "non-negative" if flag == "--seed" else "positive"
            raise UserError(f"{flag} must be a {kind} integer, got {value!r}")
    inputs = {"dataset": "synthetic", "n_train": n_train, "n_test": n_test, "seed": seed, "generator": 1}
    fingerprint = _fingerprint(inputs)
    if _is_prepared(root, "synthetic", fingerprint):
        print(f"{out} is already prepared from the same inputs; nothing to do")
        return out
    n = n_train + n_test
    # archive (noisy pixels barely compress) + extracted pickles + betons
    _ensure_free_space(root, 2 * n * (_IMAGE_BYTES + 64) + _beton_bytes(n), "the synthetic dataset")
    spec = archives.SPECS["cifar100"]
    with locked_tempdir(root, ".synthetic-") as folder_tmp:
        path = Path(folder_tmp) / "synthetic-cifar-100-python.tar.gz"
        print(f"generating a synthetic archive ({n_train} train / {n_test} test images, seed {seed})", flush=True)
        md5 = synthetic.write_archive(path, n_train, n_test, seed=seed, dataset="cifar100")
        data = _read_archive(path, spec, Path(folder_tmp))
    meta = {
        "dataset": "synthetic",
        "synthetic": True,
        "description": "synthetic CIFAR-100-format data (class-dependent colour gratings + noise), not real images",
        "num_classes": spec.num_classes,
        "source": {"kind": "synthetic", "archive": path.name, "md5": md5, **inputs},
        "archive_md5": md5,
        "fingerprint": fingerprint,
        "format_version": FORMAT_VERSION,
    }
    _write_dataset(out, data, meta)
    print(f"prepared synthetic data in {out}")
    return out


def prepare(
    dataset: str = "cifar100",
    root: str | os.PathLike = "data",
    archive: str | os.PathLike | None = None,
    n_train: int | None = None,
    n_test: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> Path:
    """Prepare ``dataset`` into ``<root>/<dataset>/`` (train.beton, test.beton, meta.json).

    Args:
        dataset: "cifar100", "cifar10" or "synthetic".
        root: data folder; downloads go to ``<root>/downloads/``.
        archive: the official ``.tar.gz`` or an extracted ``cifar-100-python/`` (or
            ``cifar-10-batches-py/``) folder, or a folder holding one; default: download.
        n_train: synthetic only: number of training images (default 5000).
        n_test: synthetic only: number of test images (default 1000).
        seed: synthetic only: seed of the generated images.
        download: allow downloading the official archive when absent (--nodownload forbids it).

    Returns:
        the dataset folder. Does nothing (and says so) when it is already prepared from the same inputs.
    """
    _check_dataset(dataset)
    root = expand_root(root)
    out = dataset_dir(root, dataset)
    _ensure_writable(root)
    # One writer per data root (fastcifar.locks): the dataset folder, downloads/ and the scratch folders.
    with hold_folder(root, "fastcifar.data prepare"):
        return _prepare_held(root, out, dataset, archive, n_train, n_test, seed, download)


def _prepare_held(
    root: Path,
    out: Path,
    dataset: str,
    archive: str | os.PathLike | None,
    n_train: int | None,
    n_test: int | None,
    seed: int,
    download: bool,
) -> Path:
    """:func:`prepare` once it holds the data folder."""
    _remove_leftovers(root, out)
    try:
        if dataset == "synthetic":
            if archive is not None:
                raise UserError("--archive does not apply to --dataset synthetic, which generates its own data")
            return _prepare_synthetic(root, out, n_train, n_test, seed)
        if n_train is not None or n_test is not None or seed != 0:
            raise UserError("--n_train, --n_test and --seed apply only to --dataset synthetic")
        return _prepare_official(root, out, dataset, archive, download)
    except OSError as err:
        # An environment failure (disk full, permissions) in our own writes: one line; temporary
        # files went with their context managers and meta.json (removed first) is not rewritten.
        if err.errno is None:
            raise
        where = err.filename or out
        advice = "free some space or pass another --root" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "fix it"
        raise UserError(
            f"preparing {out} failed: {where}: {err.strerror}; nothing half-written was kept, "
            f"{advice} and run prepare again"
        ) from None


def _prepare_official(root: Path, out: Path, dataset: str, archive: str | os.PathLike | None, download: bool) -> Path:
    spec = archives.get_spec(dataset)
    kind, path, md5 = _resolve_official_source(spec, root, archive)
    fingerprint = _fingerprint({"dataset": dataset, "source_md5": md5})
    if _is_prepared(root, dataset, fingerprint):
        print(f"{out} is already prepared from the same inputs; nothing to do")
        return out
    if kind == "download":
        path = root / "downloads" / spec.filename
        if not download:
            raise UserError(f"{path} is absent and downloading is off; {archives.manual_placement_hint(spec, path)}")
        _ensure_free_space(root, 400 << 20, f"downloading {spec.filename}")
        archives.download(spec, path)
        kind = "archive"

    if kind == "folder":
        content = sum((path / name).stat().st_size for name in (*spec.train_files, *spec.test_files))
        _ensure_free_space(root, _beton_bytes(content // _IMAGE_BYTES), f"the {dataset} betons")
        print(f"reading {path}", flush=True)
        data = archives.read_folder(path, spec)
    else:
        content = archives.archive_content_size(path)
        needed = content + _beton_bytes(content // _IMAGE_BYTES)
        _ensure_free_space(root, needed, f"extracting {path.name} and the betons")
        print(f"extracting {path}", flush=True)
        data = _read_archive(path, spec, root)

    meta = {
        "dataset": dataset,
        "synthetic": False,
        "num_classes": spec.num_classes,
        "source": {"kind": kind, "name": path.name, "md5": md5, "url": spec.url},
        "archive_md5": md5 if kind == "archive" else None,
        "fingerprint": fingerprint,
        "format_version": FORMAT_VERSION,
    }
    _write_dataset(out, data, meta)
    print(f"prepared {dataset} in {out}")
    return out
