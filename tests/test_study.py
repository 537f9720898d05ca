"""The study runner: rows, recipe -> flags, statistics, scheduling, and whole studies on tiny CPU runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from cli_checks import assert_user_error

from fastcifar.errors import UserError
from fastcifar.study import CLAIMS, EXPERIMENTS, ROWS, train_args
from fastcifar.study import jobs as study_runs
from fastcifar.study.jobs import RunSpec
from fastcifar.study.rows import Row, study_result
from fastcifar.study.runner import Progress, Scheduler
from fastcifar.study.stats import t_quantile, t_two_sided_p, welch

# ------------------------------------------------------------------------------------------
# Rows, experiments and the recipe -> flags mapping


def test_every_table_row_has_the_reports_figures():
    for name in ("table1", "table2"):
        for row_id in EXPERIMENTS[name]:
            study = study_result(ROWS[row_id])
            assert study.params and study.top1 is not None and study.top5 is not None, row_id
            assert study.method and study.source, row_id
    for row_id in EXPERIMENTS["base"]:  # the report gives the base methods' final losses
        study = study_result(ROWS[row_id])
        assert study.train_loss is not None and study.test_loss is not None, row_id
    # Each SK rule reads its own figures (k=5 is the registry's default configuration).
    assert [study_result(ROWS[f"dense_sk_k{k}"]).top1 for k in (2, 4, 5, 6)] == [75.41, 76.94, 77.27, 76.74]
    assert study_result(ROWS["dense_sk_k5"]).train_loss == 0.207


def test_claims_compare_rows_of_their_experiment():
    for name, claims in CLAIMS.items():
        for better, worse, text in claims:
            assert better in EXPERIMENTS[name] and worse in EXPERIMENTS[name] and text


def _parse(args: list[str]) -> dict:
    """The flags as fastcifar.train's fire command line reads them."""
    import ast

    parsed = {}
    for token in args:
        name, _, value = token[2:].partition("=")
        if not value:
            parsed[name[2:] if name.startswith("no") else name] = not name.startswith("no")
        else:
            parsed[name] = ast.literal_eval(value)
    return parsed


def test_train_args_apply_the_notebook_recipe_only_with_recipe_study():
    from fastcifar.cli import parse_command_line
    from fastcifar.train import train_command

    triplet = _parse(train_args(ROWS["triplet_resnet"], seed=3, out="/x/triplet_resnet/seed3"))
    assert triplet["weight_decay"] == 5e-4 and triplet["lr"] == 0.001 and triplet["randaugment"] is False
    assert triplet["arch"] == "triplet_resnet" and triplet["seed"] == 3 and triplet["out"] == "/x/triplet_resnet/seed3"
    assert _parse(train_args(ROWS["van"], seed=0, out="o"))["schedule"] == "constant"
    for row in ("triplet_resnet", "van"):
        uniform = _parse(train_args(ROWS[row], seed=0, out="o", recipe="uniform"))
        assert not {"weight_decay", "lr", "randaugment", "schedule"} & set(uniform)
    # The user's flags apply to every row and win over a row's deviation; the executor picks the device.
    user = {"lr": 0.02, "fast": True, "device": "cpu"}
    mine = _parse(train_args(ROWS["triplet_resnet"], seed=0, out="o", flags=user))
    assert mine["lr"] == 0.02 and mine["fast"] is True and "device" not in mine
    # Every produced flag is one fastcifar.train knows.
    for row in ROWS.values():
        args = train_args(row, seed=0, out="o", tiny=True)
        assert parse_command_line(args, train_command())[1] == _parse(args)
    with pytest.raises(UserError, match="recipe"):
        train_args(ROWS["van"], seed=0, out="o", recipe="fair")


def test_tiny_and_user_model_kwargs_keep_the_rows_own_overrides():
    from fastcifar.models import tiny_overrides

    kwargs = _parse(train_args(ROWS["dense_sk_k4"], seed=0, out="o", tiny=True))["model_kwargs"]
    assert kwargs["k"] == 4 and kwargs["growth_rate"] == tiny_overrides("sk_densenet")["growth_rate"]
    user = {"model_kwargs": {"growth_rate": 6}}
    kwargs = _parse(train_args(ROWS["dense_sk_k4"], seed=0, out="o", tiny=True, flags=user))["model_kwargs"]
    assert kwargs["growth_rate"] == 6 and kwargs["k"] == 4


