"""``run``: plan the (row, seed) runs of a study, execute what is left, and write the report.

The plan (experiments, rows, seeds, recipe, the training flags given for every row) is kept in
``<out>/study-plan.json``. Re-running the same command continues: finished runs are skipped,
interrupted ones resumed, failed ones tried again; a failed attempt is retried once within a
call, and a failure never stops the other runs. Ctrl-C (exit 130) or SIGTERM / SIGUSR1 / SIGHUP
(exit 75) pass the signal on to the running trainings, which save and stop; their attempts are
recorded as interrupted and the next call resumes them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastcifar.atomic import folder_write_problem, read_json, write_json_atomic
from fastcifar.cli import to_mapping
from fastcifar.errors import UserError
from fastcifar.locks import hold_folder
from fastcifar.preemption import PREEMPTED_EXIT_CODE, StopSignal, raising_on_preemption, signal_name
from fastcifar.study import jobs
from fastcifar.study.jobs import RunSpec
from fastcifar.study.rows import EXPERIMENTS, RECIPES, RUNTIME_FLAGS, Row, runtime_args, select_rows, train_args

PROG = "fastcifar.study run"
PLAN_NAME = "study-plan.json"
# The compile cache every run of a study shares unless --compile_cache says otherwise: on the
# study's own storage, so it outlives /tmp and reaches every node that can see the study folder.
COMPILE_CACHE_NAME = "compile-cache"
EXECUTORS = ("local", "ray")
# Training flags the study sets per run itself (or that would break a folder per run).
RESERVED_TRAIN_FLAGS = ("arch", "seed", "out", "resume")
MAX_SEEDS = 1000  # runs per row; a bound so that a typo cannot plan (and claim folders for) millions
ATTEMPTS_PER_CALL = 2  # a failed attempt is retried once


class Interrupted(UserError):
    """Ctrl-C during a study: one line, exit code 130 like any interrupted command."""

    exit_code = 130


class Preempted(Interrupted):
    """SIGTERM, SIGUSR1 or SIGHUP during a study: the trainings saved; exit code 75 (see fastcifar.preemption)."""

    exit_code = PREEMPTED_EXIT_CODE


def train_flag_names() -> list[str]:
    """The ``fastcifar.train`` flags a study may apply to every row."""
    from fastcifar.training.config import flag_help

    return [name for name in flag_help() if name not in RESERVED_TRAIN_FLAGS]


def normalise_train_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """Check the training flags given to ``run`` (``--nofoo`` = ``--foo false``); UserError on a typo."""
    known = set(train_flag_names())
    result: dict[str, Any] = {}
    for name, value in flags.items():
        if name in RESERVED_TRAIN_FLAGS:
            raise UserError(f"--{name} is set by the study for each run; it cannot be given here.")
        if name not in known and name.startswith("no") and name[2:] in known and value is True:
            name, value = name[2:], False
        if name not in known:
            raise UserError(
                f"unknown flag --{name}; study flags: --experiment, --seeds, --out, --rows, --recipe, "
                f"--executor, --ray_address, --devices, --tiny; training flags: "
                + ", ".join(f"--{n}" for n in sorted(known))
                + "."
            )
        result[name] = value
    if "model_kwargs" in result:
        result["model_kwargs"] = to_mapping("model_kwargs", result["model_kwargs"])
    return result


def load_plan(out: str | os.PathLike) -> dict[str, Any]:
    """The folder's ``study-plan.json``; UserError when ``out`` is not a study folder."""
    path = Path(out) / PLAN_NAME
    if not path.is_file():
        raise UserError(f"no {PLAN_NAME} in {out}: not a folder written by python -m fastcifar.study run.")
    return read_plan(path)


def read_plan(path: Path) -> dict[str, Any]:
    """``study-plan.json`` at ``path``; UserError naming it when it is damaged (e.g. a truncated copy)."""
    return read_json(
        path,
        "delete it and re-run the study run command that made this folder "
        "(finished runs are kept; the plan is written again).",
    )


