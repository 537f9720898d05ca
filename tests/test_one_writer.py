"""One writer per folder and a run that knows its data (docs/failures.md, "Two processes, one folder"
and "Resume on other data"). The concurrency cases start real processes on tiny CPU runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_runs import InterruptAtStep, command_line

from fastcifar.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
# A training in its own process that pauses at train steps until the test says go (tiny_runs.PauseAtSteps).
_PAUSED_TRAINING = """
import json, sys
sys.path.insert(0, sys.argv[1])
from tiny_runs import PauseAtSteps
from fastcifar.train import train
train(batch_hook=PauseAtSteps(tuple(json.loads(sys.argv[3])), sys.argv[4]), **json.loads(sys.argv[2]))
"""


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


class PausedTraining:
    """``fastcifar.train`` with ``flags`` in a subprocess that pauses at each of ``steps``."""

    def __init__(self, cues: Path, flags: dict, steps: tuple[int, ...]) -> None:
        self.cues = cues
        cues.mkdir(parents=True, exist_ok=True)
        code = [_PAUSED_TRAINING, str(TESTS), json.dumps(flags), json.dumps(list(steps)), str(cues)]
        self.process = subprocess.Popen(
            [sys.executable, "-c", *code],
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    @contextlib.contextmanager
    def paused_at(self, step: int) -> Iterator[None]:
        """The block runs while the training waits at train step ``step``."""
        deadline = time.monotonic() + 300
        try:
            while not (self.cues / f"at-{step}").exists():
                assert self.process.poll() is None, self.process.stdout.read()
                assert time.monotonic() < deadline, f"the paused training never reached step {step}"
                time.sleep(0.1)
            yield
        finally:
            (self.cues / f"go-{step}").touch()

    def finish(self) -> tuple[int, str]:
        for step in range(1, 100):  # release every pause, in case a block failed
            (self.cues / f"go-{step}").touch()
        output = self.process.communicate(timeout=300)[0]
        return self.process.returncode, output


def train_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastcifar.train", *args], env=environment(), capture_output=True, text=True, timeout=300
    )


def assert_refused_naming(refused: subprocess.CompletedProcess, pid: int) -> None:
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, line
    assert f"is in use by pid {pid} on host" in line and "fastcifar" in line, line


def test_a_second_training_and_a_resume_of_a_live_run_are_refused(tiny_flags, tmp_path):
    out = tmp_path / "run"
    flags = {**tiny_flags, "epochs": 2, "out": str(out)}
    first = PausedTraining(tmp_path / "cues", flags, steps=(2, 6))
    try:
        with first.paused_at(2):  # in epoch 1, before any checkpoint: both start at once
            assert_refused_naming(train_cli(*command_line({**flags, "seed": 7})), first.process.pid)
        with first.paused_at(6):  # in epoch 2: epoch 1's checkpoint is on disk
            assert_refused_naming(train_cli("--resume", str(out)), first.process.pid)
    finally:
        returncode, output = first.finish()
    assert returncode == 0, output
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]  # one run's rows, not two interleaved
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["seed"] == tiny_flags.get("seed", 0) and summary["epochs"] == 2


# ------------------------------------------------------------------------------------------
# Finishing is idempotent


@pytest.fixture(scope="module")
def finished(tiny_flags, tmp_path_factory):
    from fastcifar.train import train

    out = tmp_path_factory.mktemp("finished") / "run"
    train(**{**tiny_flags, "out": str(out)})
    return out


def test_resuming_a_complete_checkpoint_writes_what_is_missing(finished, tmp_path):
    from fastcifar.study import jobs
    from fastcifar.train import train

    run = shutil.copytree(finished, tmp_path / "run")
    expected = json.loads((run / "summary.json").read_text())
    checkpoint = (run / "checkpoint.pt").read_bytes()
    (run / "summary.json").unlink()  # a kill or a full disk at the very end
    (run / "curves.png").unlink()
    assert jobs.state(run) == "interrupted"
    summary = train(resume=str(run))
    assert (run / "curves.png").stat().st_size > 0
    written = json.loads((run / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary)) and jobs.state(run) == "finished"
    assert {k: written[k] for k in ("epochs", "final_top1", "final_top5")} == {
        k: expected[k] for k in ("epochs", "final_top1", "final_top5")
    }
    assert {**written["config"], "out": None} == {**expected["config"], "out": None}  # the copy has another out
    assert (run / "checkpoint.pt").read_bytes() == checkpoint  # no epoch trained again


def test_resuming_a_finished_run_keeps_its_files(finished, tmp_path):
    from fastcifar.train import train

    run = shutil.copytree(finished, tmp_path / "run")
    before = {name: (run / name).read_bytes() for name in ("summary.json", "curves.png", "checkpoint.pt")}
    assert train(resume=str(run)) == json.loads(before["summary.json"])
    assert {name: (run / name).read_bytes() for name in before} == before


# ------------------------------------------------------------------------------------------
# Resume on other data


@pytest.fixture(scope="module")
def stopped(tiny_flags, tmp_path_factory):
    """A 2-epoch run on its own synthetic data (64 / 40 images), stopped by Ctrl-C in epoch 2."""
    from fastcifar.data.prepare import prepare
    from fastcifar.train import train

    base = tmp_path_factory.mktemp("stopped")
    prepare(dataset="synthetic", root=base / "data", n_train=64, n_test=40, seed=0)
    flags = {**tiny_flags, "epochs": 2, "data_root": str(base / "data"), "out": str(base / "run")}
    assert train(**flags, batch_hook=InterruptAtStep(6))["interrupted"]
    return base


def private_run(stopped: Path, tmp_path: Path, data_root: Path) -> Path:
    """A copy of the stopped run whose checkpoint says it was started on ``data_root``."""
    from fastcifar.training import checkpoint as ckpt

    run = shutil.copytree(stopped / "run", tmp_path / "run")
    state = ckpt.load_checkpoint(run / "checkpoint.pt")
    state["config"]["data_root"] = str(data_root)
    ckpt.save_checkpoint(run / "checkpoint.pt", {k: v for k, v in state.items() if k != "format_version"})
    return run


def test_resume_refuses_data_prepared_again_with_other_sizes(stopped, tmp_path):
    from fastcifar.data.prepare import prepare
    from fastcifar.train import train

    root = shutil.copytree(stopped / "data", tmp_path / "data")
    run = private_run(stopped, tmp_path, root)
    prepare(dataset="synthetic", root=root, n_train=32, n_test=64, seed=0)  # rebuilt between the attempts
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(UserError, match="is not the data the run") as refused:
        train(resume=str(run))
    assert "image counts differ" in str(refused.value) and "--data_root" in str(refused.value)
    assert (run / "checkpoint.pt").read_bytes() == before and not (run / "summary.json").exists()


def test_resume_refuses_same_sized_data_with_other_images(stopped, tmp_path):
    from fastcifar.data.prepare import prepare
    from fastcifar.train import train

    run = private_run(stopped, tmp_path, stopped / "data")
    other = tmp_path / "other"
    prepare(dataset="synthetic", root=other, n_train=64, n_test=40, seed=1)
    with pytest.raises(UserError, match="beton contents differ"):
        train(resume=str(run), data_root=str(other))


def test_resume_of_moved_data_is_refused_without_preparing_and_continues_with_data_root(stopped, tmp_path):
    from fastcifar.train import train

    gone = tmp_path / "gone"  # where the run's data was before the folder moved
    run = private_run(stopped, tmp_path, gone)
    moved = shutil.copytree(stopped / "data", tmp_path / "moved")
    with pytest.raises(UserError, match="holds no prepared data now") as refused:
        train(resume=str(run))
    assert "--data_root" in str(refused.value)
    assert not gone.exists()  # nothing was prepared (or downloaded) at the old path
    summary = train(resume=str(run), data_root=str(moved))
    assert summary["epochs"] == 2 and summary["config"]["data_root"] == str(moved)


def test_no_command_trains_on_data_that_says_it_is_another_data_set(tiny_flags, train_data, tmp_path):
    from fastcifar.train import train

    root = tmp_path / "data"
    shutil.copytree(Path(train_data) / "synthetic", root / "cifar10")  # synthetic data renamed into place
    with pytest.raises(UserError, match="describes the data set 'synthetic', not 'cifar10'"):
        train(**{**tiny_flags, "dataset": "cifar10", "data_root": str(root), "out": str(tmp_path / "run")})
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------
# One prepare per data folder

# prepare in its own process, paused before its first beton until the test says go.
_PAUSED_PREPARE = """
import sys, time
from pathlib import Path
import fastcifar.data.prepare as prepare_module

