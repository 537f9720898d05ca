"""python -m fastcifar.evaluate: the training's own figures, superclass figures, TTA, bad inputs (CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished_run(tiny_flags, tmp_path_factory):
    """A finished one-epoch tiny run: (folder, summary)."""
    from fastcifar.train import train

    out = tmp_path_factory.mktemp("evaluate") / "run"
    return out, train(**tiny_flags, out=str(out))


def run_main(argv, capsys):
    """``python -m fastcifar.evaluate ARGV`` in process: (exit code, stdout, stderr lines)."""
    from fastcifar.evaluate import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def test_evaluation_equals_the_runs_last_epoch_exactly(finished_run, tmp_path, capsys):
    from fastcifar.evaluate import main

    run, summary = finished_run
    out = tmp_path / "eval"
    main([str(run), "--out", str(out)])
    report = json.loads((out / "eval.json").read_text())
    assert (report["top1"], report["top5"]) == (summary["final_top1"], summary["final_top5"])
    assert report["plain"]["loss"] == summary["final_test_loss"]
    assert report["run"]["equal_without_tta"] is True and report["tta"] == "none" and report["gain"] is None
    assert report["data"]["test_images"] == 40 and report["data"]["superclasses"] == 20
    # The figures computed from the kept logits agree with the engine's.
    assert sum(r["images"] for r in report["per_class"]) == 40
    hits = sum(r["images"] * r["top1"] / 100 for r in report["per_class"] if r["top1"] is not None)
    assert hits == pytest.approx(report["top1"] / 100 * 40)
    assert len(report["worst_classes"]) == 10 and report["worst_classes"][0]["name"].startswith("synthetic_class_")
    for name in ("reliability.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == PNG
    text = (out / "eval.md").read_text()
    assert f"{summary['final_top1']:.2f}%" in text and "equal to them" in text
    assert f"{out / 'eval.md'}" in capsys.readouterr().out


def test_default_folder_and_a_second_evaluation_is_refused(finished_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(finished_run[0], run)
    code, _, _ = run_main([run], capsys)
    assert code == 0
    before = (run / "eval" / "eval.json").read_bytes()
    code, _, err = run_main([run, "--tta", "flip"], capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("fastcifar.evaluate: error: ") and "already holds an evaluation" in err[0]
    assert (run / "eval" / "eval.json").read_bytes() == before  # kept


def test_flip_tta_is_deterministic_and_reports_the_gain(finished_run, tmp_path):
    from fastcifar.evaluation.report import evaluate

    run, summary = finished_run
    first = evaluate(run, tta="flip", out=tmp_path / "a", quiet=True)
    second = evaluate(run, tta="flip", out=tmp_path / "b", quiet=True)
    assert first == second
    for name in ("eval.json", "eval.md", "reliability.png", "confusion.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first["tta"] == "flip" and first["plain"]["top1"] == summary["final_top1"]
    assert first["gain"]["top1"] == first["flip"]["top1"] - first["plain"]["top1"]
    assert first["top1"] == first["flip"]["top1"]


def test_flip_averaging_is_mirror_invariant():
    from fastcifar.evaluation.predict import FlipAveraged

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    images = torch.randn(3, 3, 8, 8)
    averaged = FlipAveraged(model)
    with torch.no_grad():
        expected = (model(images) + model(images.flip(3))) / 2
        assert torch.equal(averaged(images), expected)
        assert torch.equal(averaged(images.flip(3)), averaged(images))  # a + b == b + a exactly


def test_superclass_figures_on_hand_made_predictions():
    from fastcifar.evaluation.metrics import superclass_figures

    mapping = np.array([0, 0, 1, 1, 2, 2])
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    predicted = torch.tensor([0, 0, 3, 2, 0, 5])  # right, 3 errors inside the superclass, 1 outside
    figures = superclass_figures(predicted, labels, mapping)
    assert figures["top1"] == pytest.approx(100 * 5 / 6)
    assert figures["errors"] == 4 and figures["errors_within_superclass"] == pytest.approx(75.0)
    # A class of unknown superclass (-1) never counts as the right superclass.
    unknown = superclass_figures(torch.tensor([1, 0]), torch.tensor([0, 0]), np.array([-1, -1]))
    assert unknown == {"top1": 0.0, "errors_within_superclass": 0.0, "errors": 1}
    perfect = superclass_figures(labels, labels, mapping)
    assert perfect == {"top1": 100.0, "errors_within_superclass": None, "errors": 0}


def test_superclass_map_comes_from_the_betons_coarse_labels(train_data):
    from fastcifar.data.prepare import load_meta
    from fastcifar.data.synthetic import coarse_of
    from fastcifar.evaluation.predict import superclass_map

    mapping = superclass_map(train_data, "synthetic", load_meta(train_data, "synthetic"))
    known = np.flatnonzero(mapping >= 0)
    assert len(known) == 64  # the 64 train images cover classes 0..63; the 40 test images 0..39
    assert np.array_equal(mapping[known], coarse_of(known, 100))


def test_confusions_per_class_and_calibration_on_hand_made_predictions():
    from fastcifar.evaluation.metrics import calibration, confusion_matrix, most_confused, per_class_accuracy

    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    confusion = confusion_matrix(predicted, labels, 4)
    assert confusion.tolist() == [[1, 2, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    rows = per_class_accuracy(confusion)
    assert [r["top1"] for r in rows] == [pytest.approx(100 / 3), 50.0, 100.0, None]
    assert [(p["true"], p["predicted"], p["images"]) for p in most_confused(confusion)] == [(0, 1, 2), (1, 0, 1)]
    assert most_confused(confusion)[0]["share"] == pytest.approx(200 / 3)
    # Every image 90% confident, half of them right: ECE = |50 - 90| points, all in the top bin.
    logits = torch.log(torch.tensor([[0.9, 0.1]] * 4))
    result = calibration(logits, torch.tensor([0, 0, 1, 1]))
    assert result["ece"] == pytest.approx(40.0)
    assert [b["images"] for b in result["bins"]].count(4) == 1 and result["bins"][13]["images"] == 4


def test_a_data_set_without_superclasses_gets_no_superclass_figures(finished_run, tmp_path, monkeypatch):
    from fastcifar.evaluation import predict
    from fastcifar.evaluation.report import evaluate

    assert predict.superclass_map("unused", "synthetic", {"superclasses": [], "num_classes": 10}) is None
    monkeypatch.setattr(predict, "superclass_map", lambda *args: None)
    report = evaluate(finished_run[0], out=tmp_path / "eval", quiet=True)
    assert report["superclass"] is None and report["plain"]["superclass_top1"] is None
    assert report["data"]["superclasses"] == 0
    assert "no superclasses" in (tmp_path / "eval" / "eval.md").read_text()


def _damaged(run, tmp_path):
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    data = bytearray((copy / "checkpoint.pt").read_bytes())
    data[-10] ^= 0xFF
    (copy / "checkpoint.pt").write_bytes(bytes(data))
    (copy / "checkpoint.prev.pt").unlink(missing_ok=True)
    return copy


def _foreign(run, tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"model": {"weight": torch.zeros(2)}}, path)
    return path


def _not_a_run(run, tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


@pytest.mark.parametrize(
    "make, words",
    [
        (_not_a_run, "is not a run folder"),
        (_damaged, "is damaged"),
        (_foreign, "is not a fastcifar checkpoint"),
    ],
)
def test_bad_sources_are_one_line_and_write_nothing(make, words, finished_run, tmp_path, capsys):
    source = make(finished_run[0], tmp_path)
    out = tmp_path / "out"
    code, _, err = run_main([source, "--out", out], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("fastcifar.evaluate: error: ") and words in err[0]
    assert not out.exists()


def test_a_data_set_with_another_class_count_is_one_line(finished_run, train_data, tmp_path, capsys):
    meta = json.loads((train_data / "synthetic" / "meta.json").read_text())
    meta.update(num_classes=10, classes=meta["classes"][:10])
    (tmp_path / "ten" / "synthetic").mkdir(parents=True)
    (tmp_path / "ten" / "synthetic" / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    code, _, err = run_main([finished_run[0], "--data_root", tmp_path / "ten", "--out", out], capsys)
    assert code == 2 and len(err) == 1
    assert "the model has 100 classes but synthetic" in err[0] and "has 10" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, words",
    [
        ([], "missing PATH"),
        (["RUN", "--tta", "mirror"], "unknown --tta 'mirror'"),
        (["RUN", "--epochs", "3"], "unknown flag --epochs"),
        (["RUN", "extra"], "unexpected argument 'extra'"),
    ],
)
def test_command_line_mistakes_are_one_line(argv, words, finished_run, tmp_path, capsys):
    argv = [str(finished_run[0]) if a == "RUN" else a for a in argv] + ["--out", str(tmp_path / "out")]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and len(err) == 1 and words in err[0]
    assert not (tmp_path / "out").exists()