def started_seeds(out: Path, plan: dict[str, Any]) -> int:
    """1 + the highest seed of ``plan`` any of whose rows' runs has started (0 when none has)."""
    highest = 0
    for row in plan["rows"]:
        for seed in range(highest, plan["seeds"]):
            if jobs.has_started(jobs.run_folder(out, row, seed)):
                highest = seed + 1
    return highest


def merge_plan(out: Path, new: dict[str, Any]) -> dict[str, Any]:
    """Combine ``new`` with the folder's existing plan: rows and experiments accumulate.

    Seeds: what this call asks, or more where runs of higher seeds exist (they stay in the report);
    seeds an earlier call asked for but never started (a mistaken ``--seeds 40`` stopped at once)
    are not kept. The recipe, ``--tiny`` and the training flags must match: runs trained
    differently must not end up in one table. Runtime flags (device, workers, log_every) may change.
    """
    path = out / PLAN_NAME
    if not path.is_file():
        return new
    old = read_plan(path)
    for key in ("recipe", "tiny", "flags"):
        if old.get(key) != new[key]:
            raise UserError(
                f"{out} holds a study run with {key} {old.get(key)!r}, not {new[key]!r}; "
                "use another --out for a different configuration."
            )
    return {
        **new,
        "experiments": list(dict.fromkeys([*old["experiments"], *new["experiments"]])),
        "rows": list(dict.fromkeys([*old["rows"], *new["rows"]])),
        "seeds": max(new["seeds"], started_seeds(out, old)),
    }


def plan_specs(out: Path, rows: list[Row], seeds: int, recipe: str, flags: dict[str, Any], tiny: bool) -> list[RunSpec]:
    """Every (row, seed) run with the arguments of its fresh start; seeds are 0..seeds-1."""
    specs = []
    runtime = tuple(runtime_args(flags))
    for row in rows:
        for seed in range(seeds):
            folder = jobs.run_folder(out, row.id, seed).resolve()
            args = train_args(row, seed=seed, out=str(folder), recipe=recipe, flags=flags, tiny=tiny)
            specs.append(RunSpec(row.id, seed, str(folder), tuple(args), runtime))
    return specs


class Progress:
    """One line per run start and finish, above an overall progress bar (thread-safe)."""

    def __init__(self, total: int, print_fn: Callable[[str], None] | None = None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc="study", unit="run", dynamic_ncols=True)
        self._lock = threading.Lock()
        self._print = print_fn or self._bar.write

    def line(self, text: str) -> None:
        with self._lock:
            self._print(text)

    def started(self, spec: RunSpec, device: str) -> None:
        self.line(f"start  {spec.name} on {device}")

    def finished(self, spec: RunSpec, result: dict[str, Any], retry: bool) -> None:
        where, seconds = result.get("device"), result.get("seconds", 0.0)
        if result["status"] == "finished":
            top1 = result.get("top1")
            score = f"top-1 {top1:.2f}%" if isinstance(top1, (int, float)) else "top-1 ?"
            self.line(f"done   {spec.name} on {where}: {score}, {seconds:.1f} s")
        elif result["status"] == "interrupted":
            saved = "checkpoint saved" if result.get("checkpoint") else "no checkpoint yet: starts afresh next time"
            self.line(f"stopped {spec.name} on {where} after {seconds:.1f} s ({saved})")
        else:
            then = "retrying once" if retry else "recorded as failed"
            self.line(
                f"failed {spec.name} on {where} (exit {result.get('returncode')}, {seconds:.1f} s; {then}): "
                f"{result.get('error', '')}"
            )
        if not retry:
            with self._lock:
                self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


