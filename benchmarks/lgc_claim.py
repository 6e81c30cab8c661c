"""LGC's claim on real features: class-aware contrastive learning against plain RD trained jointly, several seeds.

    python -m benchmarks.lgc_claim --size default     # writes benchmarks/results/lgc_claim.md and .json
    python -m benchmarks.lgc_claim --size smoke --output-dir /tmp/lgc_claim

The paper (Fan et al., Fig. 1a and its ablations) finds that LGC's two contrastive losses lift Reverse
Distillation trained on all classes at once ("Joint") by several image-AUROC points. Here both run on real
ImageNet features (EfficientNet-Lite0 stages 1-3, RD's bottleneck and decoder mirrored from them), same network,
same seeds, the same epochs: ``LGC()`` against ``LGC(contrastive=False)``, unified on the proxy data and on the
all-in-all mixture of two dataset layouts (``benchmarks/run.py``'s data). Everything in the report is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.run import (
    SIZES,
    Row,
    _datamodule,
    _fit_and_test,
    _our_model,
    _proxy_input,
    _quality_variants,
    _table,
    all_in_all_data,
)

RESULTS = Path(__file__).parent / "results"
SEEDS = {"smoke": [0], "default": [0, 1, 2]}


def run_one(overrides: dict[str, Any], seed: int, datamodule: Any, cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Train and test one LGC variant with one seed; per-category and mean AUROC from the evaluator."""
    from lightning.pytorch import seed_everything

    from anomalib_multiclass.evaluation.per_category import is_summary_row

    seed_everything(seed, workers=True, verbose=False)
    model = _our_model("LGC", cfg, **overrides)
    results, seconds = _fit_and_test(model, datamodule, cfg["lgc_epochs"], work)
    categories = [name for name in results if not is_summary_row(name)]
    return {
        "categories": {c: results[c]["image_AUROC"] for c in categories},
        "mean I-AUROC": results["mean"]["image_AUROC"],
        "mean P-AUROC": results["mean"]["pixel_AUROC"],
        "train s": seconds,
    }


