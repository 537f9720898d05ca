"""Writing and reading CIFAR betons (FFCV's file format).

Fields, in this order: ``image`` (RGBImageField, raw 32x32x3 uint8), ``label`` (IntField, fine
label), ``coarse_label`` (IntField; 0 where a dataset has no superclasses).
"""

from __future__ import annotations

import _thread
import contextlib
import fcntl
import io
import multiprocessing
import multiprocessing.util
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fastcifar.data.checks import as_images, as_labels, check_label_range
from fastcifar.environment import package_version
from fastcifar.errors import UserError

FIELDS = ("image", "label", "coarse_label")
# FFCV's smallest page (2 MiB) keeps small betons small; a page holds ~680 raw CIFAR images.
PAGE_SIZE = 1 << 21


def ffcv_version() -> str:
    """Installed FFCV version, from package metadata (``ffcv.__version__`` is stale in the 1.0.2 wheel)."""
    return package_version("ffcv") or "absent"


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

    def __enter__(self) -> _WorkerWatchdog:
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


class _WorkerStderr:
    """Collects what FFCV's writer processes print on stderr (their tracebacks) in a pipe.

    Why: a failing writer process prints a multi-line traceback; the user gets one line instead,
    built from its last line (e.g. ``OSError: [Errno 28] No space left on device``). Installed in
    each process multiprocessing forks while this object lives (``register_after_fork``); writes
    never block or fail (a full pipe drops text).
    """

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        multiprocessing.util.register_after_fork(self, _WorkerStderr._install)

    def _install(self) -> None:  # runs in the forked child
        sys.stderr = _DroppingWriter(self._write)

    def last_line(self) -> str | None:
        chunks = []
        while True:
            try:
                chunk = os.read(self._read, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        lines = [line.strip() for line in b"".join(chunks).decode(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else None

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)


class _DroppingWriter(io.TextIOBase):
    """A text stream onto a non-blocking fd that drops what it cannot write."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        try:
            os.write(self._fd, text.encode(errors="replace"))
        except OSError:
            pass
        return len(text)


def _release_writer(writer, error: BaseException) -> None:
    """Free what FFCV's ``DatasetWriter`` leaks when a write stops half-way.

    Its work queue still holds chunks nobody will read; at exit multiprocessing would wait for the
    queue's feeder thread to push them into a pipe without a reader, i.e. for ever. The queues (and
    the progress bar) are locals of ``DatasetWriter._write_common``, reached through the traceback
    of ``error``; its shared-memory block is an attribute.
    """
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_write_common":
            for name in ("workqueue", "allocations_queue"):
                queue = frame.f_locals.get(name)
                if queue is not None:
                    queue.cancel_join_thread()
                    queue.close()
            progress = frame.f_locals.get("progress")
            if progress is not None:  # end FFCV's bar now, so the error line that follows is a line of its own
                progress.close()
        tb = tb.tb_next
    shared = getattr(writer, "metadata_sm", None)
    if shared is not None and not isinstance(shared, int):  # FFCV sets it to 3 before creating it
        shared.close()
        with contextlib.suppress(FileNotFoundError):
            shared.unlink()


def _failure_message(path: Path, detail: str) -> str:
    full = "No space left" in detail or "Disk quota" in detail
    advice = "free some space (or pass another --root)" if full else "fix the cause"
    return f"writing {path} failed: {detail}; nothing was kept, {advice} and run prepare again"


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
        fine, coarse: (N,) integer labels (range checks are the caller's: it knows the class counts).
        num_workers: writer processes; default min(2, CPUs).

    The file is written under a temporary name in the same folder (locked while written, see
    :mod:`fastcifar.atomic`) and renamed to ``path`` only when complete. On any failure (a
    full disk, a writer process dying, Ctrl-C) the temporary file is removed, ``path`` is left as
    it was, and a failure is a UserError of one line.
    """
    _import_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    # Checked here because a failure inside FFCV's worker processes is much harder to report.
    images = np.ascontiguousarray(as_images(images, f"the images for {path}", (32, 32, 3)))
    fine = as_labels(fine, f"the labels for {path}")
    coarse = as_labels(coarse, f"the superclass labels for {path}")
    if not (len(images) == len(fine) == len(coarse)):
        raise ValueError(f"need one fine and one coarse label per image: {images.shape}, {fine.shape}, {coarse.shape}")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    fcntl.flock(fd, fcntl.LOCK_EX)  # held until os.close(fd): marks the temporary file as in use
    if num_workers is None:
        num_workers = max(1, min(2, os.cpu_count() or 1))
    fields = {"image": RGBImageField(write_mode="raw"), "label": IntField(), "coarse_label": IntField()}
    writer = DatasetWriter(tmp_name, fields, page_size=PAGE_SIZE, num_workers=num_workers)
    watchdog = _WorkerWatchdog()
    stderr = _WorkerStderr()
    try:
        try:
            with watchdog:
                writer.from_indexed_dataset(_Records(images, fine, coarse), chunksize=256)
            os.fsync(fd)  # durable before it gets the final name
        except KeyboardInterrupt as err:
            _release_writer(writer, err)
            if watchdog.failure is None:
                raise  # a real Ctrl-C
            detail = stderr.last_line() or watchdog.failure
            raise UserError(_failure_message(path, detail)) from None
        except OSError as err:  # in this process: FFCV writing the header or the tables, fsync
            _release_writer(writer, err)
            raise UserError(_failure_message(path, f"{err.strerror or err} (errno {err.errno})")) from None
        os.chmod(tmp_name, 0o644)  # mkstemp creates 0600; a dataset is meant to be shared
        os.replace(tmp_name, path)
    finally:
        stderr.close()
        Path(tmp_name).unlink(missing_ok=True)
        os.close(fd)
    return path


def check_labels_in_beton(reader, path: Path, num_classes: int, num_superclasses: int, rebuild: str) -> None:
    """UserError unless the beton's label fields lie in ``0..num_classes-1`` / ``0..num_superclasses-1``.

    Reads only FFCV's per-sample metadata table (IntField values live there), not the images.
    """
    fine = np.asarray(reader.metadata["f1"])
    coarse = np.asarray(reader.metadata["f2"])
    try:
        check_label_range(fine, num_classes, f"{path} (field label)")
        check_label_range(coarse, max(1, num_superclasses), f"{path} (field coarse_label)")
    except UserError as err:
        raise UserError(f"{err}; rebuild it with `{rebuild}`") from None


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