class Scheduler:
    """Runs every spec through an executor; a failed attempt is submitted once more.

    Retrying is skipped where it cannot help (a user error). Interruption (Ctrl-C) asks every
    training to save and stop, then re-raises KeyboardInterrupt.
    """

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.attempts: dict[str, int] = {}
        self.outcome: dict[str, str] = {}
        self._lock = threading.Lock()

    def on_finish(self, spec: RunSpec, result: dict[str, Any]) -> dict[str, Any]:
        """Record the attempt, decide on a retry, print the line (where the attempt ended)."""
        jobs.add_attempt(spec, result)
        with self._lock:
            retry = (
                result["status"] == "failed"
                and result.get("retriable", True)
                and self.attempts[spec.name] < ATTEMPTS_PER_CALL
            )
            if not retry:
                self.outcome[spec.name] = result["status"]
        self.progress.finished(spec, result, retry)
        return {**result, "retry": retry}

    def execute(self, specs: list[RunSpec], executor: Any) -> dict[str, str]:
        """Run ``specs``; return each run's final state by name."""
        in_flight: dict[Any, RunSpec] = {}

        def submit(spec: RunSpec) -> None:
            with self._lock:
                self.attempts[spec.name] = self.attempts.get(spec.name, 0) + 1
            in_flight[executor.submit(spec)] = spec

        try:
            for spec in specs:
                submit(spec)
            while in_flight:
                handle, result = executor.wait_any(in_flight)
                spec = in_flight.pop(handle)
                if result["retry"]:
                    submit(spec)
        except KeyboardInterrupt as stopped:  # Ctrl-C, or a preemption signal (a StopSignal)
            executor.interrupt(list(in_flight), signum=getattr(stopped, "signum", signal.SIGINT))
            raise
        return dict(self.outcome)


def build_executor(
    kind: str, out: Path, device: str | None, devices: Any, ray_address: str | None, scheduler: Scheduler
) -> Any:
    """The executor named by ``--executor`` (``local`` or ``ray``)."""
    from fastcifar.study import executors

    callbacks = (scheduler.progress.started, scheduler.on_finish)
    check_executor_options(kind, device, devices, ray_address)
    if kind == "local":
        return executors.LocalExecutor(executors.device_slots(device, devices), *callbacks)
    return executors.RayExecutor(str(out), ray_address, device, *callbacks)


