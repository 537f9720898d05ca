"""The study report: ``study.md``, ``study.json`` and three figures, rebuilt from the run folders alone.

Everything is derived from ``study-plan.json`` and each run's ``summary.json`` / ``metrics.jsonl``
and evaluation (``<run>/eval/eval.json``, computed once by :mod:`fastcifar.evaluation` the first
time a report needs it and read from there afterwards; no clock, no host name), so building the
report twice from the same folders gives identical files. Timing figures sit under ``"timing"``
keys in ``study.json``: they are the only numbers that differ between two otherwise identical
studies.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fastcifar.atomic import atomic_path, folder_write_problem, write_json_atomic, write_text_atomic
from fastcifar.errors import UserError
from fastcifar.study import jobs
from fastcifar.study.rows import CLAIMS, EXPERIMENTS, ROWS, Row, model_kwargs, study_result
from fastcifar.study.runner import load_plan
from fastcifar.study.stats import welch
from fastcifar.training.metrics import read_jsonl

TABLE_ORDER = ("table1", "table2", "base")
TITLES = {
    "table1": "Table 1: SKNet, Coordinate Attention and their combinations",
    "table2": "Table 2: DenseNet backbone with SK, CA and Triplet",
    "base": "Base methods",
}
DIGITS = 4  # rounding of every number in study.json


def _r(value: float | None, digits: int = DIGITS) -> float | None:
    return None if value is None else round(float(value), digits)


def _mean_std(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"mean": _r(statistics.fmean(values)), "std": _r(std), "n": len(values)}


def _study_params_millions(text: str | None) -> float | None:
    return float(text.rstrip("M")) if text and text.endswith("M") else None


def count_params(row: Row, plan: dict[str, Any]) -> int | None:
    """Parameters of the network the row trains (built on the meta device: no memory, no init).

    None when the configuration cannot be built: that row's runs fail and say why.
    """
    import torch

    from fastcifar.models import create_model

    flags = plan["flags"]
    kwargs = model_kwargs(row, tiny=plan["tiny"], user=flags.get("model_kwargs"))
    try:
        with torch.device("meta"):
            model = create_model(row.model, num_classes=_num_classes(flags), **kwargs)
    except UserError:
        return None
    return sum(p.numel() for p in model.parameters())


def _num_classes(flags: dict[str, Any]) -> int:
    dataset = flags.get("dataset", "cifar100")
    meta = Path(flags.get("data_root", "data")) / dataset / "meta.json"
    if meta.is_file():
        return int(json.loads(meta.read_text())["num_classes"])
    return 10 if dataset == "cifar10" else 100


def collect_runs(out: Path, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every planned run's folder (relative to ``out``), state, error, summary and per-epoch history."""
    collected = []
    for row_id in plan["rows"]:
        for seed in range(plan["seeds"]):
            folder = jobs.run_folder(out, row_id, seed)
            status = jobs.state(folder)
            entry: dict[str, Any] = {"row": row_id, "seed": seed, "folder": f"{row_id}/seed{seed}", "status": status}
            record = jobs.read_record(folder) or {}
            failures = [a for a in record.get("attempts", []) if a.get("status") == "failed"]
            if status == "failed" and failures:
                entry["error"] = failures[-1].get("error", "")
            if status == "finished":
                entry["summary"] = jobs.read_summary(folder)
                entry["history"] = read_jsonl(folder / "metrics.jsonl")
                entry["superclass_top1"] = superclass_top1(folder, entry["summary"].get("config", {}).get("dataset"))
            collected.append(entry)
    return collected


def superclass_top1(folder: Path, dataset: str | None) -> float | None:
    """The run's superclass top-1 (no TTA) from its evaluation ``<run>/eval/eval.json``, evaluating once.

    None when the data set has no superclasses, when the folder holds an evaluation on another
    data set, or when the run cannot be evaluated here (its data missing): the report shows "–".
    """
    from fastcifar.errors import UserError
    from fastcifar.evaluation.report import EVAL_DIR, EVAL_JSON, evaluate

    cached = folder / EVAL_DIR / EVAL_JSON
    try:
        report = json.loads(cached.read_text()) if cached.is_file() else evaluate(folder, quiet=True)
    except (UserError, ValueError):
        return None
    if report.get("data", {}).get("dataset") != dataset:
        return None
    return report["plain"]["superclass_top1"]