write_beton, cues = prepare_module.write_beton, Path(sys.argv[2])

def paused_write_beton(*args, **kwargs):
    (cues / "at-1").touch()
    deadline = time.monotonic() + 600
    while not (cues / "go-1").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return write_beton(*args, **kwargs)

prepare_module.write_beton = paused_write_beton
prepare_module.prepare(dataset="synthetic", root=sys.argv[1], n_train=32, n_test=16)
"""


def test_a_second_prepare_of_one_data_folder_is_refused(tmp_path):
    cues = tmp_path / "cues"
    cues.mkdir()
    first = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_PREPARE, str(tmp_path / "data"), str(cues)],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (cues / "at-1").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stdout.read()
            time.sleep(0.1)
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "fastcifar.data",
                "prepare",
                "--dataset",
                "synthetic",
                "--root",
                str(tmp_path / "data"),
            ],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        (cues / "go-1").touch()
        output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output
    assert_refused_naming(second, first.pid)
    assert "fastcifar.data: error:" in second.stderr
    from fastcifar.data.prepare import load_meta

    assert load_meta(tmp_path / "data", "synthetic")["counts"] == {"train": 32, "test": 16}  # the first one's


# ------------------------------------------------------------------------------------------
# The study checks everything before it writes or launches


def study_flags(train_data, **changes) -> dict:
    from tiny_runs import one_epoch_flags

    return {**dict(rows="densenet", seeds=1, tiny=True, **one_epoch_flags(train_data)), **changes}


@pytest.fixture
def no_launch(monkeypatch):
    """Any training launch fails the test."""
    from fastcifar.study import jobs

    def launched(*args, **kwargs):
        pytest.fail("a training was launched")

    monkeypatch.setattr(jobs, "attempt", launched)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"lr": "abc"}, "--lr must be a number, got 'abc'"),
        ({"model_kwargs": {"depth": 3}}, "no option 'depth'"),
        ({"model_kwargs": {"growth_rate": "abc"}}, "do not fit model 'densenet121'"),
        ({"seeds": 100000000}, "--seeds must be at most 1000"),
        ({"ray_address": "auto"}, "--ray_address needs --executor ray"),
        ({"devices": "0"}, "--devices selects GPUs; it cannot be combined with --device cpu"),
    ],
)
def test_a_study_checks_its_flags_before_it_writes_anything(changes, message, train_data, tmp_path, no_launch):
    from fastcifar.study import run

    with pytest.raises(UserError, match=message):
        run(out=str(tmp_path / "study"), print_fn=lambda line: None, **study_flags(train_data, **changes))
    assert not (tmp_path / "study").exists()  # no folder, no plan, no run claimed


def test_a_study_without_data_and_without_a_network_stops_before_any_launch(tmp_path, monkeypatch, no_launch):
    from fastcifar.data import archive
    from fastcifar.study import run

    def offline(*args, **kwargs):
        raise UserError("cannot download cifar-100-python.tar.gz: network is unreachable")

    monkeypatch.setattr(archive, "download", offline)
    flags = study_flags(tmp_path / "data", dataset="cifar100", rows="densenet,dense_ca")
    with pytest.raises(UserError, match="network is unreachable"):
        run(out=str(tmp_path / "study"), print_fn=lambda line: None, **flags)
    assert not (tmp_path / "study" / "study-plan.json").exists()


def test_a_second_study_run_on_one_folder_is_refused(train_data, tmp_path, no_launch):
    from tiny_runs import start_holder

    from fastcifar.study import run

    holder = start_holder(tmp_path / "study", "fastcifar.study run")
    try:
        with pytest.raises(UserError, match=f"is in use by pid {holder.pid} on host"):
            run(out=str(tmp_path / "study"), print_fn=lambda line: None, **study_flags(train_data))
    finally:
        holder.stdin.close()
        holder.wait()
    assert not (tmp_path / "study" / "study-plan.json").exists()


@pytest.fixture(scope="module")
def finished_study(train_data, tmp_path_factory):
    """A study of one row and one seed, finished."""
    from fastcifar.study import run

    out = tmp_path_factory.mktemp("study") / "S1"
    report = run(out=str(out), print_fn=lambda line: None, **study_flags(train_data))
    assert [r["status"] for r in report["runs"]] == ["finished"]
    return out


def rerun(out: Path, train_data, **changes) -> tuple[dict, list[str]]:
    from fastcifar.study import run

    lines: list[str] = []
    return run(out=str(out), print_fn=lines.append, **study_flags(train_data, **changes)), lines


def test_a_moved_study_folder_continues(finished_study, train_data, tmp_path):
    moved = shutil.copytree(finished_study, tmp_path / "S2")
    report, lines = rerun(moved, train_data)
    assert not any(line.startswith("start") for line in lines)
    assert [r["status"] for r in report["runs"]] == ["finished"] and "1/1 runs finished" in lines[-1]


def test_a_row_with_a_complete_checkpoint_is_finished_not_failed(finished_study, train_data, tmp_path):
    from fastcifar.study import jobs

    copy = shutil.copytree(finished_study, tmp_path / "S")
    folder = copy / "densenet" / "seed0"
    (folder / "summary.json").unlink()  # a kill at the very end of the training
    record = json.loads((folder / "study-run.json").read_text())
    record["attempts"].append({"status": "failed", "returncode": -9, "error": "killed"})
    (folder / "study-run.json").write_text(json.dumps(record))
    assert jobs.state(folder) == "failed"
    report, lines = rerun(copy, train_data)
    assert [r["status"] for r in report["runs"]] == ["finished"] and jobs.state(folder) == "finished"
    assert json.loads((folder / "study-run.json").read_text())["attempts"][-1]["status"] == "finished"


def test_fewer_seeds_after_a_mistaken_many_is_not_an_error(finished_study, train_data, tmp_path):
    from fastcifar.study import runner
    from fastcifar.study.rows import ROWS

    copy = shutil.copytree(finished_study, tmp_path / "S")
    given = {k: v for k, v in study_flags(train_data).items() if k not in ("rows", "seeds", "tiny")}
    flags = runner.normalise_train_flags(given)
    flags.setdefault("compile_cache", str((copy / runner.COMPILE_CACHE_NAME).resolve()))
    # `--seeds 40` stopped by Ctrl-C before any of its new runs started: claimed, never launched.
    runner._record_plan(copy, "all", [ROWS["densenet"]], 40, "study", True, flags)
    assert json.loads((copy / "study-plan.json").read_text())["seeds"] == 40
    report, lines = rerun(copy, train_data, seeds=1)
    assert "1/1 runs finished" in lines[-1] and not any(line.startswith("start") for line in lines)
    assert [(r["seed"], r["status"]) for r in report["runs"]] == [(0, "finished")]
    assert json.loads((copy / "study-plan.json").read_text())["seeds"] == 1


@pytest.mark.slow
def test_two_real_study_runs_on_one_folder_one_is_refused_and_the_other_finishes(train_data, tmp_path):
    """Two `study run` processes on one --out: the second is refused naming the first, which finishes."""
    from tiny_runs import command_line

    from fastcifar.locks import FolderInUse, holder
    from fastcifar.study import run

    out = tmp_path / "study"
    flags = study_flags(train_data)
    first = subprocess.Popen(
        [sys.executable, "-m", "fastcifar.study", "run", *command_line({**flags, "out": str(out)})],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while (holder(out) or {}).get("pid") != first.pid:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        with pytest.raises(FolderInUse, match=f"is in use by pid {first.pid} on host"):
            run(out=str(out), print_fn=lambda line: None, **flags)
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert "1/1 runs finished" in stdout
    plan = json.loads((out / "study-plan.json").read_text())
    assert plan["rows"] == ["densenet"] and plan["seeds"] == 1