def _check_run_arguments(seeds: Any, executor: str, recipe: str, tiny: Any) -> None:
    """UserError for a bad ``--seeds``, ``--executor``, ``--recipe`` or ``--tiny``."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be a positive integer, got {seeds!r}.")
    if seeds > MAX_SEEDS:
        raise UserError(f"--seeds must be at most {MAX_SEEDS} (runs per row, seeds 0..seeds-1), got {seeds}.")
    if executor not in EXECUTORS:
        raise UserError(f"unknown --executor {executor!r}; choose one of: {', '.join(EXECUTORS)}.")
    if recipe not in RECIPES:
        raise UserError(f"unknown --recipe {recipe!r}; choose one of: {', '.join(RECIPES)}.")
    if not isinstance(tiny, bool):
        raise UserError(f"--tiny takes true or false, got {tiny!r}.")


def check_train_flags(rows: list[Row], flags: dict[str, Any], tiny: bool) -> None:
    """Every training flag through TrainConfig's checks, for every row, before anything is written.

    The same values the trainings will get (the user's flags over each row's model and overrides):
    ``--lr abc``, a model option a row's network lacks or a value it refuses (``growth_rate: "abc"``)
    is one line now, not a failure per launch. Each row's network is built on the meta device (no
    memory, no arithmetic) so that its constructor checks the values.
    """
    import torch

    from fastcifar.study.rows import model_kwargs
    from fastcifar.training.config import resolve_config
    from fastcifar.training.variant import Variant, build_model

    user = {name: value for name, value in flags.items() if name != "model_kwargs"}
    meta = torch.device("meta")
    for row in rows:
        kwargs = model_kwargs(row, tiny=tiny, user=flags.get("model_kwargs") or {})
        try:
            config = resolve_config(**user, arch=row.model, model_kwargs=kwargs, out="unused")
            with meta:
                build_model(config.arch, config.model_kwargs, Variant(), meta)
        except UserError as err:
            raise UserError(f"{err} (row {row.id})" if len(rows) > 1 else str(err)) from None


def check_executor_options(executor: str, device: str | None, devices: Any, ray_address: str | None) -> None:
    """UserError for executor options that do not go together (before the folder or plan is written)."""
    from fastcifar.study import executors

    if executor == "local":
        if ray_address is not None:
            raise UserError("--ray_address needs --executor ray.")
        executors.device_slots(device, devices)  # --devices with --device cpu, GPUs that do not exist
    elif devices is not None:
        raise UserError("--devices is for the local executor; Ray assigns one GPU per run itself.")


def ensure_study_data(flags: dict[str, Any]) -> None:
    """The data every run trains on, checked (or prepared) once before any launch.

    Prepared data is checked (its meta.json names the asked data set); missing data is prepared
    now, once, instead of by every training at the same time; without data and without a network
    that is one line (exit 2) before anything starts.
    """
    from fastcifar.data.prepare import dataset_dir, load_meta, prepare
    from fastcifar.training.config import config_fields, default_value

    defaults = {spec.name: default_value(spec) for spec in config_fields()}
    dataset = flags.get("dataset", defaults["dataset"])
    root = flags.get("data_root", defaults["data_root"])
    if (dataset_dir(root, dataset) / "meta.json").is_file():
        load_meta(root, dataset)
        return
    print(f"{dataset_dir(root, dataset)} holds no prepared data: preparing {dataset} once for every run", flush=True)
    prepare(dataset=dataset, root=root)


def _plan_entry(
    experiment: str, rows: list[Row], seeds: int, recipe: str, tiny: bool, flags: dict[str, Any]
) -> dict[str, Any]:
    """What this call asks, as the plan records it (identity: no runtime flags, no --out)."""
    identity = {name: value for name, value in flags.items() if name not in RUNTIME_FLAGS}
    return {
        "experiments": [experiment],
        "rows": [r.id for r in rows],
        "seeds": seeds,
        "recipe": recipe,
        "tiny": tiny,
        "flags": identity,
    }


def check_run_files(specs: list[RunSpec]) -> None:
    """Read every run's record and each finished run's summary: a damaged one stops the study
    (one line naming it) before data is prepared or anything is written."""
    for spec in specs:
        jobs.read_record(spec.folder)
        if jobs.state(spec.folder) == "finished":
            jobs.read_summary(spec.folder)


def _record_plan(
    out_dir: Path, experiment: str, rows: list[Row], seeds: int, recipe: str, tiny: bool, flags: dict[str, Any]
) -> list[RunSpec]:
    """Merge this call into ``<out_dir>/study-plan.json``, claim every run folder; return the runs."""
    plan = merge_plan(out_dir, _plan_entry(experiment, rows, seeds, recipe, tiny, flags))
    specs = plan_specs(out_dir, rows, seeds, recipe, flags, tiny)
    for spec in specs:
        jobs.claim(spec)
    write_json_atomic(out_dir / PLAN_NAME, plan)
    return specs


def _execute(
    todo: list[RunSpec],
    executor: str,
    out_dir: Path,
    flags: dict[str, Any],
    devices: Any,
    ray_address: str | None,
    print_fn: Callable[[str], None] | None,
) -> None:
    """Train ``todo`` on the chosen executor; Ctrl-C stops it and raises :class:`Interrupted`."""
    progress = Progress(len(todo), print_fn)
    scheduler = Scheduler(progress)
    pool = build_executor(executor, out_dir, flags.get("device"), devices, ray_address, scheduler)
    progress.line(pool.describe())
    try:
        with raising_on_preemption():
            scheduler.execute(todo, pool)
    except KeyboardInterrupt as stopped:
        progress.close()
        pool.close()
        if isinstance(stopped, StopSignal):
            raise Preempted(
                f"preempted by {signal_name(stopped.signum)}; the trainings saved their checkpoints: "
                "re-run the same command to continue."
            ) from None
        raise Interrupted(
            "interrupted; the trainings saved their checkpoints: re-run the same command to continue."
        ) from None
    progress.close()
    pool.close()


def run(
    experiment: str = "all",
    seeds: int = 3,
    out: str | None = None,
    rows: str | tuple | list | None = None,
    recipe: str = "study",
    executor: str = "local",
    ray_address: str | None = None,
    devices: Any = None,
    tiny: bool = False,
    print_fn: Callable[[str], None] | None = None,
    **train_flags: Any,
) -> dict[str, Any]:
    """Train every (row, seed) of ``experiment`` that is not finished yet, then write the report.

    Returns the report (the content of ``<out>/study.json``). See ``python -m fastcifar.study run
    --help`` for the arguments; ``train_flags`` are ``fastcifar.train`` flags applied to every row.
    """
    _check_run_arguments(seeds, executor, recipe, tiny)
    selected = select_rows(experiment, rows)
    flags = normalise_train_flags(train_flags)
    check_train_flags(selected, flags, tiny)
    check_executor_options(executor, flags.get("device"), devices, ray_address)
    out_dir = Path(out or f"runs/study-{experiment}")
    problem = folder_write_problem(out_dir)
    if problem is not None:
        raise UserError(f"cannot write the study folder {out_dir} ({problem}); pass a writable --out.")
    # One study run per folder for its whole life (its trainings hold their own run folders).
    with hold_folder(out_dir, PROG):
        return _run_held(
            out_dir, experiment, selected, seeds, recipe, executor, ray_address, devices, tiny, print_fn, flags
        )


def _run_held(
    out_dir: Path,
    experiment: str,
    selected: list[Row],
    seeds: int,
    recipe: str,
    executor: str,
    ray_address: str | None,
    devices: Any,
    tiny: bool,
    print_fn: Callable[[str], None] | None,
    flags: dict[str, Any],
) -> dict[str, Any]:
    """:func:`run` once it holds the study folder."""
    from fastcifar.study.report import write_report

    flags.setdefault("compile_cache", str((out_dir / COMPILE_CACHE_NAME).resolve()))
    merge_plan(out_dir, _plan_entry(experiment, selected, seeds, recipe, tiny, flags))  # refused before any work
    check_run_files(plan_specs(out_dir, selected, seeds, recipe, flags, tiny))
    ensure_study_data(flags)
    specs = _record_plan(out_dir, experiment, selected, seeds, recipe, tiny, flags)

    states = {spec.name: jobs.state(spec.folder) for spec in specs}
    todo = [spec for spec in specs if states[spec.name] != "finished"]
    say = print_fn or print
    counts = {s: sum(1 for v in states.values() if v == s) for s in ("finished", "interrupted", "failed", "pending")}
    say(
        f"study {experiment}: {len(selected)} rows x {seeds} seeds = {len(specs)} runs in {out_dir} "
        f"({counts['finished']} finished, {counts['interrupted']} to resume, {counts['failed']} failed before, "
        f"{counts['pending']} to start); recipe {recipe}"
        + (f"; compile cache {flags['compile_cache']}" if flags.get("compile") else "")
    )
    start = time.monotonic()
    if todo:
        _execute(todo, executor, out_dir, flags, devices, ray_address, print_fn)
    report = write_report(out_dir)
    # This call's runs (the report may hold more: other rows, higher seeds that exist).
    final = {spec.name: jobs.state(spec.folder) for spec in specs}
    failed = [name for name, state in final.items() if state != "finished"]
    say(
        f"study {experiment}: {len(specs) - len(failed)}/{len(specs)} runs finished "
        f"({time.monotonic() - start:.0f} s this call); report: {out_dir / 'study.md'}"
    )
    if failed:
        say("not finished: " + ", ".join(f"{name} ({final[name]})" for name in failed))
    return report


__all__ = ["EXPERIMENTS", "load_plan", "run"]