def row_stats(row: Row, finished: list[dict[str, Any]], params: int) -> dict[str, Any]:
    """One row's numbers: ours over the finished seeds next to the study's."""
    study = study_result(row)
    summaries = [r["summary"] for r in finished]

    def metric(key: str, reported: float | None) -> dict[str, Any]:
        stats = _mean_std([s[key] for s in summaries])
        diff = None if stats["mean"] is None or reported is None else _r(stats["mean"] - reported)
        return {**stats, "study": reported, "diff": diff}

    on_gpu = bool(summaries) and all(str(s.get("device", "")).startswith("cuda") for s in summaries)
    return {
        "row": row.id,
        "method": study.method or row.model,
        "model": row.model,
        "overrides": row.overrides,
        "deviations": row.deviations,
        "params": {"ours": params, "study": study.params},
        "top1": metric("final_top1", study.top1),
        "top5": metric("final_top5", study.top5),
        # The study reports no superclass figures: ours only (None where a run has none).
        "superclass_top1": _mean_std([r["superclass_top1"] for r in finished if r.get("superclass_top1") is not None]),
        "train_loss": metric("final_train_loss", study.train_loss),
        "test_loss": metric("final_test_loss", study.test_loss),
        "timing": {
            "epoch_seconds": _mean_std([s["mean_epoch_seconds"] for s in summaries])["mean"],
            "images_per_s": _mean_std([s["images_per_s"] for s in summaries])["mean"],
            "device_hours": _r(sum(s["total_seconds"] for s in summaries) / 3600.0),
            "device_kind": "GPU" if on_gpu else ("CPU" if summaries else None),
        },
    }


def claim_stats(better: str, worse: str, text: str, top1: dict[str, list[float]]) -> dict[str, Any]:
    """Does ``better`` beat ``worse`` in top-1 over seeds? Welch's t-test, stated plainly."""
    a, b = top1.get(better, []), top1.get(worse, [])
    sa, sb = study_result(ROWS[better]).top1, study_result(ROWS[worse]).top1
    entry: dict[str, Any] = {
        "better": better,
        "worse": worse,
        "claim": text,
        "n": [len(a), len(b)],
        "study_diff": _r(sa - sb) if sa is not None and sb is not None else None,
    }
    result = welch(a, b)
    if result is None:
        entry.update(diff=None, ci95=None, p=None, verdict="not tested")
        entry["statement"] = (
            f"`{better}` vs `{worse}` ({text}): not tested, needs 2 finished seeds per row "
            f"(have {len(a)} and {len(b)})."
        )
        return entry
    n = min(len(a), len(b))
    if result.p < 0.05:
        verdict = "holds" if result.diff > 0 else "reversed"
    else:
        verdict = "not resolved"
    words = {
        "holds": "holds",
        "reversed": "reversed: the other row is better",
        "not resolved": f"not resolved with {n} seeds",
    }[verdict]
    study_part = f"; study {entry['study_diff']:+.2f}" if entry["study_diff"] is not None else ""
    entry.update(diff=_r(result.diff), ci95=_r(result.ci95), p=_r(result.p), verdict=verdict)
    entry["statement"] = (
        f"`{better}` vs `{worse}` ({text}{study_part}): {result.diff:+.2f} ± {result.ci95:.2f} "
        f"top-1 points (95% CI, Welch p = {result.p:.3f}): {words}."
    )
    return entry


def build(out: str | Path) -> dict[str, Any]:
    """Everything the report shows, as one JSON-ready dict (see the module docstring)."""
    out = Path(out)
    plan = load_plan(out)
    collected = collect_runs(out, plan)
    tables = [
        name
        for name in TABLE_ORDER
        if any(e in (name, "all") for e in plan["experiments"]) and set(EXPERIMENTS[name]) & set(plan["rows"])
    ]
    by_row: dict[str, list[dict[str, Any]]] = {r: [] for r in plan["rows"]}
    for run in collected:
        if run["status"] == "finished":
            by_row[run["row"]].append(run)
    rows = {r: row_stats(ROWS[r], by_row[r], count_params(ROWS[r], plan)) for r in plan["rows"]}
    top1 = {row_id: [r["summary"]["final_top1"] for r in by_row[row_id]] for row_id in plan["rows"]}
    experiments = {}
    for name in tables:
        members = [r for r in EXPERIMENTS[name] if r in rows]
        claims = [claim_stats(a, b, text, top1) for a, b, text in CLAIMS[name] if a in rows and b in rows]
        experiments[name] = {
            "title": TITLES[name],
            "rows": members,
            "claims": claims,
            "timing": {"device_hours": _r(sum(rows[r]["timing"]["device_hours"] or 0.0 for r in members))},
        }
    extra = [r for r in plan["rows"] if not any(r in e["rows"] for e in experiments.values())]
    if extra:
        experiments["other"] = {
            "title": "Other rows",
            "rows": extra,
            "claims": [],
            "timing": {"device_hours": _r(sum(rows[r]["timing"]["device_hours"] or 0.0 for r in extra))},
        }
    curves = {row_id: _curves(by_row[row_id]) for row_id in plan["rows"]}
    return {
        "plan": plan,
        "experiments": experiments,
        "rows": rows,
        "curves": curves,
        "runs": [
            {k: v for k, v in run.items() if k not in ("summary", "history", "superclass_top1")} for run in collected
        ],
    }


