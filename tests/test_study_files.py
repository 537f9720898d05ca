"""A study folder's files damaged or not writable: one line naming the file and what to do, or the
half-written last line of the append-only metrics log skipped (what a kill while appending leaves)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fastcifar.errors import UserError
from fastcifar.study import jobs
from fastcifar.study.report import write_report
from fastcifar.study.runner import PLAN_NAME

ROW = "densenet"
EPOCHS = [
    {"epoch": 1, "train_loss": 4.5, "test_loss": 4.4, "top1": 2.0, "top5": 8.0},
    {"epoch": 2, "train_loss": 4.2, "test_loss": 4.1, "top1": 4.0, "top5": 12.0},
]
SUMMARY = {
    "final_top1": 4.0,
    "final_top5": 12.0,
    "final_train_loss": 4.2,
    "final_test_loss": 4.1,
    "mean_epoch_seconds": 1.5,
    "images_per_s": 100.0,
    "total_seconds": 3.0,
    "device": "cpu",
}


def study_folder(root, metrics_text: str | None = None):
    """A finished one-run study as ``study run --rows densenet --seeds 1 --tiny`` leaves it."""
    out = root / "study"
    run = jobs.run_folder(out, ROW, 0)
    run.mkdir(parents=True)
    plan = {"experiments": ["table2"], "rows": [ROW], "seeds": 1, "recipe": "study", "tiny": True, "flags": {}}
    (out / PLAN_NAME).write_text(json.dumps(plan))
    (run / jobs.SUMMARY_NAME).write_text(json.dumps(SUMMARY))
    (run / jobs.RECORD_NAME).write_text(json.dumps({"row": ROW, "seed": 0, "args": [], "attempts": []}))
    text = "".join(json.dumps(row) + "\n" for row in EPOCHS) if metrics_text is None else metrics_text
    (run / "metrics.jsonl").write_text(text)
    return out


def truncate(path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def test_the_folder_as_written_reports(tmp_path):
    report = write_report(study_folder(tmp_path))
    assert report["curves"][ROW]["epoch"] == [1, 2]


@pytest.mark.parametrize("name", [PLAN_NAME, f"{ROW}/seed0/{jobs.RECORD_NAME}", f"{ROW}/seed0/{jobs.SUMMARY_NAME}"])
def test_a_truncated_json_file_is_one_line_naming_it(tmp_path, name):
    out = study_folder(tmp_path)
    truncate(out / name)
    with pytest.raises(UserError) as caught:
        write_report(out)
    message = str(caught.value)
    assert str(out / name) in message and "delete it and re-run" in message and "\n" not in message


@pytest.mark.parametrize("name", [PLAN_NAME, f"{ROW}/seed0/{jobs.RECORD_NAME}", f"{ROW}/seed0/{jobs.SUMMARY_NAME}"])
def test_study_run_on_a_truncated_file_stops_before_training(tmp_path, name):
    """The plan is merged, each record claimed and a finished run's summary reported: all read first."""
    from fastcifar.study import run

    out = study_folder(tmp_path)
    if name != f"{ROW}/seed0/{jobs.RECORD_NAME}":
        (out / ROW / "seed0" / jobs.RECORD_NAME).unlink()  # the study writes it with this call's arguments
    truncate(out / name)
    lines: list[str] = []
    with pytest.raises(UserError, match="damaged"):
        run(experiment="table2", rows=ROW, seeds=1, tiny=True, out=str(out), print_fn=lines.append)
    assert not any(line.startswith("start") for line in lines)


def test_study_report_command_is_one_line_exit_2_for_a_truncated_plan(tmp_path):
    out = study_folder(tmp_path)
    truncate(out / PLAN_NAME)
    result = subprocess.run(
        [sys.executable, "-m", "fastcifar.study", "report", str(out)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and PLAN_NAME in result.stderr and "Traceback" not in result.stderr


def test_a_half_written_last_metrics_line_is_left_out(tmp_path):
    complete = "".join(json.dumps(row) + "\n" for row in EPOCHS)
    partial = json.dumps({**EPOCHS[1], "epoch": 3})[:20]  # killed while appending epoch 3
    report = write_report(study_folder(tmp_path, complete + partial))
    assert report["curves"][ROW]["epoch"] == [1, 2]


def test_a_damaged_metrics_line_before_the_last_is_one_line(tmp_path):
    lines = [json.dumps(row) for row in EPOCHS]
    out = study_folder(tmp_path, lines[0][:20] + "\n" + lines[1] + "\n")
    with pytest.raises(UserError, match=r"metrics\.jsonl line 1 is damaged"):
        write_report(out)


def test_study_run_out_is_a_file(tmp_path):
    from fastcifar.study import run

    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in (blocker, blocker / "study"):
        with pytest.raises(UserError, match="cannot write the study folder .*pass a writable --out"):
            run(experiment="table2", rows=ROW, seeds=1, tiny=True, out=str(out), print_fn=lambda line: None)


def test_study_run_out_under_a_read_only_parent(tmp_path, read_only):
    from fastcifar.study import run

    read_only(tmp_path)
    with pytest.raises(UserError, match="cannot write the study folder .*Read-only file system"):
        run(experiment="table2", rows=ROW, seeds=1, tiny=True, out=str(tmp_path / "study"), print_fn=print)


def test_study_report_on_a_read_only_folder_says_what_to_do(tmp_path, read_only):
    out = study_folder(tmp_path)
    read_only(out)
    with pytest.raises(UserError) as caught:
        write_report(out)
    message = str(caught.value)
    assert f"cannot write the report into {out}" in message and "cp -r" in message and "\n" not in message
    assert not (out / "study.json").exists()
