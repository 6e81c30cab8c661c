"""The quality section's runs ("cells": proxy, row, seed), their datasets, when a saved outcome is reused, and the
commit a benchmark's numbers come from.

A cell is one ``anomalib train`` (or ``anomalib-multiclass separate``) command run in a worker process. Its outcome
is saved as JSON with its command, the commit it ran at and the library versions (the store is committed under
``benchmarks/results/quality_cells/<size>/``, so a run that needs more hours than one session continues in the next).
A saved outcome is reused only when its command is the same, its library versions are the same, and the code that
determines its result is unchanged between its commit and the working tree (``git diff --quiet <commit> --
<pathspec>``, :func:`cell_pathspec`): :data:`RESULT_CODE` (the package, the proxy commands, the dataset generator,
this module) less :data:`NOT_RUN_BY_CELLS` (export code and documentation) and less the other models' own code (a
change to RLR reruns RLR's cells, not UniAD's). Rendering and reporting code may change without rerunning hours of
training; anything that can change a number cannot.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import multiprocessing
import os
import subprocess
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.curves import read_curve
from benchmarks.proxy import command_text

PROXIES = ("validation", "test", "heldout")
GENERATOR_SEEDS = {"validation": 1, "test": 0, "heldout": 0}
REPOSITORY = Path(__file__).resolve().parent.parent
# what a cell's numbers depend on besides its command line: a change here reruns every saved cell
RESULT_CODE = (
    "anomalib_multiclass", "configs", "pyproject.toml", "benchmarks/cells.py", "benchmarks/proxy.py",
    "benchmarks/common.py", "benchmarks/curves.py",
)  # fmt: skip
# what a cell never runs (``anomalib train`` fits and tests; it does not export, and these modules are imported only
# by the export methods) and documentation: changing them leaves the saved cells standing
DOCUMENTATION = "anomalib_multiclass/**/*.md"
NOT_RUN_BY_CELLS = (
    "anomalib_multiclass/deploy", "anomalib_multiclass/models/components/multiclass_export.py",
    DOCUMENTATION,
)  # fmt: skip
CELL_PATHSPEC = (*RESULT_CODE, *(f":(exclude,glob){path}" for path in NOT_RUN_BY_CELLS))
# each of our models' own code: its directory under anomalib_multiclass/models and its configs/*<folder>*.yaml
# (no model imports another model's directory: tests/unit/test_architecture.py)
MODEL_FOLDERS = {"UniAD": "uniad", "MintAD": "mint_ad", "RLR": "rlr", "OmniAD": "omni_ad", "LGC": "lgc"}
# what a section's numbers are computed by: uncommitted changes here make the recorded commit "<commit>+dirty"
NUMBER_CODE = ("anomalib_multiclass", "configs", "pyproject.toml", "benchmarks")


def cell_pathspec(model: str | None) -> tuple[str, ...]:
    """The files the numbers of a run of ``model`` depend on: :data:`CELL_PATHSPEC` less the other models' own code
    (``None``: anomalib's baselines, which run none of our models)."""
    if model is not None and model not in MODEL_FOLDERS:
        msg = f"Unknown model {model!r}; cells know {sorted(MODEL_FOLDERS)}."
        raise ValueError(msg)
    others = [folder for name, folder in MODEL_FOLDERS.items() if name != model]
    excluded = [f"anomalib_multiclass/models/{folder}" for folder in others] + [f"configs/*{f}*" for f in others]
    return (*CELL_PATHSPEC, *(f":(exclude,glob){path}" for path in excluded))


def proxy_categories(proxy: str, cfg: dict[str, Any]) -> list[str]:
    """The categories of a proxy: the heldout proxy has its own photos."""
    return list(cfg["heldout_categories"] if proxy == "heldout" else cfg["categories"])


def make_proxy(proxy: str, cfg: dict[str, Any], work: Path) -> Path:
    """Generate (once per work folder) the dataset of ``proxy`` and return its root."""
    from anomalib_multiclass.data.synthetic import DEFECT_TYPES, HELDOUT_DEFECT_TYPES, make_synthetic_dataset

    if proxy not in PROXIES:
        msg = f"Unknown proxy {proxy!r}; use one of {PROXIES}."
        raise ValueError(msg)
    root = work / f"proxy_{proxy}"
    done = root / ".complete"
    if done.exists():
        return root
    make_synthetic_dataset(
        root, categories=proxy_categories(proxy, cfg), n_train=cfg["n_train"], n_test_good=cfg["n_test_good"],
        n_test_defect=cfg["n_test_defect"], image_size=cfg["image_size"], seed=GENERATOR_SEEDS[proxy],
        defect_types=HELDOUT_DEFECT_TYPES if proxy == "heldout" else DEFECT_TYPES,
    )  # fmt: skip
    done.write_text("generated\n")
    return root


# ----------------------------------------------------------------------------------------------- the cells
@dataclass(frozen=True)
class Cell:
    """One command of the quality section: a row of a proxy at one seed (``curve``: its validation curve's file)."""

    proxy: str
    label: str
    seed: int
    program: str
    args: tuple[str, ...]
    curve: str | None = None
    model: str | None = None  # which of our models it runs (None: an anomalib baseline): what it depends on

    @property
    def key(self) -> str:
        """The cell's file name under the work folder."""
        return f"{self.proxy}/{_folder(self.label)}/seed{self.seed}.json"

    def command(self, data_root: Path, run_root: Path) -> str:
        """The command as a user types it, scratch paths as placeholders."""
        return command_text(self.program, list(self.args), data_root, run_root)


def _folder(label: str) -> str:
    """A file-system name of a row label (letters, digits, dots and underscores only)."""
    return "_".join("".join(ch if ch.isalnum() or ch == "." else " " for ch in label).split())


def code_commit(repository: Path | None = None, paths: tuple[str, ...] = NUMBER_CODE) -> str:
    """The checked-out commit the numbers come from, ``<commit>+dirty`` when tracked files of ``paths`` (the
    package, configs and benchmark code; not the results a run writes) differ from it, ``unknown`` outside a git
    checkout. The provenance table counts a dirty commit as stale and no saved cell of one is reused: its code cannot
    be recovered."""
    repository = repository or REPOSITORY
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repository, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", *paths, ":(exclude)benchmarks/results"],
            cwd=repository, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}+dirty" if changed else commit


