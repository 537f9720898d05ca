"""Writing and reading CIFAR betons (FFCV's file format).

Fields, in this order: ``image`` (RGBImageField, raw 32x32x3 uint8), ``label`` (IntField, fine
label), ``coarse_label`` (IntField; 0 where a dataset has no superclasses).
"""

from __future__ import annotations

import _thread
import multiprocessing
import os
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from fastcifar.errors import UserError

FIELDS = ("image", "label", "coarse_label")
# FFCV's smallest page (2 MiB) keeps small betons small; a page holds ~680 raw CIFAR images.
PAGE_SIZE = 1 << 21


def ffcv_version() -> str:
    """Installed FFCV version (``ffcv.__version__`` is stale in the 1.0.2 wheel, so ask the metadata)."""
    try:
        return metadata.version("ffcv")
    except metadata.PackageNotFoundError:
        return "absent"


def _import_ffcv():
    try:
        import ffcv  # noqa: F401
    except ImportError as err:
        raise UserError(
            f"FFCV is not importable ({err}); install the project with `pip install -e .` "
            "(FFCV needs libopencv-dev, libturbojpeg0-dev and pkg-config)"
        ) from None


class _Records:
    """Indexable view FFCV's DatasetWriter reads: item i -> (image (32,32,3) uint8, fine int, coarse int)."""

    def __init__(self, images: np.ndarray, fine: np.ndarray, coarse: np.ndarray):
        self.images, self.fine, self.coarse = images, fine, coarse

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.images[i], int(self.fine[i]), int(self.coarse[i])


class _WorkerWatchdog:
    """Interrupts the main thread when one of FFCV's writer processes dies.

    Why: ``DatasetWriter`` polls a shared counter until every sample is written and never checks
    its worker processes, so a worker that fails (disk full, killed) would leave it waiting forever.
    The watchdog watches the child processes and raises KeyboardInterrupt in the main thread
    (``_thread.interrupt_main``) if one exits with an error or if none is alive for ``grace_s``
    while the write has not returned (a worker may fail before the first poll sees it; FFCV's own
    work after its workers exit, writing the sample table, takes well under a second).
    """

    def __init__(self, poll_s: float = 0.05, grace_s: float = 5.0):
        self.poll_s, self.grace_s = poll_s, grace_s
        self.failure: str | None = None
        self.seen: dict[int, multiprocessing.Process] = {}
        self._preexisting = {p.pid for p in multiprocessing.active_children()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="beton-writer-watchdog", daemon=True)

    def __enter__(self) -> "_WorkerWatchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for proc in self.seen.values():  # after a failure the surviving workers would wait forever
            if proc.is_alive():
                proc.terminate()
                proc.join(5)

    def _run(self) -> None:
        last_alive = time.monotonic()
        while not self._stop.wait(self.poll_s):
            try:
                children = multiprocessing.active_children()
            except RuntimeError:  # the main thread started a process meanwhile: look again next poll
                continue
            for proc in children:
                if proc.pid not in self._preexisting:
                    self.seen.setdefault(proc.pid, proc)
            alive = [p for p in self.seen.values() if p.exitcode is None]
            failed = [p for p in self.seen.values() if p.exitcode not in (None, 0)]
            now = time.monotonic()
            if alive:
                last_alive = now
            if failed:
                self.failure = f"a writer process exited with code {failed[0].exitcode}"
            elif now - last_alive > self.grace_s:
                self.failure = f"no writer process alive for {self.grace_s:.0f} s"
            if self.failure:
                if not self._stop.is_set():
                    _thread.interrupt_main()
                return


