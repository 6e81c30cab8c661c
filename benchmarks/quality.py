"""Proxy quality a reviewer can accept: recipes chosen on a validation proxy, rows over seeds on two test proxies.

Three generated datasets (``make_synthetic_dataset``), never mixed up:

- **validation**: the test proxy's categories and defect families drawn with another generator seed (other crops,
  other defects). Every choice is made here and only here: each model's learning rate and epochs (its validation
  curve), anomalib's Padim's layers and PatchCore's layers and coreset ratio. Same budget for every model: two
  configurations each.
- **test**: the proxy of the earlier reports (generator seed 0, byte for byte the same files).
- **heldout**: other photos (two textures among them) with other defect shapes
  (:data:`~anomalib_multiclass.data.synthetic.HELDOUT_CATEGORIES`,
  :data:`~anomalib_multiclass.data.synthetic.HELDOUT_DEFECT_TYPES`), used for no choice at all.

Each row of a test proxy is its command run once per training seed, the seeds fixed in advance (``SIZES[size]
["seeds"]``); a row reads mean ± std over them, per category too, and each of our rows is set against PatchCore
unified by a two-sided Welch t-test over the seeds (:mod:`benchmarks.stats`).

Every run (a "cell": proxy, row, seed) is one ``anomalib train`` (or ``anomalib-multiclass separate``) command in a
worker process; ``--jobs 2`` runs two at once, each on one thread. A cell's outcome is saved in the cell store
(``--cells``, committed under ``benchmarks/results/quality_cells/<size>/``) with its command, commit and library
versions, so a run cut short continues where it stopped, in this session or a later one; :mod:`benchmarks.cells`
says when a saved cell is reused (never after a change to code that determines a result).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.cells import (
    MODEL_FOLDERS,
    NOT_RUN_BY_CELLS,
    PROXIES,
    RESULT_CODE,
    Cell,
    _folder,
    code_commit,
    make_proxy,
    proxy_categories,
    run_cells,
)
from benchmarks.proxy import BASELINES, model_arguments, proxy_input, train_arguments
from benchmarks.stats import format_mean_std, mean_std, welch_t_test

REFERENCE = "PatchCore (anomalib), unified"
BASELINE_LABELS = {"Padim": "Padim (anomalib)", "Patchcore": "PatchCore (anomalib)"}
QUALITY_METRICS = {"mean I-AUROC": "image_AUROC", "mean P-AUROC": "pixel_AUROC", "mean AUPRO": "AUPRO"}


# ----------------------------------------------------------------------------------------------- tuning
@dataclass
class Tuning:
    """What the validation proxy chose: each of our models' lr and epochs, each baseline's arguments."""

    schedule: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, list[str]] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every configuration tried, with its score
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # of the chosen configurations
    references: dict[str, dict[str, float]] = field(default_factory=dict)  # the chosen baselines' unified means


def tuning_cells(cfg: dict[str, Any], work: Path) -> list[Cell]:
    """Two configurations per model on the validation proxy (ours with their validation curves)."""
    data_root = make_proxy("validation", cfg, work)
    cells = []
    for name, options in cfg["tuning"]["baselines"].items():
        for index, extra in enumerate(options):
            label = f"tune {BASELINE_LABELS[name]} option {index}"
            root = work / "runs" / "validation" / _folder(label)
            args = train_arguments([*BASELINES[name], *extra], data_root, root, epochs=1)
            cells.append(Cell("validation", label, 0, "anomalib train", tuple(args)))
    for name, grid in cfg["tuning"]["ours"].items():
        for lr in grid["lr"]:
            label = f"{name} lr {lr:g}"
            root = work / "runs" / "validation" / _folder(label)
            curve = work / "curves" / f"{_folder(label)}.json"
            arguments = model_arguments(name, cfg, lr=lr)
            args = train_arguments(name, data_root, root, grid["max_epochs"], arguments, grid["val_every"], curve)
            cells.append(Cell("validation", label, 0, "anomalib train", tuple(args), str(curve), model=name))
    return cells


def best_point(points: list[dict[str, float]]) -> dict[str, float]:
    """The curve point of the highest mean image AUROC (to 3 decimals; the earliest epoch among equals)."""
    usable = [p for p in points if p.get("image_AUROC") is not None]
    if not usable:
        raise ValueError("a validation curve without a single image AUROC: the run recorded nothing to choose on")
    return max(usable, key=lambda p: (round(p["image_AUROC"], 3), -p["epoch"]))


def choose(cfg: dict[str, Any], outcomes: dict[Cell, dict[str, Any]]) -> Tuning:
    """Each model's configuration of highest mean image AUROC on the validation proxy."""
    tuning = Tuning()
    by_label = {cell.label: (cell, outcome) for cell, outcome in outcomes.items()}
    for name, options in cfg["tuning"]["baselines"].items():
        scored = []
        for index, extra in enumerate(options):
            _, outcome = by_label[f"tune {BASELINE_LABELS[name]} option {index}"]
            score = outcome.get("results", {}).get("mean", {}).get("image_AUROC")
            tuning.candidates.append({"model": BASELINE_LABELS[name], "arguments": " ".join(extra), "score": score,
                                      "error": outcome.get("error")})  # fmt: skip
            if score is not None:
                scored.append((score, -index, extra, outcome))
        if not scored:
            msg = f"every configuration of {name} failed on the validation proxy (see the candidates)"
            raise RuntimeError(msg)
        _, _, extra, outcome = max(scored, key=lambda item: (round(item[0], 3), item[1]))
        tuning.baselines[name] = list(extra)
        means = outcome["results"]["mean"]
        tuning.references[f"{BASELINE_LABELS[name]}, unified"] = {
            "image_AUROC": means["image_AUROC"], "pixel_AUROC": means.get("pixel_AUROC")
        }  # fmt: skip
    for name, grid in cfg["tuning"]["ours"].items():
        best: tuple[Any, ...] | None = None
        for lr in grid["lr"]:
            _, outcome = by_label[f"{name} lr {lr:g}"]
            if "error" in outcome:
                tuning.candidates.append({"model": name, "arguments": f"lr {lr:g}", "error": outcome["error"]})
                continue
            points = _curve_with_final(outcome, grid["max_epochs"])
            point = best_point(points)
            tuning.candidates.append({
                "model": name, "arguments": f"lr {lr:g}", "score": point["image_AUROC"], "epochs": int(point["epoch"]),
                "curve": points,
            })  # fmt: skip
            rank = (round(point["image_AUROC"], 3), -point["epoch"])
            if best is None or rank > best[0]:
                best = (rank, lr, int(point["epoch"]), points)
        if best is None:
            msg = f"every configuration of {name} failed on the validation proxy (see the candidates)"
            raise RuntimeError(msg)
        _, lr, epochs, points = best
        tuning.schedule[name] = {"lr": lr, "epochs": epochs}
        tuning.curves[f"{name} (lr {lr:g})"] = points
    return tuning