@functools.cache
def result_code_unchanged_since(commit: str, pathspec: tuple[str, ...] | None = None) -> bool:
    """Whether every file of ``pathspec`` (default :data:`CELL_PATHSPEC`) in the working tree is as it was at
    ``commit`` (False when the commit is unknown here, e.g. in a shallow clone, or was dirty)."""
    if not commit or commit.endswith("dirty") or commit == "unknown":
        return False
    pathspec = pathspec or CELL_PATHSPEC
    try:
        diff = subprocess.run(["git", "diff", "--quiet", commit, "--", *pathspec], cwd=REPOSITORY,
                              capture_output=True, check=False)  # fmt: skip
        new_files = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", *pathspec],
                                   cwd=REPOSITORY, capture_output=True, text=True, check=False)  # fmt: skip
    except OSError:
        return False
    return diff.returncode == 0 and new_files.returncode == 0 and not new_files.stdout.strip()


def library_versions() -> dict[str, str]:
    """The versions of the libraries a cell's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "torchvision", "anomalib", "timm", "lightning", "torchmetrics", "numpy", "scikit-learn"):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return versions


def _in_work(args: list[str] | tuple[str, ...], work: str | None) -> list[str]:
    """A cell's arguments with its work folder written ``<work>``: the same command in another work folder."""
    return [arg.replace(work, "<work>") for arg in args] if work else list(args)


def reusable(record: dict[str, Any], cell: Cell, versions: dict[str, str], work: Path | None = None) -> bool:
    """A saved outcome stands for ``cell`` now: same command (in any work folder), same libraries, the code its
    result depends on (:func:`cell_pathspec` of its model) unchanged."""
    saved = _in_work(record.get("args", []), record.get("work"))
    same_run = saved == _in_work(cell.args, str(work) if work else None) and record.get("versions") == versions
    unchanged = result_code_unchanged_since(record.get("code", ""), cell_pathspec(cell.model))
    return same_run and "error" not in record and unchanged


