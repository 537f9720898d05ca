"""Evaluate a trained model on a test set: ``eval.json``, ``eval.md``, ``reliability.png``, ``confusion.png``.

:func:`evaluate` is what ``python -m fastcifar.evaluate`` runs. Every check (the source, its
weights, the data set and its class count, the output folder) comes before anything is written;
the files are written atomically, ``eval.json`` last, while the folder is held
(:func:`fastcifar.locks.hold_folder`: one writer at a time). A folder that already holds an
``eval.json`` is refused, so an earlier evaluation is never overwritten: it is kept.

The figures without TTA come from the training's own evaluation (:mod:`.predict`), so top-1 and
top-5 equal the run's last-epoch figures when the model is evaluated on its run's test set in the
run's settings. With ``tta="flip"`` both passes are reported, with the gain; the per-class table,
the confusions and the calibration are those of the flip-averaged predictions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import fastcifar
from fastcifar.atomic import write_json_atomic, write_text_atomic
from fastcifar.errors import UserError
from fastcifar.evaluation import metrics, plots
from fastcifar.evaluation.loading import ModelInfo, resolve
from fastcifar.locks import hold_folder
from fastcifar.markdown import markdown_table

EVAL_DIR = "eval"
EVAL_JSON = "eval.json"
EVAL_MD = "eval.md"
FIGURES = ("reliability.png", "confusion.png")
WORST = 10  # classes named in eval.md
CONFUSED = 10  # class pairs listed


def default_out(path: str | os.PathLike) -> Path:
    """``<folder of the run, checkpoint or export>/eval``."""
    return resolve(path)[1].parent / EVAL_DIR


def refuse_existing(out: Path) -> None:
    if (out / EVAL_JSON).exists():
        raise UserError(
            f"{out} already holds an evaluation ({EVAL_JSON}); it is kept: pass another --out, "
            f"or remove {out} to evaluate again"
        )


def _summary(figures: dict[str, Any]) -> dict[str, Any]:
    superclass = figures["superclass"]
    return {
        "top1": figures["top1"],
        "top5": figures["top5"],
        "loss": figures["loss"],
        "superclass_top1": None if superclass is None else superclass["top1"],
        "errors_within_superclass": None if superclass is None else superclass["errors_within_superclass"],
        "ece": figures["calibration"]["ece"],
    }


def figures_of(predictions: Any, fine_to_coarse: Any, num_classes: int) -> dict[str, Any]:
    """Every figure of one pass (:class:`.predict.Predictions`); top-1/top-5/loss are the engine's."""
    predicted = metrics.top1_predictions(predictions.logits)
    confusion = metrics.confusion_matrix(predicted, predictions.labels, num_classes)
    return {
        "top1": predictions.result.top1,
        "top5": predictions.result.top5,
        "loss": predictions.result.loss,
        "superclass": None
        if fine_to_coarse is None
        else metrics.superclass_figures(predicted, predictions.labels, fine_to_coarse),
        "calibration": metrics.calibration(predictions.logits, predictions.labels),
        "per_class": metrics.per_class_accuracy(confusion),
        "confused_pairs": metrics.most_confused(confusion, CONFUSED),
        "confusion": confusion,
    }