def _curve_with_final(outcome: dict[str, Any], epochs: int) -> list[dict[str, float]]:
    """The validation curve and the run's final evaluation at its last epoch (the same data: one point)."""
    final = outcome["results"]["mean"]
    points = {int(p["epoch"]): p for p in outcome.get("curve", [])}
    points[epochs] = {"epoch": epochs, "image_AUROC": final["image_AUROC"], "pixel_AUROC": final.get("pixel_AUROC")}
    return [points[e] for e in sorted(points)]


def tune(
    cfg: dict[str, Any], work: Path, jobs: int, log: Callable[[str], None], store: Path | None = None
) -> tuple[Tuning, dict[Cell, dict[str, Any]]]:
    """Run (or reuse from ``store``) the tuning cells on the validation proxy and choose; the outcomes too."""
    log("quality: tuning on the validation proxy")
    outcomes = run_cells(tuning_cells(cfg, work), work, jobs, log, store)
    return choose(cfg, outcomes), outcomes


# ----------------------------------------------------------------------------------------------- test proxies
def row_variants(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Rows per model: LGC also runs with its contrastive losses off (plain RD trained jointly), same recipe."""
    if name == "LGC":
        return [("LGC", {}), ("LGC (contrastive off = RD joint)", {"contrastive": False})]
    return [(name, {})]


def test_cells(cfg: dict[str, Any], proxy: str, tuning: Tuning, models: Iterable[str], work: Path) -> list[Cell]:
    """Every row of ``proxy`` at every seed, with the recipes the validation proxy chose."""
    data_root = make_proxy(proxy, cfg, work)
    separate = f"separate ({len(proxy_categories(proxy, cfg))} models)"
    cells = []
    for seed in cfg["seeds"]:
        for name, extra in tuning.baselines.items():
            for setting, program in (("unified", "anomalib train"), (separate, "anomalib-multiclass separate")):
                label = f"{BASELINE_LABELS[name]}, {setting}"
                root = work / "runs" / proxy / f"{_folder(label)}_seed{seed}"
                args = train_arguments([*BASELINES[name], *extra], data_root, root, epochs=1, seed=seed)
                cells.append(Cell(proxy, label, seed, program, tuple(args)))
        for name in models:
            recipe = tuning.schedule[name]
            for label, overrides in row_variants(name):
                root = work / "runs" / proxy / f"{_folder(label)}_seed{seed}"
                arguments = model_arguments(name, cfg, lr=recipe["lr"], **overrides)
                args = train_arguments(name, data_root, root, recipe["epochs"], arguments, seed=seed)
                cells.append(Cell(proxy, label, seed, "anomalib train", tuple(args), model=name))
    return cells


@dataclass
class SeededRow:
    """A quality row over seeds: per-seed values of each column, the failures, the command (seed as ``<seed>``)."""

    name: str
    setting: str
    values: dict[str, list[float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    command: str = ""
    against_reference: str = ""

    def means(self) -> dict[str, float]:
        """Each column's mean over the seeds (what the "what changed" comparison reads)."""
        return {column: mean_std(values)[0] for column, values in self.values.items() if values}


def collect(
    cfg: dict[str, Any], proxy: str, tuning: Tuning, outcomes: dict[Cell, dict[str, Any]], work: Path
) -> list[SeededRow]:
    """The rows of one test proxy, in table order, each with its per-seed values and its verdict against PatchCore."""
    categories = proxy_categories(proxy, cfg)
    data_root, rows = make_proxy(proxy, cfg, work), {}
    for cell, outcome in outcomes.items():
        if cell.proxy != proxy:
            continue
        name, _, setting = cell.label.partition(", ") if "(anomalib)" in cell.label else (cell.label, "", "")
        row = rows.setdefault(cell.label, SeededRow(name, setting or _setting(cell.label, cfg, proxy, tuning)))
        row.command = (
            cell.command(data_root, work / "runs" / proxy)
            .replace(f"--seed_everything {cell.seed}", "--seed_everything <seed>")
            .replace(f"_seed{cell.seed}", "_seed<seed>")
        )
        if "error" in outcome:
            row.failures.append(f"seed {cell.seed}: {outcome['error']}")
            continue
        results = outcome["results"]
        for category in categories:
            row.values.setdefault(f"{category} I-AUROC", []).append(_number(results[category].get("image_AUROC")))
        for column, metric in QUALITY_METRICS.items():
            row.values.setdefault(column, []).append(_number(results["mean"].get(metric)))
        row.values.setdefault("train s", []).append(outcome["seconds"])
    reference = rows.get(REFERENCE)
    for label, row in rows.items():
        if label == REFERENCE:
            row.against_reference = "(the reference)"
        elif reference is not None and row.values.get("mean I-AUROC"):
            comparison = welch_t_test(row.values["mean I-AUROC"], reference.values.get("mean I-AUROC", []))
            row.against_reference = comparison.verdict(row.name, "PatchCore")
    return list(rows.values())


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _setting(label: str, cfg: dict[str, Any], proxy: str, tuning: Tuning) -> str:
    name = label.split()[0]
    recipe = tuning.schedule[name]
    size = proxy_input(name, cfg)
    return f"unified, {recipe['epochs']} epochs, lr {recipe['lr']:g}, {size} px"


def table(rows: list[SeededRow], categories: list[str]) -> str:
    """The markdown table of one test proxy: mean ± std over the seeds in every cell."""
    columns = [f"{c} I-AUROC" for c in categories] + [*QUALITY_METRICS, "train s"]
    header = "| model | setting | seeds | " + " | ".join(columns) + " | against PatchCore unified (Welch) | note |"
    lines = [header, "|" + "---|" * (len(columns) + 5)]
    for row in rows:
        seeds = len(row.values.get("mean I-AUROC", []))
        cells = [_cell(row.values.get(column, []), digits=1 if column == "train s" else 3) for column in columns]
        note = "; ".join(f"failed: {failure}" for failure in row.failures)
        lines.append(
            f"| {row.name} | {row.setting} | {seeds} | " + " | ".join(cells) + f" | {row.against_reference} | {note} |"
        )
    return "\n".join(lines)


def _cell(values: list[float], digits: int) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "n/a" if values else ""
    return format_mean_std(finite, digits)


def rows_record(rows: list[SeededRow]) -> list[dict[str, Any]]:
    """The rows for the JSON: per-seed values, and each column's mean under its own name (read by ``changes``)."""
    return [{**asdict(row), "per_seed": row.values, "values": row.means()} for row in rows]


def tuning_table(tuning: Tuning) -> str:
    """Every configuration tried on the validation proxy, its score, and which was chosen."""
    lines = ["| model | configuration | validation mean I-AUROC (best epoch) | chosen |", "|---|---|---|---|"]
    for candidate in tuning.candidates:
        model, arguments = candidate["model"], candidate["arguments"]
        if candidate.get("error"):
            lines.append(f"| {model} | `{arguments}` | failed: {candidate['error']} | no |")
            continue
        epochs = f" (epoch {candidate['epochs']})" if "epochs" in candidate else ""
        chosen = _is_chosen(tuning, candidate)
        lines.append(f"| {model} | `{arguments}` | {candidate['score']:.3f}{epochs} | {'yes' if chosen else 'no'} |")
    return "\n".join(lines)


def _is_chosen(tuning: Tuning, candidate: dict[str, Any]) -> bool:
    for name, extra in tuning.baselines.items():
        if candidate["model"] == BASELINE_LABELS[name]:
            return candidate["arguments"] == " ".join(extra)
    recipe = tuning.schedule.get(candidate["model"])
    return (
        recipe is not None
        and candidate["arguments"] == f"lr {recipe['lr']:g}"
        and (candidate.get("epochs") == recipe["epochs"])
    )


def test_images(cfg: dict[str, Any]) -> str:
    """How many test images each category has (the resolution of its AUROC)."""
    good, bad = cfg["n_test_good"], cfg["n_test_defect"]
    return f"{good} normal and {bad} defective test images per category (image AUROC moves in steps of 1/{good * bad})"


# ----------------------------------------------------------------------------------------------- the report
def run_quality(
    cfg: dict[str, Any],
    work: Path,
    jobs: int,
    log: Callable[[str], None],
    models: Iterable[str],
    store: Path | None = None,
) -> dict[str, Any]:
    """Tune on the validation proxy, then every row of both test proxies at every seed: the section's record."""
    tuning, tuned = tune(cfg, work, jobs, log, store)
    models = [name for name in models if name in tuning.schedule]
    cells = [cell for proxy in ("test", "heldout") for cell in test_cells(cfg, proxy, tuning, models, work)]
    log(f"quality: {len(cells)} runs on the test proxies ({len(cfg['seeds'])} seeds each)")
    outcomes = run_cells(cells, work, jobs, log, store)
    proxies = {proxy: collect(cfg, proxy, tuning, outcomes, work) for proxy in ("test", "heldout")}
    every = [*tuned.values(), *outcomes.values()]
    return {
        "code": code_commit(),
        "cell_commits": sorted({outcome["code"] for outcome in every}),
        "result_code": list(RESULT_CODE),
        "not_run_by_cells": list(NOT_RUN_BY_CELLS),
        "model_folders": dict(MODEL_FOLDERS),
        "run_minutes": sum(outcome.get("seconds", 0.0) for outcome in every) / 60,
        "seeds": list(cfg["seeds"]),
        "jobs": jobs,
        "tuning": asdict(tuning),
        "proxies": {proxy: rows_record(rows) for proxy, rows in proxies.items()},
        "categories": {proxy: proxy_categories(proxy, cfg) for proxy in PROXIES},
    }


def render(record: dict[str, Any], cfg: dict[str, Any], command: str, minutes: float, curves_png: str) -> str:
    """The markdown of the quality section from its record (no measuring)."""
    from benchmarks.curves import curve_summary

    tuning = record["tuning"]
    curve_lines = "\n".join(f"| {name} | {curve_summary(points)} |" for name, points in tuning["curves"].items())
    joined = _proxy_sections(record, cfg)
    return f"""## Proxy quality (unified multi-class, real photos with synthetic defects)

Generated by `{command}` at commit {record["code"]} ({_provenance(record, minutes)}; {record["jobs"]} runs at a
time, each on {max(1, (os.cpu_count() or 1) // max(1, record["jobs"]))} thread(s): the "train s" column is per run);
do not edit by hand. Every row, per seed, is in `quality.json` beside `quality.md` (`benchmarks/results/`), every
run's outcome in `benchmarks/results/quality_cells/`.

Three generated datasets (`make_synthetic_dataset`, {cfg["n_train"]} normal training images per category,
{cfg["image_size"]} px): a **validation proxy** (the test proxy's categories and defect families, another generator
seed: other crops, other defects) on which every choice below is made, the **test proxy** of the earlier reports,
and a **second test proxy** of other photos (textures `tissue` and `moon` among them) and other defect shapes (crack,
hole, warp, speckle, hue), used for no choice. Backbone: EfficientNet-Lite0 with real ImageNet weights for every
model (inputs normalised with its own mean/std for ours); our models scaled down for a CPU (width
{cfg["hidden_dim"]}, {cfg["layers"]}+{cfg["layers"]} layers or blocks; {cfg["input_size"]} px for UniAD and MINT-AD,
{cfg["small_input"]} px for RLR, Omni-AD and LGC, whose maps go down to 1/4): proxy figures, not the papers' recipes
(`configs/`). anomalib's Padim and PatchCore run with anomalib's defaults (256 px, ImageNet statistics) but backbone
and the knobs chosen below, unified and one model per category ("separate"). Every metric is computed on each
category's raw scores and maps, then averaged over the categories. "Against PatchCore unified": a two-sided Welch
t-test of the row's per-seed mean image AUROC against PatchCore unified's (95 %; "beyond noise" only when it
rejects equal means; the seeds were fixed before any run).

### Choices, made on the validation proxy only
The same budget for every model: two configurations (ours: two learning rates, each trained to its maximum epochs
with a validation pass every few epochs, the epoch of the best validation image AUROC taken, the earliest among
equals; Padim: two layer sets; PatchCore: two layer sets), the one of highest validation mean
image AUROC chosen. LGC's contrastive-off row takes LGC's recipe (the comparison is at equal training).

{tuning_table_from_record(tuning)}

Validation curves of the chosen configurations (mean image / pixel AUROC on the validation proxy; dashed in the
plot: the chosen Padim and PatchCore, unified):

![validation curves]({curves_png})

| model | epoch: mean image / pixel AUROC |
|---|---|
{curve_lines}

{joined}

### Against the previous run (test proxy, means over the seeds)
{record.get("changes", "not compared")}
"""


def _provenance(record: dict[str, Any], minutes: float) -> str:
    """Which commits the runs ran at and how long they took, when some were reused from the cell store."""
    commits = record.get("cell_commits", [record["code"]])
    if commits == [record["code"]] and "run_minutes" not in record:
        return f"{minutes:.1f} minutes"
    paths = ", ".join(f"`{path}`" for path in record.get("result_code", []))
    paths += "; not " + ", ".join(f"`{path}`" for path in record.get("not_run_by_cells", []))
    if record.get("model_folders"):  # since the cells depend on their own model's code only
        paths += (
            "; for a run of one of our models, not the other models' own code"
            " (`anomalib_multiclass/models/<model>`, `configs/*<model>*`)"
        )
    return (
        f"runs at commit(s) {', '.join(commits)}, the code that determines a result ({paths}) unchanged from them "
        f"to {record['code']}; {record.get('run_minutes', minutes):.0f} minutes of run time in all, "
        f"{minutes:.1f} minutes in this invocation"
    )


def _proxy_sections(record: dict[str, Any], cfg: dict[str, Any]) -> str:
    """The two test proxies' tables, each with its categories, test images, seeds and commands."""
    seeds = record["seeds"]
    sections = []
    for proxy, title in (("test", "Test proxy"), ("heldout", "Second test proxy: other photos, other defects")):
        rows = [SeededRow(**{k: v for k, v in row.items() if k in SeededRow.__dataclass_fields__})
                for row in record["proxies"][proxy]]  # fmt: skip
        for row, saved in zip(rows, record["proxies"][proxy], strict=True):
            row.values = saved["per_seed"]
        categories = record["categories"][proxy]
        commands = "\n".join(f"- {row.name}{', ' + row.setting if '(anomalib)' in row.name else ''}: `{row.command}`"
                             for row in rows)  # fmt: skip
        sections.append(f"""### {title}
Categories {categories}; {test_images(cfg)}. Seeds {seeds} for every row (fixed in advance);
each cell is mean ± std over them, "seeds" counts the runs that finished.

{table(rows, categories)}

<details><summary>The command behind each row (run once per seed)</summary>

{commands}

</details>""")
    return "\n\n".join(sections)


def as_run_record(record: dict[str, Any]) -> dict[str, Any]:
    """A quality record in the shape ``benchmarks.run.changes`` compares: the test proxy's rows and commands."""
    rows = record["proxies"]["test"]
    return {
        "command": record["command"], "commit": record["code"], "size": record["size"],
        "tables": {"quality": rows},
        "quality_commands": [(row["name"] if "(anomalib)" not in row["name"] else f"{row['name']}, {row['setting']}",
                              row["command"]) for row in rows],
    }  # fmt: skip


def record_from_fragment(text: str, commit: str, command: str, size: str = "default") -> dict[str, Any]:
    """A run record (the shape :func:`as_run_record` gives) read back from a quality fragment that had no JSON:
    the first table's rows (name, setting, every number) and the command listed under it for each row."""
    rows: list[dict[str, Any]] = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            if header is not None and rows:
                break  # the first table only
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(line) <= set("|-"):
            values: dict[str, float] = {}
            for column, cell in zip(header[2:], cells[2:], strict=True):
                with contextlib.suppress(ValueError):
                    values[column] = float(cell)
            if values:
                rows.append({"name": cells[0], "setting": cells[1], "values": values, "command": ""})
    commands: list[tuple[str, str]] = []
    for line in text.splitlines():
        if line.startswith("- ") and ": `" in line and line.rstrip().endswith("`"):
            label, _, rest = line[2:].partition(": `")
            commands.append((label, rest.rstrip()[:-1]))
    return {"command": command, "commit": commit, "size": size, "tables": {"quality": rows},
            "quality_commands": commands}  # fmt: skip


def previous_record(output_dir: Path) -> dict[str, Any] | None:
    """What this run is compared with: ``quality.json`` of the last run, else the newest record under
    ``quality_history/`` (read back from an earlier fragment by :func:`record_from_fragment`)."""
    saved = output_dir / "quality.json"
    if saved.exists():
        return as_run_record(json.loads(saved.read_text()))
    history = sorted((output_dir / "quality_history").glob("*.json"))
    return json.loads(history[-1].read_text()) if history else None


def tuning_table_from_record(saved: dict[str, Any]) -> str:
    """:func:`tuning_table` of a saved tuning."""
    fields = {k: v for k, v in saved.items() if k in Tuning.__dataclass_fields__}
    return tuning_table(Tuning(**fields))


def progress(store: Path) -> str:
    """What the cell store holds so far, run nothing: per test proxy and row, the seeds done, mean ± std of the mean
    image AUROC, and the Welch t-test against PatchCore unified on the seeds both have (a run cut short, read)."""
    lines = []
    for proxy in ("test", "heldout"):
        rows: dict[str, dict[int, float]] = {}
        for saved in sorted((store / proxy).glob("*/seed*.json")):
            record = json.loads(saved.read_text())
            value = record.get("results", {}).get("mean", {}).get("image_AUROC")
            if value is not None and "error" not in record:
                rows.setdefault(saved.parent.name, {})[int(saved.stem.removeprefix("seed"))] = value
        reference = rows.get(_folder(REFERENCE), {})
        lines += [f"### {proxy} proxy: mean image AUROC over the seeds done so far", ""]
        if not rows:
            lines += ["no runs yet", ""]
            continue
        lines += ["| row | seeds | mean ± std | against PatchCore unified (Welch, 95 %) |", "|---|---|---|---|"]
        for name, by_seed in rows.items():
            values = [by_seed[seed] for seed in sorted(by_seed)]
            verdict = ""
            if name != _folder(REFERENCE) and len(values) >= 2 and len(reference) >= 2:
                with warnings.catch_warnings():  # scipy warns when the seeds' values are (nearly) equal
                    warnings.simplefilter("ignore", RuntimeWarning)
                    test = welch_t_test(values, list(reference.values()))
                beyond = "beyond noise" if test.p_value < test.alpha else "within noise"
                verdict = f"{test.difference:+.3f}, p = {test.p_value:.2f} ({beyond})"
            seeds = ",".join(map(str, sorted(by_seed)))
            lines.append(f"| {name} | {seeds} | {format_mean_std(values)} | {verdict} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> Path:
    """Run the quality section and write ``quality.md`` and ``quality.json``."""
    import argparse
    import tempfile
    import time

    from benchmarks.common import OUR_MODELS, RESULTS, SIZES
    from benchmarks.curves import plot_curves
    from benchmarks.run import changes

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None, help="kept folder: a run cut short continues from it")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="runs at once")
    parser.add_argument("--models", nargs="*", default=list(OUR_MODELS))
    parser.add_argument(
        "--cells", type=Path, default=None,
        help="the store of every run's outcome, reused while the result-determining code is unchanged "
        "(default: <output-dir>/quality_cells/<size>)",
    )  # fmt: skip
    parser.add_argument("--render", action="store_true", help="rewrite quality.md from the saved quality.json")
    parser.add_argument("--progress", action="store_true", help="print what the cell store holds so far; run nothing")
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    if args.progress:
        print(progress(args.cells or args.output_dir / "quality_cells" / args.size))
        return args.output_dir / "quality.md"
    saved = args.output_dir / "quality.json"
    if args.render:
        data = json.loads(saved.read_text())
        return _write(args.output_dir, data, SIZES[data["size"]])
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights

    started = time.perf_counter()
    install_efficientnet_lite0_weights()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        work = (args.work or Path(scratch)).resolve()
        store = args.cells or args.output_dir / "quality_cells" / args.size
        record = run_quality(cfg, work, args.jobs, log, args.models, store.resolve())
    command = f"python -m benchmarks.quality --size {args.size}"
    if args.models != list(OUR_MODELS):
        command += " --models " + " ".join(args.models)
    if args.output_dir != RESULTS:
        command += f" --output-dir {args.output_dir}"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    tuning = record["tuning"]
    plot_curves(tuning["curves"], tuning["references"], args.output_dir / "validation_curves.png")
    record |= {"command": command, "size": args.size, "minutes": (time.perf_counter() - started) / 60}
    record["changes"] = changes(previous_record(args.output_dir), as_run_record(record))
    saved.write_text(json.dumps(record, indent=1))
    return _write(args.output_dir, record, cfg)


def _write(directory: Path, record: dict[str, Any], cfg: dict[str, Any]) -> Path:
    markdown = directory / "quality.md"
    png = "benchmarks/results/validation_curves.png"
    markdown.write_text(render(record, cfg, record["command"], record["minutes"], png))
    print(f"wrote {markdown}")
    return markdown


if __name__ == "__main__":
    main()
