"""Where the runs execute: this machine's devices (``local``) or a Ray cluster (``ray``).

Both offer the same calls to the scheduler (:mod:`fastcifar.study.runner`): ``submit(spec) ->
handle``, ``wait_any(handles) -> (handle, result)``, ``interrupt(handles, signum)`` and ``close()``.
``result`` is the dict of :func:`fastcifar.study.jobs.attempt` after the scheduler's ``on_finish``
has seen it. ``on_start(spec, device)`` and ``on_finish(spec, result) -> result`` are called
where the attempt begins and ends (local: in the device's worker, before the device is free again,
so the progress lines keep their order).

- local: one worker per device, each running one training at a time; with several GPUs each
  worker gives its subprocess one GPU through ``CUDA_VISIBLE_DEVICES``.
- ray: one Ray task per (row, seed) attempt, ``num_gpus=1`` when the runs use CUDA (else
  ``num_cpus=1``); the task runs the same subprocess on whichever node Ray picks, so the study
  folder must be on storage every node shares (checked on each node before training).
"""

from __future__ import annotations

import concurrent.futures as futures
import os
import queue
import signal
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastcifar.atomic import folder_write_problem
from fastcifar.errors import UserError
from fastcifar.study import jobs
from fastcifar.study.jobs import RunSpec