def build(
    info: ModelInfo, test_set: Any, plain: dict[str, Any], flip: dict[str, Any] | None, device: str, batch_size: int
) -> dict[str, Any]:
    """eval.json's content from the figures of the plain pass and of the flip pass (or None)."""
    meta, mapping = test_set.meta, test_set.fine_to_coarse
    classes, superclasses = list(meta["classes"]), list(meta["superclasses"])
    chosen = flip or plain
    per_class = [
        {
            **row,
            "name": classes[row["class"]],
            "superclass": None if mapping is None or mapping[row["class"]] < 0 else superclasses[mapping[row["class"]]],
        }
        for row in chosen["per_class"]
    ]
    worst = sorted((r for r in per_class if r["top1"] is not None), key=lambda r: (r["top1"], r["class"]))[:WORST]
    confused = [
        {**pair, "true_name": classes[pair["true"]], "predicted_name": classes[pair["predicted"]]}
        for pair in chosen["confused_pairs"]
    ]
    run_equal = info.top1 == plain["top1"] and info.top5 == plain["top5"]
    gain = None
    if flip is not None:
        gain = {key: None if flip[key] is None else flip[key] - plain[key] for key in ("top1", "top5")}
        if plain["superclass"] is not None:
            gain["superclass_top1"] = flip["superclass"]["top1"] - plain["superclass"]["top1"]
    return {
        "model": {
            "source": info.source,
            "kind": info.kind,
            "arch": info.arch,
            "model_kwargs": info.model_kwargs,
            "num_classes": info.num_classes,
            "epochs": info.epochs,
            "variant": info.variant,
        },
        "data": {
            "dataset": test_set.dataset,
            "data_root": test_set.data_root,
            "test_images": sum(r["images"] for r in plain["per_class"]),
            "loader": info.loader,
            "batch_size": batch_size,
            "superclasses": len(superclasses) if mapping is not None else 0,
        },
        "device": device,
        "tta": "flip" if flip is not None else "none",
        "top1": chosen["top1"],
        "top5": chosen["top5"],
        "plain": _summary(plain),
        "flip": None if flip is None else _summary(flip),
        "gain": gain,
        "run": {"top1": info.top1, "top5": info.top5, "equal_without_tta": run_equal},
        "superclass": chosen["superclass"],
        "calibration": chosen["calibration"],
        "per_class": per_class,
        "worst_classes": worst,
        "confused_pairs": confused,
        "files": [EVAL_JSON, EVAL_MD, *FIGURES],
        "fastcifar_version": fastcifar.__version__,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}%"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def markdown(report: dict[str, Any]) -> str:
    """eval.md: headline figures (with the TTA gain), the worst classes, the most confused pairs."""
    model, data, run = report["model"], report["data"], report["run"]
    lines = [
        f"# Evaluation of `{model['arch']}`",
        "",
        f"Model: `{model['source']}` ({model['kind']}, epochs trained: {model['epochs']}, "
        f"{model['num_classes']} classes); "
        f"test set: `{data['dataset']}` in `{data['data_root']}`, {data['test_images']} images, "
        f"loader `{data['loader']}`, batch {data['batch_size']}, device `{report['device']}`, variant "
        + ", ".join(f"{k} {v}" for k, v in model["variant"].items())
        + ".",
        "",
        "| predictions | top-1 | top-5 | superclass top-1 | errors within the superclass | ECE | test loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [("without TTA", report["plain"])] + ([("flip TTA", report["flip"])] if report["flip"] else [])
    for name, s in rows:
        lines.append(
            f"| {name} | {_pct(s['top1'])} | {_pct(s['top5'])} | {_pct(s['superclass_top1'])} | "
            f"{_pct(s['errors_within_superclass'])} | {_pct(s['ece'])} | {s['loss']:.4f} |"
        )
    if report["gain"]:
        g = report["gain"]
        lines.append(
            f"| gain of flip TTA | {_signed(g['top1'])} | {_signed(g['top5'])} | "
            f"{_signed(g.get('superclass_top1'))} | | | |"
        )
    same = "equal to" if run["equal_without_tta"] else "different from"
    lines += [
        "",
        f"The run's last epoch: top-1 {_pct(run['top1'])}, top-5 {_pct(run['top5'])}; the figures without TTA "
        f"are {same} them.",
    ]
    if not data["superclasses"]:
        lines.append("This data set has no superclasses: no superclass figures.")
    lines += [
        "Superclass top-1: the predicted class lies in the true class's superclass. Errors within the superclass: "
        "of the wrongly classified images, the share whose prediction still lies in the right superclass. "
        f"ECE: expected calibration error of the top-1 softmax confidence, {metrics.ECE_BINS} equal bins.",
        "",
        f"## The {WORST} worst classes" + (" (flip TTA)" if report["flip"] else ""),
        "",
        markdown_table(
            ("class", "superclass", "test images", "top-1"),
            "llrr",
            ((r["name"], r["superclass"] or "–", r["images"], _pct(r["top1"])) for r in report["worst_classes"]),
        ),
        "",
        "## The most confused pairs",
        "",
        markdown_table(
            ("true class", "predicted as", "images", "share of the true class"),
            "llrr",
            ((p["true_name"], p["predicted_name"], p["images"], _pct(p["share"])) for p in report["confused_pairs"]),
        ),
    ]
    lines += [
        "",
        "## Figures",
        "",
        "- `reliability.png`: accuracy per confidence bin against perfect calibration, and images per bin",
        "- `confusion.png`: the confusion matrix (rows: true class, normalised), classes ordered by superclass",
        "",
    ]
    return "\n".join(lines)


def write(out: Path, report: dict[str, Any], chosen: dict[str, Any], test_set: Any) -> None:
    """The PNGs, eval.md, then eval.json (last: its presence marks a complete evaluation)."""
    meta, mapping = test_set.meta, test_set.fine_to_coarse
    out.mkdir(parents=True, exist_ok=True)
    what = f"{report['model']['arch']} on {report['data']['dataset']}" + (" (flip TTA)" if report["flip"] else "")
    plots.reliability_diagram(chosen["calibration"], out / FIGURES[0], title=f"reliability: {what}")
    plots.confusion_plot(
        chosen["confusion"],
        metrics.superclass_order(mapping, len(meta["classes"])),
        out / FIGURES[1],
        title=f"confusion matrix: {what}",
        class_names=list(meta["classes"]),
        groups=None if mapping is None else [int(c) for c in mapping],
        group_names=list(meta["superclasses"]),
    )
    write_text_atomic(out / EVAL_MD, markdown(report))
    write_json_atomic(out / EVAL_JSON, report)


def evaluate(
    path: str | os.PathLike,
    *,
    data_root: str | None = None,
    dataset: str | None = None,
    tta: str = "none",
    device: str | None = None,
    batch_size: int | None = None,
    out: str | os.PathLike | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate the model at ``path`` (run folder, checkpoint or export) and write ``out``; return eval.json's content.

    ``data_root`` / ``dataset`` default to the run's, ``batch_size`` to its eval batch size,
    ``out`` to ``<folder of path>/eval``; ``tta``: ``none`` or ``flip``.
    """
    from fastcifar.evaluation.loading import load_model
    from fastcifar.evaluation.predict import TTA_MODES, open_test_set, predict
    from fastcifar.training.compile_cache import compile_cache
    from fastcifar.training.variant import Variant

    if tta not in TTA_MODES:
        raise UserError(f"unknown --tta {tta!r}; choose one of: {', '.join(TTA_MODES)}.")
    target = Path(out).expanduser() if out else default_out(path)
    refuse_existing(target)
    loaded = load_model(path, device)
    model_device = next(loaded.model.parameters()).device
    test_set = open_test_set(loaded, model_device, data_root=data_root, dataset=dataset, batch_size=batch_size)
    variant = Variant(**loaded.info.variant)
    num_classes = loaded.info.num_classes
    # A compiled run's evaluation compiles too, into the run's own compile cache when it had one.
    with compile_cache(loaded.info.compile_cache, enabled=variant.compile):
        plain = predict(loaded.model, variant, test_set, model_device)
        flipped = predict(loaded.model, variant, test_set, model_device, tta="flip") if tta == "flip" else None
    plain = figures_of(plain, test_set.fine_to_coarse, num_classes)
    flip = None if flipped is None else figures_of(flipped, test_set.fine_to_coarse, num_classes)
    report = build(loaded.info, test_set, plain, flip, str(model_device), test_set.loader.batch_size)
    with hold_folder(target, "fastcifar.evaluate"):  # one writer; checked again under the lock
        refuse_existing(target)
        write(target, report, flip or plain, test_set)
    if not quiet:
        headline = f"top-1 {report['top1']:.2f}% top-5 {report['top5']:.2f}%"
        if report["gain"]:
            headline += f" (flip TTA: {report['gain']['top1']:+.2f} top-1 points)"
        superclass = report["superclass"]
        if superclass is not None:
            headline += f", superclass top-1 {superclass['top1']:.2f}%"
        headline += f", ECE {report['calibration']['ece']:.2f}%"
        print(f"{headline}; {target / EVAL_MD}", flush=True)
    return report