def test_unknown_rows_experiments_and_flags_fail_with_one_line(tmp_path):
    from fastcifar.study import run, select_rows

    with pytest.raises(UserError, match="dense_sk_k9"):
        select_rows("all", "dense_sk_k9")
    with pytest.raises(UserError, match="table3"):
        select_rows("table3")
    with pytest.raises(UserError, match="--epoch"):
        run(rows="van", out=str(tmp_path), epoch=1)
    with pytest.raises(UserError, match="set by the study"):
        run(rows="van", out=str(tmp_path), seed=1)
    assert not (tmp_path / "study-plan.json").exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["bogus"], "unknown command"),
        (["list", "--x"], "unknown flag --x"),
        (["report", "--bogus=1", "d"], "unknown flag --bogus"),
    ],
)
def test_cli_mistakes_are_one_line_exit_2(argv, words):
    result = subprocess.run(
        [sys.executable, "-m", "fastcifar.study", *argv], capture_output=True, text=True, timeout=120
    )
    assert_user_error(result, "fastcifar.study", words)


def test_ray_missing_says_how_to_install(monkeypatch, tmp_path):
    from fastcifar.study.executors import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r'pip install -e "\.\[cluster\]"'):
        RayExecutor(str(tmp_path), None, "cpu", lambda *a: None, lambda s, r: r)


def test_unwritable_study_folder_is_named(tmp_path):
    from fastcifar.study.executors import check_writable

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert check_writable(str(tmp_path)) is None
    problem = check_writable(str(blocker / "out"))
    assert problem is not None and "cannot write" in problem and "shares" in problem and "\n" not in problem


def test_device_slots_on_cpu():
    from fastcifar.study.executors import device_slots

    slots = device_slots("cpu")
    assert [(s.label, s.device_flag) for s in slots] == [("cpu", "cpu")]
    with pytest.raises(UserError):
        device_slots("cpu", devices="0,1")
    import torch

    if not torch.cuda.is_available():
        assert [s.label for s in device_slots(None)] == ["cpu"]
        with pytest.raises(UserError, match="needs a GPU"):
            device_slots("cuda")


def test_resume_is_chosen_when_a_checkpoint_exists(tmp_path):
    spec = RunSpec("van", 0, str(tmp_path), ("--arch='van'", "--seed=0"))
    assert "--arch='van'" in study_runs.command(spec, "cpu")
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    cmd = study_runs.command(spec, "cpu")
    assert f"--resume={str(tmp_path)!r}" in cmd and "--arch='van'" not in cmd
    assert study_runs.state(tmp_path) == "interrupted"
    (tmp_path / "summary.json").write_text("{}")
    assert study_runs.state(tmp_path) == "finished"


# ------------------------------------------------------------------------------------------
# Statistics against textbook values


def test_t_distribution_matches_tables():
    # Two-sided 5% critical values of Student's t (any statistics table).
    for df, critical in ((1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)):
        assert t_quantile(0.975, df) == pytest.approx(critical, abs=1e-3)
        assert t_two_sided_p(critical, df) == pytest.approx(0.05, abs=1e-4)
    assert t_two_sided_p(0.0, 5) == pytest.approx(1.0)


def test_welch_difference_interval_and_symmetry():
    a, b = [77.1, 77.4, 77.3], [76.8, 77.0, 76.9]
    ab, ba = welch(a, b), welch(b, a)
    assert ab.diff == pytest.approx(sum(a) / 3 - sum(b) / 3)
    assert ba.diff == pytest.approx(-ab.diff) and ba.p == pytest.approx(ab.p) and ba.ci95 == pytest.approx(ab.ci95)
    assert ab.p < 0.05 and ab.ci95 < ab.diff  # clearly separated: the interval excludes 0
    assert welch([1.0], [2.0, 3.0]) is None
    wide = welch([70.0, 72.0, 74.0], [71.0, 73.0, 70.0])
    assert wide.p > 0.05 and wide.ci95 > abs(wide.diff)


