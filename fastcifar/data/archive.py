"""The official CIFAR archives: specs, download, checksum, safe extraction, reading the pickled splits."""

from __future__ import annotations

import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastcifar.atomic import atomic_path
from fastcifar.data.checks import as_images, as_labels, check_label_range
from fastcifar.errors import UserError


@dataclass(frozen=True)
class DatasetSpec:
    """Where an official CIFAR archive lives and how its pickled splits are laid out."""

    name: str
    url: str
    filename: str
    md5: str
    folder: str  # top-level folder inside the archive (torchvision's extracted layout)
    num_classes: int
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    fine_key: bytes  # label key in each split's dict
    coarse_key: bytes | None  # superclass label key; None: the dataset has none (stored as 0)
    class_names_key: bytes
    superclass_names_key: bytes | None


SPECS: dict[str, DatasetSpec] = {
    "cifar100": DatasetSpec(
        name="cifar100",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        filename="cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        folder="cifar-100-python",
        num_classes=100,
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        fine_key=b"fine_labels",
        coarse_key=b"coarse_labels",
        class_names_key=b"fine_label_names",
        superclass_names_key=b"coarse_label_names",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        filename="cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        folder="cifar-10-batches-py",
        num_classes=10,
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        fine_key=b"labels",
        coarse_key=None,
        class_names_key=b"label_names",
        superclass_names_key=None,
    ),
}


@dataclass
class Split:
    """One split in memory. images (N, 32, 32, 3) uint8 RGB; fine, coarse (N,) int64."""

    images: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray


@dataclass
class CifarData:
    """Both splits plus the class names read from an archive or an extracted folder."""

    train: Split
    test: Split
    classes: list[str]
    superclasses: list[str]