def write_beton(
    path: str | os.PathLike,
    images: np.ndarray,
    fine: np.ndarray,
    coarse: np.ndarray,
    num_workers: int | None = None,
) -> Path:
    """Write one split to ``path`` with FFCV's DatasetWriter, atomically.

    Args:
        images: (N, 32, 32, 3) uint8 RGB.
        fine, coarse: (N,) integer labels.
        num_workers: writer processes; default min(2, CPUs).

    The file is written under a temporary name in the same folder and renamed to ``path`` only
    when complete; on any failure (or Ctrl-C) the temporary file is removed and ``path`` is left
    as it was.
    """
    _import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    images = np.ascontiguousarray(images)
    fine, coarse = np.asarray(fine), np.asarray(coarse)
    # Checked here because a failure inside FFCV's worker processes is much harder to report.
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"images must be (N, 32, 32, 3) uint8, got {images.shape} {images.dtype}")
    if not (len(images) == len(fine) == len(coarse)) or fine.ndim != 1 or coarse.ndim != 1:
        raise ValueError(f"need one fine and one coarse label per image: {images.shape}, {fine.shape}, {coarse.shape}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    if num_workers is None:
        num_workers = max(1, min(2, os.cpu_count() or 1))
    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField(), "coarse_label": IntField()}
    writer = DatasetWriter(tmp_name, fields, page_size=PAGE_SIZE, num_workers=num_workers)
    watchdog = _WorkerWatchdog()
    try:
        try:
            with watchdog:
                writer.from_indexed_dataset(_Records(images, fine, coarse), chunksize=256)
        except KeyboardInterrupt:
            if watchdog.failure is None:
                raise  # a real Ctrl-C
            shared = getattr(writer, "metadata_sm", None)
            if shared is not None and not isinstance(shared, int):  # FFCV leaks it on failure
                shared.close()
                shared.unlink()
            raise UserError(
                f"writing {path} failed: {watchdog.failure} (see its message above; is the disk full?)"
            ) from None
        with open(tmp_name, "rb") as f:  # durable before it gets the final name
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a dataset is meant to be shared
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return path


def open_checked(path: Path):
    """Open ``path`` with FFCV's Reader and check it holds the CIFAR fields; UserError otherwise."""
    from ffcv.reader import Reader

    if not path.is_file():
        raise UserError(f"{path} does not exist; run `python -m fastcifar.data prepare` first")
    try:
        reader = Reader(str(path))
        ok = reader.field_names[: len(FIELDS)] == list(FIELDS)
        if ok and reader.num_samples:
            # Every sample's image must lie inside the file: catches truncated files.
            ends = reader.alloc_table["ptr"].astype(np.int64) + reader.alloc_table["size"].astype(np.int64)
            ok = len(reader.alloc_table) >= reader.num_samples and int(ends.max()) <= path.stat().st_size
    except Exception as err:  # FFCV raises assorted errors (AssertionError, ValueError, ...) for bad files
        raise UserError(f"{path} is not a readable beton ({type(err).__name__}: {err}); run prepare again") from None
    if not ok:
        raise UserError(f"{path} is not a complete CIFAR beton (fields {reader.field_names}); run prepare again")
    return reader


def sequential_loader(path: str | os.PathLike, batch_size: int = 1000):
    """An FFCV Loader over every record of a checked beton, in order, undecorated.

    Yields numpy batches ``(images (B, 32, 32, 3) uint8, fine (B, 1) int64, coarse (B, 1) int64)``
    whose buffers FFCV reuses between batches. Returns ``(loader, num_samples)``; loader is None
    for an empty beton.
    """
    _import_ffcv()
    from ffcv.fields.decoders import IntDecoder, SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    path = Path(path)
    n = int(open_checked(path).num_samples)
    if n == 0:
        return None, 0
    loader = Loader(
        str(path),
        batch_size=min(batch_size, n),
        num_workers=1,
        order=OrderOption.SEQUENTIAL,
        drop_last=False,
        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()], "coarse_label": [IntDecoder()]},
    )
    return loader, n


def read_beton(path: str | os.PathLike, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read every record of a beton, in order, through an FFCV Loader.

    Returns:
        images (N, 32, 32, 3) uint8, fine (N,) int64, coarse (N,) int64.
    """
    loader, n = sequential_loader(path, batch_size)
    images = np.empty((n, 32, 32, 3), dtype=np.uint8)
    fine = np.empty(n, dtype=np.int64)
    coarse = np.empty(n, dtype=np.int64)
    if loader is None:
        return images, fine, coarse
    start = 0
    # FFCV reuses its output buffers between batches: copy each batch out before the next.
    for batch_images, batch_fine, batch_coarse in loader:
        stop = start + len(batch_images)
        images[start:stop] = batch_images
        fine[start:stop] = np.asarray(batch_fine).reshape(-1)
        coarse[start:stop] = np.asarray(batch_coarse).reshape(-1)
        start = stop
    if start != n:
        raise UserError(f"{path} yielded {start} of its {n} records; run prepare again")
    return images, fine, coarse