def measure(cfg: dict[str, Any], seeds: list[int], work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Every (setting, variant, seed) run."""
    from anomalib_multiclass.data.synthetic import make_synthetic_dataset

    data_root = make_synthetic_dataset(
        work / "proxy", categories=cfg["categories"], n_train=cfg["n_train"], n_test_good=cfg["n_test_good"],
        n_test_defect=cfg["n_test_defect"], image_size=cfg["image_size"], seed=0,
    )  # fmt: skip
    mixed = all_in_all_data(cfg, work)
    settings = {"unified": lambda: _datamodule(data_root), "all-in-all": mixed}
    runs: dict[str, Any] = {}
    for setting, datamodule in settings.items():
        for label, overrides in _quality_variants("LGC"):
            variant = "LGC" if overrides.get("contrastive", True) else "RD joint (contrastive off)"
            for seed in seeds:
                log(f"LGC claim: {setting}, {variant}, seed {seed}")
                key = f"{setting} | {variant} | {seed}"
                try:
                    runs[key] = run_one(overrides, seed, datamodule(), cfg, work / f"{setting}_{label}{seed}")
                except Exception as error:
                    traceback.print_exc()
                    runs[key] = {"error": f"{error!r}"[:300]}
    return runs


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def summary_rows(runs: dict[str, Any], seeds: list[int]) -> list[Row]:
    """Per setting: each variant's mean over seeds (± standard deviation), then the paired difference."""
    rows = []
    for setting in ("unified", "all-in-all"):
        per_variant: dict[str, dict[str, list[float]]] = {}
        for variant in ("LGC", "RD joint (contrastive off)"):
            found = [runs.get(f"{setting} | {variant} | {s}", {}) for s in seeds]
            ok = [r for r in found if "error" not in r and r]
            if len(ok) < len(found):
                errors = [r.get("error", "missing") for r in found if r not in ok]
                rows.append(Row(variant, setting, note=f"failed: {errors[0]}"))
            values = {key: [r[key] for r in ok] for key in ("mean I-AUROC", "mean P-AUROC")}
            per_variant[variant] = values
            if ok:
                cells = {f"seed {s} I-AUROC": r["mean I-AUROC"] for s, r in zip(seeds, found, strict=True) if r in ok}
                cells |= {
                    "mean I-AUROC": statistics.fmean(values["mean I-AUROC"]),
                    "std I-AUROC": _spread(values["mean I-AUROC"]),
                    "mean P-AUROC": statistics.fmean(values["mean P-AUROC"]),
                    "std P-AUROC": _spread(values["mean P-AUROC"]),
                }
                rows.append(Row(variant, f"{setting}, {len(ok)} seed{'s' if len(ok) > 1 else ''}", cells))
        lgc, rd = per_variant.get("LGC", {}), per_variant.get("RD joint (contrastive off)", {})
        if lgc.get("mean I-AUROC") and len(lgc["mean I-AUROC"]) == len(rd.get("mean I-AUROC", [])):
            gaps = [a - b for a, b in zip(lgc["mean I-AUROC"], rd["mean I-AUROC"], strict=True)]
            pixel = [a - b for a, b in zip(lgc["mean P-AUROC"], rd["mean P-AUROC"], strict=True)]
            cells = {f"seed {s} I-AUROC": g for s, g in zip(seeds, gaps, strict=True)}
            cells |= {
                "mean I-AUROC": statistics.fmean(gaps),
                "std I-AUROC": _spread(gaps),
                "mean P-AUROC": statistics.fmean(pixel),
                "std P-AUROC": _spread(pixel),
            }
            wins = sum(g > 0 for g in gaps)
            rows.append(Row("LGC − RD joint", f"{setting}, paired by seed", cells, f"LGC higher in {wins}/{len(gaps)}"))
    return rows


def category_rows(runs: dict[str, Any]) -> list[Row]:
    """Image AUROC of every category, per run."""
    rows = []
    for key, run in runs.items():
        if "categories" in run:
            setting, variant, seed = key.split(" | ")
            rows.append(Row(variant, f"{setting}, seed {seed}", dict(run["categories"])))
    return rows


def report(runs: dict[str, Any], cfg: dict[str, Any], seeds: list[int], command: str, minutes: float) -> str:
    """The markdown fragment for BENCHMARKS.md."""
    return f"""## LGC's claim on real features: contrastive learning against plain RD trained jointly

Generated by `{command}` in {minutes:.1f} minutes; do not edit by hand. Machine: {platform.machine()},
{os.cpu_count()} CPU cores, torch {torch.__version__}.

`LGC()` against `LGC(contrastive=False)` (the paper's "Joint": the same network, projector included, trained with
the distillation loss only), both on EfficientNet-Lite0 stages 1-3 with real ImageNet weights and RD's bottleneck
and decoder mirrored from them, {cfg["lgc_epochs"]} epochs, {_proxy_input("LGC", cfg)} px, seeds {seeds} (the same
seed gives both variants the same initial weights and batch order). Unified: the proxy data, categories
{cfg["categories"]}, {cfg["n_train"]} normal training images each, {cfg["n_test_good"]} normal and
{cfg["n_test_defect"]} defective test images. All-in-all: an MVTec AD layout and a VisA layout in one model
(`benchmarks/run.py`, `all_in_all_data`), {cfg["mix_train"]} training images per category. AUROC per category
from the package's evaluator on raw scores, then the mean over categories; "std" is over seeds. The last rows of
each setting are the paired differences LGC − RD joint, seed by seed.

{_table(summary_rows(runs, seeds))}

Per category (image AUROC):

{_table(category_rows(runs))}
"""


def main(argv: list[str] | None = None) -> Path:
    """Run the comparison and write the markdown fragment and its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--seeds", type=int, nargs="*", default=None, help="default: 1 seed (smoke), 3 (default)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    seeds = args.seeds if args.seeds else SEEDS[args.size]
    torch.set_flush_denormal(True)  # denormal floats in a decoder's tail can slow a CPU step many times over

    from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights

    started = time.perf_counter()
    install_efficientnet_lite0_weights()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        runs = measure(cfg, seeds, args.work or Path(scratch), log)
    minutes = (time.perf_counter() - started) / 60
    command = f"python -m benchmarks.lgc_claim --size {args.size}"
    if args.seeds:
        command += " --seeds " + " ".join(map(str, args.seeds))
    if args.output_dir != RESULTS:
        command += f" --output-dir {args.output_dir}"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    markdown = args.output_dir / "lgc_claim.md"
    markdown.write_text(report(runs, cfg, seeds, command, minutes))
    (args.output_dir / "lgc_claim.json").write_text(
        json.dumps({"command": command, "minutes": minutes, "seeds": seeds, "runs": runs}, indent=2)
    )
    print(f"wrote {markdown}")
    return markdown


if __name__ == "__main__":
    main()