def _curves(finished: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-epoch mean and std over seeds of train/test loss and test top-1 (common epochs only)."""
    if not finished:
        return {}
    epochs = min(len(r["history"]) for r in finished)
    result: dict[str, Any] = {"epoch": [r["epoch"] for r in finished[0]["history"][:epochs]]}
    for key in ("train_loss", "test_loss", "top1"):
        per_epoch = [[r["history"][i][key] for r in finished] for i in range(epochs)]
        result[key] = {
            "mean": [_r(statistics.fmean(v)) for v in per_epoch],
            "std": [_r(statistics.stdev(v)) if len(v) > 1 else 0.0 for v in per_epoch],
        }
    return result


# ------------------------------------------------------------------------------------------
# Markdown


def _pm(stats: dict[str, Any], digits: int = 2) -> str:
    if stats["mean"] is None:
        return "–"
    if stats["std"] is None:
        return f"{stats['mean']:.{digits}f} (n={stats['n']})"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f} (n={stats['n']})"


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _table(report: dict[str, Any], members: list[str]) -> list[str]:
    kinds = {report["rows"][r]["timing"]["device_kind"] for r in members} - {None}
    hours = "GPU-h" if kinds == {"GPU"} else ("CPU-h" if kinds == {"CPU"} else "device-h")
    header = [
        "row",
        "study's method",
        "params ours",
        "params study",
        "top-1 ours",
        "top-1 study",
        "Δ top-1",
        "top-5 ours",
        "top-5 study",
        "Δ top-5",
        "superclass top-1 ours",
        "train loss ours / study",
        "test loss ours / study",
        "epoch s",
        "images/s",
        hours,
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    for row_id in members:
        s = report["rows"][row_id]
        cells = [
            f"`{row_id}`",
            s["method"],
            _num(s["params"]["ours"], ","),
            s["params"]["study"] or "–",
            _pm(s["top1"]),
            _num(s["top1"]["study"], "g"),
            _num(s["top1"]["diff"], "+.2f"),
            _pm(s["top5"]),
            _num(s["top5"]["study"], "g"),
            _num(s["top5"]["diff"], "+.2f"),
            _pm(s["superclass_top1"]),
            f"{_num(s['train_loss']['mean'], '.3f')} / {_num(s['train_loss']['study'], 'g')}",
            f"{_num(s['test_loss']['mean'], '.3f')} / {_num(s['test_loss']['study'], 'g')}",
            _num(s["timing"]["epoch_seconds"], ".1f"),
            _num(s["timing"]["images_per_s"], ".0f"),
            _num(s["timing"]["device_hours"], ".3f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """``study.md``: the plan, one table per experiment, the claims, the figures, the runs."""
    plan = report["plan"]
    flags = ", ".join(f"--{k} {json.dumps(v)}" for k, v in sorted(plan["flags"].items())) or "none"
    deviating = [r for r in plan["rows"] if ROWS[r].deviations]
    lines = [
        "# CIFAR-100 attention study: reproduction",
        "",
        f"Rows: {len(plan['rows'])}; seeds 0..{plan['seeds'] - 1}; recipe `{plan['recipe']}`"
        + ("; tiny model configurations (a smoke run, not the study's networks)" if plan["tiny"] else "")
        + f"; training flags for every row: {flags}.",
        "",
    ]
    if plan["recipe"] == "study":
        lines.append(
            "Each row is trained as the study's notebook trained it, so the study's own comparisons mix "
            "recipes"
            + (": " + "; ".join(f"`{r}`: {ROWS[r].why}" for r in deviating) if deviating else "")
            + ". `--recipe uniform` trains every row alike."
        )
    else:
        lines.append(
            "Every row is trained with the common recipe (`--recipe uniform`), unlike the study, whose "
            "notebooks departed from it for some rows; differences to the study's figures include that."
        )
    lines += [
        "",
        "Mean ± sample standard deviation over the finished seeds (n); Δ = ours − study. Final-epoch "
        "figures, as the study reports them. Superclass top-1: the predicted class lies in the true class's "
        "superclass (CIFAR-100's 20), from each run's evaluation (`<run>/eval/`, no TTA). The study's "
        "SK-DenseNet parameter counts include 823,198 parameters its networks held but never used "
        "(see docs/models.md).",
        "",
    ]
    for experiment in report["experiments"].values():
        lines += [f"## {experiment['title']}", "", *_table(report, experiment["rows"]), ""]
        if experiment["claims"]:
            lines += ["Which differences hold (top-1, Welch's t-test over seeds, 5% level):", ""]
            lines += [f"- {c['statement']}" for c in experiment["claims"]]
            lines.append("")
        hours = experiment["timing"]["device_hours"]
        lines += [f"Total device time of this table's finished runs: {_num(hours, '.3f')} h.", ""]
    lines += [
        "## Figures",
        "",
        "- `curves.png`: train and test loss and test top-1 per epoch, mean with a ±1 std "
        "band over seeds (the study's Figure 6, for every row)",
        "- `accuracy_vs_params.png`: final top-1 against parameters; hollow markers are the study's figures",
        "- `accuracy_vs_time.png`: final top-1 against device hours per run",
        "",
        "## Runs",
        "",
        "| row | seed | folder | status |",
        "|---|---:|---|---|",
    ]
    for run in report["runs"]:
        status = run["status"] + (f": {run['error']}" if run.get("error") else "")
        lines.append(f"| `{run['row']}` | {run['seed']} | `{run['folder']}` | {status.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# Figures


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})


def plot_curves(report: dict[str, Any], path: Path) -> None:
    """Figure 6 for every row: train loss, test loss and test top-1 per epoch, mean ± std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    colours = plt.get_cmap("tab20")
    for i, (row_id, curve) in enumerate(report["curves"].items()):
        if not curve:
            continue
        for ax, key in zip(axes, ("train_loss", "test_loss", "top1")):
            mean, std = curve[key]["mean"], curve[key]["std"]
            ax.plot(curve["epoch"], mean, color=colours(i % 20), label=row_id, marker="." if len(mean) < 3 else None)
            ax.fill_between(
                curve["epoch"],
                [m - s for m, s in zip(mean, std)],
                [m + s for m, s in zip(mean, std)],
                color=colours(i % 20),
                alpha=0.2,
                linewidth=0,
            )
    for ax, title in zip(axes, ("train loss", "test loss", "test top-1 (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_scatter(report: dict[str, Any], path: Path, x_key: str) -> None:
    """Final top-1 (mean ± std) against parameters (``x_key="params"``) or device hours per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for row_id, stats in report["rows"].items():
        top1 = stats["top1"]
        if x_key == "params":
            x = stats["params"]["ours"] / 1e6 if stats["params"]["ours"] is not None else None
            study_x = _study_params_millions(stats["params"]["study"])
            if study_x is not None and top1["study"] is not None:
                ax.scatter([study_x], [top1["study"]], facecolors="none", edgecolors="grey")
        else:
            hours = stats["timing"]["device_hours"]
            x = hours / top1["n"] if hours is not None and top1["n"] else None
        if x is None or top1["mean"] is None:
            continue
        ax.errorbar([x], [top1["mean"]], yerr=[top1["std"] or 0.0], fmt="o", capsize=3)
        ax.annotate(row_id, (x, top1["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("parameters (millions)" if x_key == "params" else "device hours per run")
    ax.set_ylabel("final test top-1 (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_report(out: str | Path) -> dict[str, Any]:
    """Build the report from ``out``'s run folders and write study.md, study.json and the PNGs."""
    out = Path(out)
    report = build(out)
    problem = folder_write_problem(out)
    if problem is not None:
        raise UserError(
            f"cannot write the report into {out} ({problem}); the report depends on the folder's files only: "
            f"copy it somewhere writable (cp -r {out} COPY) and run report on the copy."
        )
    write_json_atomic(out / "study.json", report)
    write_text_atomic(out / "study.md", markdown(report))
    plot_curves(report, out / "curves.png")
    plot_scatter(report, out / "accuracy_vs_params.png", "params")
    plot_scatter(report, out / "accuracy_vs_time.png", "hours")
    return report