def get_spec(name: str) -> DatasetSpec:
    """The spec of an official dataset; a UserError lists the valid names otherwise."""
    if name not in SPECS:
        raise UserError(f"unknown dataset {name!r}; choose one of {sorted(SPECS)}")
    return SPECS[name]


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """md5 hex digest of a file, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def manual_placement_hint(spec: DatasetSpec, dest: Path) -> str:
    """One sentence telling the user how to supply the archive without a network."""
    return (
        f"download {spec.url} (md5 {spec.md5}) on a machine with internet and either copy it to {dest} "
        f"or pass --archive /path/to/{spec.filename} (an extracted {spec.folder}/ folder also works)"
    )


def download(spec: DatasetSpec, dest: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download ``spec.url`` to ``dest`` with a progress bar and verify its md5.

    The bytes go to a temporary name next to ``dest`` that is renamed only when the download is
    complete and its checksum right, so an interrupted download never leaves a file at ``dest``.
    """
    dest = Path(dest)
    digest = hashlib.md5()
    received = 0
    with atomic_path(dest, suffix=".part") as tmp:  # locked while written: prepare's clean-up keeps it
        try:
            with open(tmp, "wb") as out, urllib.request.urlopen(spec.url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length else None
                with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {spec.filename}") as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise UserError(f"cannot download {spec.url} ({reason}); {manual_placement_hint(spec, dest)}") from None
        if total is not None and received != total:
            raise UserError(
                f"download of {spec.url} stopped after {received} of {total} bytes; "
                f"run prepare again or {manual_placement_hint(spec, dest)}"
            )
        if digest.hexdigest() != spec.md5:
            raise UserError(
                f"downloaded {spec.filename} has md5 {digest.hexdigest()}, expected {spec.md5}; "
                f"run prepare again or {manual_placement_hint(spec, dest)}"
            )
    return dest


def _check_member(member: tarfile.TarInfo, target: Path, archive: Path) -> None:
    """Reject members that are links, devices, absolute paths or that resolve outside ``target``."""
    if not (member.isfile() or member.isdir()):
        raise UserError(f"{archive} holds {member.name!r}, which is a link or special file; refusing to extract it")
    if os.path.isabs(member.name) or member.name.startswith(("/", "\\")):
        raise UserError(f"{archive} holds the absolute path {member.name!r}; refusing to extract it")
    resolved = (target / member.name).resolve()
    if resolved != target and target not in resolved.parents:
        raise UserError(f"{archive} holds {member.name!r}, which escapes the target folder; refusing to extract it")


def extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a ``.tar.gz`` into ``target`` after checking every member (see :func:`_check_member`).

    All members are checked before anything is written. A truncated or corrupt archive raises a
    UserError. Returns ``target``.
    """
    archive, target = Path(archive), Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    corrupt = f"{archive} is truncated or corrupt; delete it and download it again (or pass a good --archive)"
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = tar.getmembers()  # reads the whole stream: truncation shows here
            for member in members:
                _check_member(member, target, archive)
            # Where tarfile has extraction filters (3.11.4+), 'data' repeats these checks inside tarfile.
            extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, members=members, **extra)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        if isinstance(err, OSError) and err.errno is not None:  # a filesystem problem, not bad bytes
            raise UserError(f"cannot extract {archive} into {target}: {err.strerror}") from None
        raise UserError(f"{corrupt} ({type(err).__name__}: {err})") from None
    return target


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays and bytes.

    Why hand-written: ``pickle.load`` runs arbitrary code from the file, and ``--archive`` takes
    any file; the CIFAR pickles need nothing beyond these few globals.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"{path} is missing; the archive or folder is incomplete") from None
    except Exception as err:  # any decoding failure means a damaged file the user must replace
        raise UserError(f"{path} is not a valid CIFAR pickle ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a valid CIFAR pickle (holds {type(obj).__name__}, expected dict)")
    return obj


def _read_split(folder: Path, files: tuple[str, ...], spec: DatasetSpec, num_superclasses: int) -> Split:
    """Read and check one split's pickles: images uint8 rows, integer labels in range (fine and coarse)."""
    images, fine, coarse = [], [], []
    for name in files:
        path = folder / name
        record = _load_pickle(path)
        try:
            data = as_images(record[b"data"], f"{path} (key 'data')", (3072,))
            labels = as_labels(record[spec.fine_key], f"{path} (key {spec.fine_key.decode()!r})")
            supers = (
                as_labels(record[spec.coarse_key], f"{path} (key {spec.coarse_key.decode()!r})")
                if spec.coarse_key is not None
                else np.zeros_like(labels)
            )
        except KeyError as err:
            raise UserError(f"{path} lacks the key {err.args[0]!r}; it is not a {spec.name} split") from None
        if not (len(data) == len(labels) == len(supers)):
            raise UserError(
                f"{path} holds {len(data)} images, {len(labels)} labels and {len(supers)} superclass labels; "
                "they must be as many"
            )
        check_label_range(labels, spec.num_classes, f"{path} (key {spec.fine_key.decode()!r})")
        if spec.coarse_key is not None:
            check_label_range(supers, num_superclasses, f"{path} (key {spec.coarse_key.decode()!r})")
        # Rows hold the R, G and B planes one after the other (3 x 32 x 32); make it (N, 32, 32, 3).
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        fine.append(labels)
        coarse.append(supers)
    return Split(np.ascontiguousarray(np.concatenate(images)), np.concatenate(fine), np.concatenate(coarse))


def find_folder(path: str | os.PathLike, spec: DatasetSpec) -> Path | None:
    """The extracted ``spec.folder`` at ``path`` itself or directly inside it; None if absent."""
    path = Path(path)
    for candidate in (path, path / spec.folder):
        if (candidate / spec.meta_file).is_file():
            return candidate
    return None


def _names(values: object, where: Path) -> list[str]:
    if not isinstance(values, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in values):
        raise UserError(f"{where} holds class names as {type(values).__name__}; expected a list of names")
    return [n.decode(errors="replace") if isinstance(n, bytes) else n for n in values]


def read_folder(folder: str | os.PathLike, spec: DatasetSpec) -> CifarData:
    """Read both splits and the class names from an extracted folder (torchvision's layout)."""
    folder = Path(folder)
    meta = _load_pickle(folder / spec.meta_file)
    where = folder / spec.meta_file
    try:
        classes = _names(meta[spec.class_names_key], where)
        superclasses = _names(meta[spec.superclass_names_key], where) if spec.superclass_names_key is not None else []
    except KeyError as err:
        raise UserError(f"{where} lacks the key {err.args[0]!r}; it is not {spec.name} metadata") from None
    if len(classes) != spec.num_classes:
        raise UserError(f"{where} names {len(classes)} classes; {spec.name} has {spec.num_classes}")
    return CifarData(
        train=_read_split(folder, spec.train_files, spec, len(superclasses)),
        test=_read_split(folder, spec.test_files, spec, len(superclasses)),
        classes=classes,
        superclasses=superclasses,
    )


def folder_md5(folder: str | os.PathLike, spec: DatasetSpec) -> str:
    """One md5 over the names and bytes of the split and meta files of an extracted folder."""
    digest = hashlib.md5()
    for name in sorted((*spec.train_files, *spec.test_files, spec.meta_file)):
        path = Path(folder) / name
        if not path.is_file():
            raise UserError(f"{path} is missing; the folder {folder} is not a complete {spec.folder}/")
        digest.update(name.encode() + b"\0" + md5sum(path).encode())
    return digest.hexdigest()


def archive_content_size(archive: str | os.PathLike) -> int:
    """Bytes the archive occupies once extracted (sum of member sizes); corrupt -> UserError."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            return sum(m.size for m in tar.getmembers())
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise UserError(
            f"{archive} is truncated or corrupt; delete it and download it again (or pass a good --archive) "
            f"({type(err).__name__}: {err})"
        ) from None