# ------------------------------------------------------------------------------------------
# Scheduling: retried once, a user error not retried, failures never stop the others


class FakeExecutor:
    """Runs attempts synchronously from a table of outcomes (no subprocess)."""

    def __init__(self, scheduler: Scheduler, outcomes: dict[str, list[dict]]) -> None:
        self.scheduler, self.outcomes, self.started = scheduler, outcomes, []
        self._done: dict[int, tuple[RunSpec, dict]] = {}

    def submit(self, spec):
        self.scheduler.progress.started(spec, "fake")
        self.started.append(spec.name)
        result = {"device": "fake", "returncode": 0, "seconds": 0.0, **self.outcomes[spec.name].pop(0)}
        handle = len(self.started)
        self._done[handle] = (spec, self.scheduler.on_finish(spec, result))
        return handle

    def wait_any(self, handles):
        handle = sorted(handles)[0]
        return handle, self._done.pop(handle)[1]

    def interrupt(self, handles):
        pass


def test_failed_attempt_is_retried_once_and_recorded(tmp_path):
    specs = [RunSpec(r, 0, str(tmp_path / r), ()) for r in ("flaky", "broken", "usererror", "fine")]
    fail = {"status": "failed", "returncode": 3, "error": "NaN loss", "retriable": True}
    outcomes = {
        "flaky seed0": [fail, {"status": "finished", "top1": 1.0}],
        "broken seed0": [fail, fail, {"status": "finished"}],
        "usererror seed0": [{**fail, "returncode": 2, "retriable": False}],
        "fine seed0": [{"status": "finished", "top1": 2.0}],
    }
    lines: list[str] = []
    scheduler = Scheduler(Progress(len(specs), lines.append))
    fake = FakeExecutor(scheduler, outcomes)
    outcome = scheduler.execute(specs, fake)
    scheduler.progress.close()
    assert outcome == {
        "flaky seed0": "finished",
        "broken seed0": "failed",
        "usererror seed0": "failed",
        "fine seed0": "finished",
    }
    assert fake.started.count("flaky seed0") == 2 and fake.started.count("broken seed0") == 2
    assert fake.started.count("usererror seed0") == 1
    record = study_runs.read_record(tmp_path / "broken")
    assert [a["status"] for a in record["attempts"]] == ["failed", "failed"]
    assert study_runs.state(tmp_path / "broken") == "failed"
    assert any(line.startswith("failed broken seed0") and "retrying once" in line for line in lines)
    assert any(line.startswith("done   fine seed0 on fake: top-1 2.00%") for line in lines)


# ------------------------------------------------------------------------------------------
# Whole studies: two tiny rows x two seeds x one epoch on CPU, each run a real fastcifar.train
# subprocess (its start-up dominates: marked slow, they share one reference study)


ROWS_UNDER_TEST = "densenet,dense_ca"  # Table 2 rows with a claim between them (CA improves DenseNet)


def study_flags(train_data) -> dict:
    from tiny_runs import one_epoch_flags

    return dict(experiment="table2", rows=ROWS_UNDER_TEST, seeds=2, tiny=True, **one_epoch_flags(train_data))


