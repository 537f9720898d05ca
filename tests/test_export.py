"""Export (model.safetensors + model.json) and fastcifar.load_model: identical logits, bad exports refused (CPU)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch


@pytest.fixture(scope="module")
def finished_run(tiny_flags, tmp_path_factory):
    """A finished one-epoch tiny run: (folder, summary)."""
    from fastcifar.train import train

    out = tmp_path_factory.mktemp("export") / "run"
    return out, train(**tiny_flags, out=str(out))


def test_a_finished_run_writes_its_export(finished_run, train_data):
    from fastcifar.augment import IMAGENET_MEAN, IMAGENET_STD

    run, summary = finished_run
    assert (run / "model.safetensors").is_file()
    described = json.loads((run / "model.json").read_text())
    meta = json.loads((train_data / "synthetic" / "meta.json").read_text())
    saved = json.loads((run / "summary.json").read_text())["config"]
    assert described["arch"] == "sk_densenet" and described["model_kwargs"] == saved["model_kwargs"]
    assert described["num_classes"] == 100 and described["classes"] == meta["classes"]
    assert described["normalization"]["mean"] == list(IMAGENET_MEAN)
    assert described["normalization"]["std"] == list(IMAGENET_STD)
    assert (described["run"]["top1"], described["run"]["top5"]) == (summary["final_top1"], summary["final_top5"])
    import fastcifar

    assert described["fastcifar_version"] == fastcifar.__version__


def test_export_and_checkpoint_give_bit_identical_logits(finished_run):
    import fastcifar

    run = finished_run[0]
    from_checkpoint, info = fastcifar.load_model(run / "checkpoint.pt", device="cpu")
    from_export, exported = fastcifar.load_model(run / "model.json", device="cpu")
    also_export, _ = fastcifar.load_model(run / "model.safetensors", device="cpu")
    assert info.kind == "checkpoint" and exported.kind == "export"
    assert not from_export.training and not from_checkpoint.training
    assert (exported.arch, exported.num_classes, exported.classes) == (info.arch, info.num_classes, info.classes)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = from_checkpoint(images)
        assert torch.equal(from_export(images), expected)
        assert torch.equal(also_export(images), expected)


def test_import_fastcifar_stays_light():
    code = (
        "import sys, fastcifar; assert 'torch' not in sys.modules; "
        "print(fastcifar.load_model.__module__, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["fastcifar.evaluation.loading", "False"]  # torch comes with the first call


def test_export_command_rewrites_an_older_run_identically(finished_run, tmp_path):
    run = tmp_path / "older"
    shutil.copytree(finished_run[0], run)
    before = {name: (run / name).read_bytes() for name in ("model.safetensors", "model.json")}
    for name in before:
        (run / name).unlink()
    done = subprocess.run([sys.executable, "-m", "fastcifar.export", str(run)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {name: (run / name).read_bytes() for name in before} == before


def test_evaluating_the_export_gives_the_runs_figures(finished_run, tmp_path):
    from fastcifar.evaluation.report import evaluate

    run, summary = finished_run
    report = evaluate(run / "model.json", data_root=summary["config"]["data_root"], out=tmp_path, quiet=True)
    assert (report["top1"], report["top5"]) == (summary["final_top1"], summary["final_top5"])
    assert report["model"]["kind"] == "export"


def _other_weights(folder):
    from safetensors.torch import load_file

    from fastcifar.evaluation.export import encode_weights

    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").write_bytes(encode_weights({k: torch.zeros_like(v) for k, v in state.items()}))


def _other_arch(folder):
    described = json.loads((folder / "model.json").read_text())
    described["model_kwargs"]["growth_rate"] = 6
    (folder / "model.json").write_text(json.dumps(described))


def _not_safetensors(folder):
    from fastcifar.evaluation.export import _digest

    garbage = b"not a safetensors file"
    (folder / "model.safetensors").write_bytes(garbage)
    described = json.loads((folder / "model.json").read_text())
    described["weights"]["hash"] = _digest(garbage)
    (folder / "model.json").write_text(json.dumps(described))


def _foreign_json(folder):
    (folder / "model.json").write_text(json.dumps({"arch": "sk_densenet"}))


@pytest.mark.parametrize(
    "spoil, words",
    [
        (_other_weights, "does not match"),
        (_other_arch, "do not fit sk_densenet"),
        (_not_safetensors, "is not a safetensors file"),
        (_foreign_json, "is not a fastcifar model description"),
    ],
)
def test_an_export_that_does_not_match_its_weights_is_one_line(spoil, words, finished_run, tmp_path, capsys):
    from fastcifar.evaluate import main

    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("model.safetensors", "model.json"):
        shutil.copy(finished_run[0] / name, folder / name)
    spoil(folder)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        main([str(folder / "model.json"), "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith("fastcifar.evaluate: error: ") and words in lines[0]
    assert not out.exists()


def test_export_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    from fastcifar.export import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "is not a run folder" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_channels_last_weights_round_trip_bit_identically():
    """safetensors stores dense tensors: channels_last weights come back in the model's own layout."""
    from safetensors.torch import load

    from fastcifar.evaluation.export import encode_weights
    from fastcifar.evaluation.loading import ModelInfo, build_model
    from fastcifar.models import tiny_overrides
    from fastcifar.training.variant import Variant
    from fastcifar.training.variant import build_model as build_variant_model

    info = ModelInfo(
        arch="sk_densenet",
        model_kwargs=tiny_overrides("sk_densenet"),
        num_classes=10,
        classes=None,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        variant={"channels_last": True, "kernels": "torch"},
        dataset="synthetic",
        loader="gpu",
        eval_batch_size=16,
        epochs=0,
        top1=None,
        top5=None,
        source="in memory",
        kind="checkpoint",
    )
    torch.manual_seed(0)
    trained = build_variant_model(
        info.arch, info.model_kwargs, Variant(**info.variant), torch.device("cpu"), num_classes=10
    )
    state = trained.state_dict()
    assert any(not t.is_contiguous() for t in state.values())  # some weights really are channels_last
    direct = build_model(info, state, torch.device("cpu"))
    exported = build_model(info, load(encode_weights(state)), torch.device("cpu"))
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.equal(exported(images), direct(images))


def test_export_of_a_run_folder_another_process_holds_is_refused(finished_run, tmp_path, capsys):
    """One writer per run folder: an export beside a live training (its holder here) is one line."""
    from cli_checks import assert_user_error, call_main
    from tiny_runs import start_holder

    from fastcifar.export import main

    run = tmp_path / "live"
    shutil.copytree(finished_run[0], run)
    (run / "model.json").unlink()
    holder = start_holder(run, "fastcifar.train")
    try:
        result = call_main(main, [str(run)], capsys)
    finally:
        holder.stdin.close()
        holder.wait()
    assert_user_error(result, "fastcifar.export", f"is in use by pid {holder.pid}")
    assert not (run / "model.json").exists()  # nothing written