def _run_cell(cell: Cell, log_path: str, threads: int) -> dict[str, Any]:
    """Run one cell (in a worker process): its per-category table, seconds, curve, or the error."""
    import torch

    from benchmarks.proxy import run_separate, run_train

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)  # denormal floats in a decoder's tail can slow a CPU step many times over
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            # anomalib's baselines only gather statistics: no gradients
            with torch.no_grad() if _is_baseline(cell.label) else contextlib.nullcontext():
                run = run_separate if cell.program.endswith("separate") else run_train
                results, seconds = run(list(cell.args))
        except Exception as error:
            traceback.print_exc()
            return {"error": f"{error!r}"[:300] + f" (log: {log_path})"}
    curve = read_curve(Path(cell.curve)) if cell.curve else []
    return {"results": _plain(results), "seconds": seconds, "curve": curve}


def _plain(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """The evaluator's table as JSON numbers (``None`` for undefined metrics)."""
    table: dict[str, dict[str, float | None]] = {}
    for category, metrics in results.items():
        table[category] = {}
        for name, value in metrics.items():
            with contextlib.suppress(TypeError, ValueError):
                number = float(value)
                table[category][name] = None if math.isnan(number) else number
    return table


def run_cells(
    cells: list[Cell], work: Path, jobs: int, log: Callable[[str], None], store: Path | None = None
) -> dict[Cell, dict[str, Any]]:
    """Every cell's outcome: reused from ``store`` (default ``work/cells``) when :func:`reusable`, else run (``jobs``
    at once, each on ``cpus // jobs`` threads) and saved there."""
    store = store or work / "cells"
    state, versions = code_commit(), library_versions()
    outcomes: dict[Cell, dict[str, Any]] = {}
    todo = []
    for cell in cells:
        saved = store / cell.key
        if saved.exists() and reusable(record := json.loads(saved.read_text()), cell, versions, work):
            outcomes[cell] = record
            continue
        todo.append(cell)
    if len(todo) < len(cells):
        commits = sorted({record["code"] for record in outcomes.values()})
        log(f"reusing {len(cells) - len(todo)} cells saved under {store} at commit(s) {', '.join(commits)}")
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))

    def finished(cell: Cell, outcome: dict[str, Any], count: int) -> None:
        outcome |= {"code": state, "args": list(cell.args), "work": str(work), "versions": versions,
                    "threads": threads, "jobs": jobs}  # fmt: skip
        saved = store / cell.key
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(outcome, indent=1))
        outcomes[cell] = outcome
        status = f"failed: {outcome['error']}" if "error" in outcome else f"{outcome['seconds']:.0f} s"
        log(f"[{count}/{len(todo)}] {cell.proxy} {cell.label} seed {cell.seed}: {status}")

    def log_file(cell: Cell) -> str:
        return str(work / "logs" / cell.key.replace(".json", ".log"))

    if jobs <= 1:  # in this process
        for count, cell in enumerate(todo, start=1):
            finished(cell, _run_cell(cell, log_file(cell), threads), count)
        return {cell: outcomes[cell] for cell in cells}
    # A worker killed from outside (the kernel's out-of-memory killer) breaks the whole pool: the cells it had not
    # finished run again in a fresh pool of one worker (half the memory); a cell that breaks a pool twice fails.
    context = multiprocessing.get_context("spawn")
    broken: dict[Cell, int] = {}
    remaining, count = list(todo), 0
    while remaining:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(_run_cell, cell, log_file(cell), threads): cell for cell in remaining}
            for future, cell in futures.items():
                try:
                    outcome = future.result()
                except BrokenProcessPool as error:
                    broken[cell] = broken.get(cell, 0) + 1
                    if broken[cell] < 2:
                        continue
                    outcome = {"error": f"its worker was killed twice (out of memory?): {error!r}"[:300]}
                except Exception as error:  # a crash in native code, an unpicklable result
                    outcome = {"error": f"worker failed: {error!r}"[:300]}
                count += 1
                finished(cell, outcome, count)
        remaining = [cell for cell in remaining if cell not in outcomes]
        if remaining:
            log(f"a worker died (out of memory?): the {len(remaining)} unfinished cells run again, one at a time")
            jobs, threads = 1, os.cpu_count() or 1
    return {cell: outcomes[cell] for cell in cells}  # in the order of ``cells``: the order of the table


def _is_baseline(label: str) -> bool:
    """anomalib's Padim and PatchCore rows (tuning included): statistics only, run without gradients."""
    return "(anomalib)" in label