def without_timing(value):
    """study.json minus what depends on the clock (every "timing" entry)."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k != "timing"}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


@pytest.fixture(scope="module")
def reference_study(train_data, tmp_path_factory):
    from fastcifar.study import run

    out = tmp_path_factory.mktemp("study") / "local"
    lines: list[str] = []
    report = run(out=str(out), print_fn=lines.append, **study_flags(train_data))
    return out, report, lines


@pytest.mark.slow
def test_local_study_trains_every_run_and_reports(reference_study):
    out, report, lines = reference_study
    assert [(r["row"], r["seed"], r["status"]) for r in report["runs"]] == [
        (row, seed, "finished") for row in ("densenet", "dense_ca") for seed in (0, 1)
    ]
    for run in report["runs"]:
        summary = json.loads((out / run["folder"] / "summary.json").read_text())
        assert summary["config"]["seed"] == run["seed"]
        assert summary["config"]["arch"] == ROWS[run["row"]].model
    assert sum(line.startswith("start  ") for line in lines) == 4
    assert sum(line.startswith("done   ") and "top-1" in line and " s" in line for line in lines) == 4
    # Different seeds train differently; the table holds mean ± std over both.
    ca = report["rows"]["dense_ca"]
    assert ca["top1"]["n"] == 2 and ca["top1"]["study"] == 75.54 and ca["top5"]["study"] == 94.11
    assert ca["top1"]["diff"] == pytest.approx(ca["top1"]["mean"] - 75.54, abs=1e-3)
    assert ca["params"]["ours"] > 0 and ca["params"]["study"] == "2.92M"
    assert ca["timing"]["device_kind"] == "CPU" and ca["timing"]["device_hours"] > 0
    (claim,) = report["experiments"]["table2"]["claims"]
    assert (claim["better"], claim["worse"], claim["n"]) == ("dense_ca", "densenet", [2, 2])
    assert claim["verdict"] in ("holds", "reversed", "not resolved") and claim["statement"]
    text = (out / "study.md").read_text()
    assert "75.54" in text and "94.11" in text and "Welch" in text and claim["statement"] in text
    for png in ("curves.png", "accuracy_vs_params.png", "accuracy_vs_time.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_rebuilds_identical_files(reference_study):
    from fastcifar.study.__main__ import main

    out = reference_study[0]
    names = ("study.md", "study.json", "curves.png", "accuracy_vs_params.png", "accuracy_vs_time.png")
    before = {name: (out / name).read_bytes() for name in names}
    for name in names:
        (out / name).unlink()
    main(["report", str(out)])
    assert {name: (out / name).read_bytes() for name in names} == before


@pytest.mark.slow
def test_report_has_superclass_top1_from_each_runs_cached_evaluation(reference_study):
    from fastcifar.study.report import write_report

    out, report, _ = reference_study
    for row_id in ("densenet", "dense_ca"):
        folders = [out / row_id / f"seed{seed}" for seed in (0, 1)]
        evaluations = [json.loads((folder / "eval" / "eval.json").read_text()) for folder in folders]
        for folder, evaluation in zip(folders, evaluations):
            assert evaluation["top1"] == json.loads((folder / "summary.json").read_text())["final_top1"]
        values = [e["plain"]["superclass_top1"] for e in evaluations]
        stats = report["rows"][row_id]["superclass_top1"]
        assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(values) / 2, abs=1e-4)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/eval/eval.json")}
    write_report(out)  # computed once: the second report reads the cached evaluations
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/eval/eval.json")} == stamps
    assert "superclass top-1 ours" in (out / "study.md").read_text()


@pytest.mark.slow
def test_rerun_skips_finished_runs(reference_study, train_data):
    from fastcifar.study import run

    out, report, _ = reference_study
    stamps = {r["folder"]: (out / r["folder"] / "summary.json").stat().st_mtime_ns for r in report["runs"]}
    lines: list[str] = []
    # Runtime flags (what --resume accepts too) may change between calls; the runs stay the same.
    again = run(out=str(out), print_fn=lines.append, **{**study_flags(train_data), "log_every": 3})
    assert not any(line.startswith("start") for line in lines)
    assert stamps == {r["folder"]: (out / r["folder"] / "summary.json").stat().st_mtime_ns for r in again["runs"]}
    with pytest.raises(UserError, match="another --out"):
        run(out=str(out), print_fn=lines.append, **{**study_flags(train_data), "batch_size": 8})


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_stopped_runner_continues_to_the_same_report(how, reference_study, train_data, tmp_path):
    """Kill (or Ctrl-C) the runner once a run has finished, re-run: same report, nothing retrained."""
    from fastcifar.study import run

    flags = study_flags(train_data)
    out = tmp_path / "stopped"
    cmd = [sys.executable, "-m", "fastcifar.study", "run", f"--out={str(out)!r}"]
    cmd += [f"--{k}={v!r}" if not isinstance(v, bool) else f"--{k}" for k, v in flags.items()]
    runner = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list(out.glob("*/seed*/summary.json")) and time.monotonic() < deadline and runner.poll() is None:
        time.sleep(0.2)
    runner.send_signal(getattr(signal, how))
    _, stderr = runner.communicate(timeout=180)
    if how == "SIGINT":  # each training saved its checkpoint; one line says how to continue
        assert runner.returncode == 130
        assert "re-run the same command" in stderr.strip().splitlines()[-1]
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/summary.json")}
    assert finished, "no run finished before the runner was stopped"
    time.sleep(3)  # a killed runner's training got SIGTERM with it: nothing writes any more
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/summary.json")} == finished

    lines: list[str] = []
    report = run(out=str(out), print_fn=lines.append, **flags)
    started = {line.split()[1] + "/" + line.split()[2] for line in lines if line.startswith("start")}
    for path, stamp in finished.items():
        assert path.stat().st_mtime_ns == stamp  # not retrained
        assert f"{path.parent.parent.name}/{path.parent.name}" not in started
    assert len(started) == 4 - len(finished)
    assert without_timing(report) == without_timing(reference_study[1])


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP], ids=lambda s: s.name)
def test_a_cluster_stop_signal_stops_the_study_cleanly_and_it_continues(signum, train_data, tmp_path):
    """The runner passes the signal on: the training saves, the attempt is recorded as preempted,
    the runner exits 75 with one line, and the next start resumes the run to its end (SIGTERM)."""
    from fastcifar.preemption import PREEMPTED_EXIT_CODE
    from fastcifar.study import run

    # 32 steps per epoch, 3 epochs: still training when the signal comes.
    flags = {**study_flags(train_data), "rows": "densenet", "seeds": 1, "epochs": 3, "batch_size": 2}
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "fastcifar.study", "run", f"--out={str(out)!r}"]
    cmd += [f"--{k}={v!r}" if not isinstance(v, bool) else f"--{k}" for k, v in flags.items()]
    runner = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "densenet" / "seed0" / "train.log"
    deadline = time.monotonic() + 300
    while not (log.is_file() and "epoch 1/3" in log.read_text(errors="replace")):
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()
        time.sleep(0.2)
    runner.send_signal(signum)
    stdout, stderr = runner.communicate(timeout=180)
    assert runner.returncode == PREEMPTED_EXIT_CODE, stderr
    last = stderr.strip().splitlines()[-1]
    assert f"error: preempted by {signum.name}; the trainings saved their checkpoints: re-run the same" in last
    assert "(checkpoint saved)" in stdout + stderr
    (attempt,) = study_runs.read_record(log.parent)["attempts"]
    assert attempt["status"] == "interrupted" and attempt["preempted"] and attempt["checkpoint"]
    assert attempt["returncode"] == PREEMPTED_EXIT_CODE
    assert study_runs.state(log.parent) == "interrupted"
    assert f"preempted by {signum.name}" in log.read_text()

    if signum != signal.SIGTERM:  # the next start is the same for every signal: checked once
        return
    report = run(out=str(out), print_fn=lambda line: None, **flags)
    assert [r["status"] for r in report["runs"]] == ["finished"]
    attempts = study_runs.read_record(log.parent)["attempts"]
    assert [(a["status"], a["resumed"]) for a in attempts] == [("interrupted", False), ("finished", True)]


def test_a_stopped_run_without_a_checkpoint_is_not_said_to_be_saved():
    lines: list[str] = []
    progress = Progress(2, lines.append)
    spec = RunSpec("row", 0, "/nowhere", ())
    for checkpoint in (True, False):
        progress.finished(
            spec, {"status": "interrupted", "device": "cpu", "seconds": 1.0, "checkpoint": checkpoint}, False
        )
    progress.close()
    assert lines[0].endswith("(checkpoint saved)")
    assert "checkpoint saved" not in lines[1] and lines[1].endswith("(no checkpoint yet: starts afresh next time)")


@pytest.mark.slow
def test_failing_row_is_reported_while_the_others_finish(monkeypatch, train_data, tmp_path):
    from fastcifar.study import rows as rows_module
    from fastcifar.study.__main__ import main

    # Seven dense blocks pass every up-front check (the network builds), but their six transitions
    # pool a 32x32 image below 1x1, so the training itself fails at its first forward.
    monkeypatch.setitem(rows_module.ROWS, "broken", Row("broken", "densenet121", {"block_config": (1,) * 7}))
    flags = {**study_flags(train_data), "rows": "densenet,broken", "seeds": 1}
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "run",
                f"--out={str(tmp_path)!r}",
                *(f"--{k}={v!r}" if not isinstance(v, bool) else f"--{k}" for k, v in flags.items()),
            ]
        )
    assert exit_info.value.code == 1
    report = json.loads((tmp_path / "study.json").read_text())
    status = {r["row"]: r for r in report["runs"]}
    assert status["densenet"]["status"] == "finished"
    assert status["broken"]["status"] == "failed" and "Output size is too small" in status["broken"]["error"]
    assert "broken" in report["experiments"]["other"]["rows"]
    assert "failed: " in (tmp_path / "study.md").read_text()


@pytest.mark.slow
def test_same_study_through_a_local_ray_cluster(reference_study, train_data, tmp_path):
    ray = pytest.importorskip("ray", reason='Ray is the optional extra: pip install -e ".[cluster]"')
    from fastcifar.study import run

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        lines: list[str] = []
        report = run(out=str(tmp_path / "ray"), executor="ray", print_fn=lines.append, **study_flags(train_data))
    finally:
        ray.shutdown()
    assert any("ray executor" in line for line in lines)
    assert sum(line.startswith("done   ") for line in lines) == 4
    attempts = [study_runs.read_record(tmp_path / "ray" / r["folder"])["attempts"] for r in report["runs"]]
    assert all(a[-1]["device"].endswith(":cpu") for a in attempts)
    assert without_timing(report) == without_timing(reference_study[1])
    # Every task, on whichever node, is told the study's one compile cache (on the shared study folder).
    cache = str((tmp_path / "ray" / "compile-cache").resolve())
    for r in report["runs"]:
        assert f"--compile_cache={cache!r}" in (tmp_path / "ray" / r["folder"] / "train.log").read_text()


@pytest.mark.slow
def test_seeds_of_a_compiled_row_share_one_compile_cache(train_data, tmp_path, monkeypatch):
    """The study gives its runs one cache: the second seed of a row finds every graph the first compiled."""
    from fastcifar.study import run

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "not-this-one"))  # the study's cache wins
    out = tmp_path / "study"
    flags = {**study_flags(train_data), "rows": "densenet", "compile": True, "model_kwargs": {"block_config": [1]}}
    lines: list[str] = []
    report = run(out=str(out), print_fn=lines.append, **flags)
    summaries = [json.loads((out / r["folder"] / "summary.json").read_text()) for r in report["runs"]]
    first, second = (summary["compile_cache"] for summary in summaries)
    cache = str((out / "compile-cache").resolve())
    assert first["dir"] == second["dir"] == cache and any(os.scandir(cache))
    assert first["hits"] == 0 and first["misses"] >= 3 and first["hit"] is False  # forward, backward, evaluation
    assert second == {**first, "hits": first["misses"], "misses": 0, "hit": True}
    assert all(summary["compile_seconds"] > 0 for summary in summaries)
    assert not (tmp_path / "not-this-one").exists()
    assert any(line.endswith(f"compile cache {cache}") for line in lines)


@pytest.mark.slow
def test_copy_of_a_study_folder_reports_the_same(reference_study, tmp_path):
    """The report depends on the folder's content only (relative folders, no absolute paths)."""
    from fastcifar.study.report import write_report

    out = reference_study[0]
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert without_timing(write_report(copy)) == without_timing(json.loads((out / "study.json").read_text()))
    assert str(out) not in (copy / "study.json").read_text()
    assert os.path.exists(copy / "study.md")