StartCallback = Callable[[RunSpec, str], None]
FinishCallback = Callable[[RunSpec, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class DeviceSlot:
    """One device a local worker owns: its label, the ``--device`` it passes, extra environment."""

    label: str
    device_flag: str
    env: dict[str, str]


def _gpu_ids(devices: Any) -> list[int]:
    if isinstance(devices, int) and not isinstance(devices, bool):
        return [devices]
    items = devices.split(",") if isinstance(devices, str) else list(devices)
    try:
        ids = [int(str(d).strip()) for d in items if str(d).strip()]
    except ValueError:
        raise UserError(f"--devices takes GPU indices such as 0,1,3; got {devices!r}.") from None
    if not ids or any(i < 0 for i in ids):
        raise UserError(f"--devices takes GPU indices such as 0,1,3; got {devices!r}.")
    return list(dict.fromkeys(ids))


def device_slots(device: str | None, devices: Any = None) -> list[DeviceSlot]:
    """The local workers' devices from the training's ``--device`` and the study's ``--devices``.

    ``cpu`` -> one CPU worker. Otherwise, where CUDA is available, one worker per GPU in
    ``--devices`` (default: every visible GPU, or the N of ``--device cuda:N``), each seeing only
    its GPU as ``cuda``. Without CUDA: one CPU worker (asking for a GPU is then a UserError).
    """
    if device == "cpu":
        if devices is not None:
            raise UserError("--devices selects GPUs; it cannot be combined with --device cpu.")
        return [DeviceSlot("cpu", "cpu", {})]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        if devices is not None or (device or "auto") != "auto":
            raise UserError(
                f"{'--devices' if devices is not None else '--device ' + str(device)} needs a GPU, "
                "but CUDA sees none on this machine."
            )
        return [DeviceSlot("cpu", "cpu", {})]
    if devices is not None:
        ids = _gpu_ids(devices)
    elif device and device.startswith("cuda:"):
        ids = _gpu_ids(device.split(":", 1)[1])
    else:
        ids = list(range(count))
    bad = [i for i in ids if i >= count]
    if bad:
        raise UserError(f"--devices {bad[0]} does not exist: CUDA sees {count} GPU(s) (0..{count - 1}).")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [s.strip() for s in visible.split(",")] if visible else [str(i) for i in range(count)]
    return [DeviceSlot(f"cuda:{i}", "cuda", {"CUDA_VISIBLE_DEVICES": names[i]}) for i in ids]


class LocalExecutor:
    """One thread per device slot; each runs one training subprocess at a time."""

    def __init__(self, slots: list[DeviceSlot], on_start: StartCallback, on_finish: FinishCallback) -> None:
        self.slots = slots
        self.on_start = on_start
        self.on_finish = on_finish
        self._free: queue.Queue[DeviceSlot] = queue.Queue()
        for slot in slots:
            self._free.put(slot)
        self._pool = futures.ThreadPoolExecutor(max_workers=len(slots), thread_name_prefix="study-run")
        self._stopping = False

    def describe(self) -> str:
        return f"local executor on {', '.join(s.label for s in self.slots)}"

    def _run(self, spec: RunSpec) -> dict[str, Any]:
        slot = self._free.get()  # at most len(slots) tasks run, so a slot is always free here
        if self._stopping:  # queued before Ctrl-C: never started
            self._free.put(slot)
            return {
                "status": "interrupted",
                "device": slot.label,
                "returncode": None,
                "seconds": 0.0,
                "resumed": False,
                "retry": False,
            }
        try:
            self.on_start(spec, slot.label)
            return self.on_finish(spec, jobs.attempt(spec, slot.label, slot.device_flag, slot.env))
        finally:
            self._free.put(slot)

    def submit(self, spec: RunSpec) -> futures.Future:
        return self._pool.submit(self._run, spec)

    def wait_any(self, handles: Iterable[futures.Future]) -> tuple[futures.Future, dict[str, Any]]:
        done, _ = futures.wait(list(handles), return_when=futures.FIRST_COMPLETED)
        handle = next(iter(done))
        return handle, handle.result()

    def interrupt(self, handles: Iterable[futures.Future], signum: int = signal.SIGINT) -> None:
        """Ctrl-C or ``signum``: start nothing more, pass ``signum`` on to every training (each one
        saves and stops), wait for the workers."""
        self._stopping = True
        self._pool.shutdown(wait=False, cancel_futures=True)
        jobs.interrupt_children(signum=signum)
        self._pool.shutdown(wait=True)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def check_writable(out: str) -> str | None:
    """None when this machine can create files in ``out``; otherwise the one-line reason."""
    problem = folder_write_problem(out)
    if problem is None:
        return None
    host = socket.gethostname()
    return f"node {host} cannot write {out} ({problem}); the study folder must be on storage every node shares"


def _ray_attempt(spec: RunSpec, out: str, use_gpu: bool) -> dict[str, Any]:
    """The Ray task: check the shared folder, then run the attempt on the GPU Ray assigned."""
    host = socket.gethostname()
    problem = check_writable(out)
    if problem is not None:
        return {
            "status": "failed",
            "error": problem,
            "retriable": False,
            "device": host,
            "returncode": None,
            "seconds": 0.0,
            "resumed": False,
        }
    try:
        if use_gpu:
            import ray

            ids = ",".join(str(i) for i in ray.get_gpu_ids())
            return jobs.attempt(spec, f"{host}:cuda[{ids}]", "cuda")  # Ray set CUDA_VISIBLE_DEVICES
        return jobs.attempt(spec, f"{host}:cpu", "cpu")
    except KeyboardInterrupt:  # ray.cancel: let the training save its checkpoint before the task ends
        jobs.interrupt_children()
        raise


class RayExecutor:
    """One Ray task per attempt; ``ray.init(address)`` or a local cluster when no address is given."""

    def __init__(
        self, out: str, address: str | None, device: str | None, on_start: StartCallback, on_finish: FinishCallback
    ) -> None:
        try:
            import ray
        except ImportError:
            raise UserError('--executor ray needs Ray: pip install -e ".[cluster]"') from None
        self.ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            try:
                ray.init(address=address, log_to_driver=False)
            except ConnectionError as err:
                raise UserError(f"cannot reach the Ray cluster at {address!r}: {err}") from None
        gpus = ray.cluster_resources().get("GPU", 0)
        self.use_gpu = device != "cpu" and gpus > 0
        options = {"num_gpus": 1, "num_cpus": 0} if self.use_gpu else {"num_cpus": 1}
        self._specs: dict[Any, RunSpec] = {}
        self._task = ray.remote(_ray_attempt).options(max_retries=0, **options)
        self.out = str(Path(out).resolve())
        self.on_start = on_start
        self.on_finish = on_finish
        self.address = address

    def describe(self) -> str:
        where = f"cluster {self.address}" if self.address else "a local Ray cluster"
        return f"ray executor on {where}, one {'GPU' if self.use_gpu else 'CPU'} per run"

    def submit(self, spec: RunSpec) -> Any:
        self.on_start(spec, "ray")
        ref = self._task.remote(spec, self.out, self.use_gpu)
        self._specs[ref] = spec
        return ref

    def wait_any(self, handles: Iterable[Any]) -> tuple[Any, dict[str, Any]]:
        ready, _ = self.ray.wait(list(handles), num_returns=1)
        return ready[0], self.on_finish(self._specs.pop(ready[0]), self.ray.get(ready[0]))

    def interrupt(self, handles: Iterable[Any], signum: int = signal.SIGINT) -> None:
        """Ctrl-C or ``signum``: cancel the tasks; each one asks its training (SIGINT) to save a
        checkpoint and stop."""
        handles = list(handles)
        for handle in handles:
            self.ray.cancel(handle)
        self.ray.wait(handles, num_returns=len(handles), timeout=120)

    def close(self) -> None:
        if self._owns_ray:  # a cluster this executor started (or joined) is left again
            self.ray.shutdown()
