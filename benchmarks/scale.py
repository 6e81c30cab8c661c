"""Memory and speed of the per-category evaluation as the test set grows (issue: Real-IAD on one workstation).

    python -m benchmarks.scale                       # 256 .. 16,384 images; about 25 minutes on 2 cores
    python -m benchmarks.scale --sizes 256 1024      # a quick look
    python -m benchmarks.scale --render              # the markdown and plot again from the saved JSON

Generated test batches (256 x 256 anomaly maps and masks, 8 categories on unrelated raw scales, half the images
with defect regions) go through an evaluator's ``update(batch)``, then ``compute()``; all 7 metrics. Each
(evaluator, size) runs in a fresh process, which reports its peak RSS growth (``VmHWM`` after, minus ``VmRSS``
before the first batch) and the seconds spent inside ``update`` and ``compute`` (generating the batches is not
counted). Evaluators:

- ``streamed``: this package's ``PerCategoryEvaluator`` (fixed-size statistics per category);
- ``gathered``: the same evaluator as of commit 8fa30d2, which kept every map (``git archive`` of that commit,
  run where it fits in memory and time);
- ``anomalib``: anomalib's default ``Evaluator`` (image and pixel AUROC and F1; one pooled value, no categories),
  run where it fits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPOSITORY = Path(__file__).resolve().parents[1]
GATHERED_COMMIT = "8fa30d2"
SIZE = 256
CATEGORIES = 8
BATCH = 32
# (evaluator, largest number of images it is run at): the two that keep every map grow ~100 bytes per pixel
LIMITS = {"streamed": 16384, "gathered": 1024, "anomalib": 1024}
DATASETS = {  # (test images, categories) of the papers' datasets, for what the measured rows mean there
    "MVTec AD": (1725, 15),
    "VisA": (2162, 12),
    "Real-IAD, every one of its 151,050 images (more than any split tests)": (151050, 30),
}
HISTOGRAM_MIB = 3  # one category's pixel histogram at the default 2**17 bins


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _batches(images: int):
    """Deterministic test batches: per-category offsets and scales, smooth maps, defect regions with masks."""
    from types import SimpleNamespace

    import torch

    generator = torch.Generator().manual_seed(0)
    for start in range(0, images, BATCH):
        count = min(BATCH, images - start)
        index = torch.arange(start, start + count)
        category = index % CATEGORIES
        defective = (index // CATEGORIES) % 2 == 1
        masks = torch.zeros(count, SIZE, SIZE, dtype=torch.bool)
        corners = torch.randint(0, SIZE - 48, (count, 2), generator=generator)
        for i in defective.nonzero().flatten().tolist():
            y, x = corners[i].tolist()
            masks[i, y : y + 12 + i % 30, x : x + 20 + i % 20] = True
        coarse = torch.rand(count, 1, SIZE // 8, SIZE // 8, generator=generator)
        maps = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        maps = maps + 0.6 * masks.unsqueeze(1) * torch.rand(count, 1, 1, 1, generator=generator)
        scale = (1.0 + category.float() * 7.0).reshape(-1, 1, 1, 1)
        maps = category.float().reshape(-1, 1, 1, 1) * 100.0 + scale * maps  # raw, unrelated scales
        yield SimpleNamespace(
            pred_score=maps.flatten(1).amax(dim=1),
            gt_label=defective.long(),
            anomaly_map=maps,
            gt_mask=masks,
            pred_label=None,
            pred_mask=None,
            category=[f"category_{c}" for c in category.tolist()],
            class_index=category,
            image_path=[
                f"category_{c}/test/{i:06d}.png" for c, i in zip(category.tolist(), index.tolist(), strict=True)
            ],
        )


def _evaluator(name: str):
    if name in {"streamed", "gathered"}:
        from anomalib_multiclass.evaluation import PerCategoryEvaluator

        evaluator = PerCategoryEvaluator()
        return evaluator.update, evaluator.compute
    from anomalib.models.components.base.anomalib_module import AnomalibModule

    evaluator = AnomalibModule.configure_evaluator()
    metrics = list(evaluator.test_metrics)

    def update(batch) -> None:
        batch.anomaly_map = batch.anomaly_map.squeeze(1)  # anomalib's batches hold (B, H, W) maps
        batch.pred_label = batch.pred_score > 0.5
        batch.pred_mask = batch.anomaly_map > 0.5
        for metric in metrics:
            metric.update(batch)

    def compute() -> dict:
        return {metric.name: float(metric.compute()) for metric in metrics}

    return update, compute


def measure(name: str, images: int) -> dict:
    """One evaluator on ``images`` generated test images, in this process."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    update, compute = _evaluator(name)
    batches = _batches(images)
    first = next(batches)
    base = _rss_kib("VmRSS")
    seconds = 0.0
    for batch in _chain(first, batches):
        start = time.perf_counter()
        update(batch)
        seconds += time.perf_counter() - start
    start = time.perf_counter()
    compute()
    seconds += time.perf_counter() - start
    pixels = images * SIZE * SIZE
    growth = max(0, _rss_kib("VmHWM") - base) * 1024
    return {
        "evaluator": name,
        "images": images,
        "pixels": pixels,
        "peak_rss_growth_bytes": growth,
        "seconds": seconds,
        "bytes_per_pixel": growth / pixels,
        "megapixels_per_second": pixels / seconds / 1e6,
    }


def _chain(first, rest):
    yield first
    yield from rest


def _run(name: str, images: int, pythonpath: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "benchmarks.scale", "--measure", name, str(images)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPOSITORY, check=False)
    if result.returncode != 0:
        return {"evaluator": name, "images": images, "failed": result.stderr.strip().splitlines()[-1:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _gathered_tree(work: Path) -> Path:
    """The package as of :data:`GATHERED_COMMIT`, beside this benchmark script (for ``-m benchmarks.scale``)."""
    tree = work / "gathered"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", GATHERED_COMMIT, "anomalib_multiclass"], cwd=REPOSITORY, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    (tree / "benchmarks").mkdir()
    (tree / "benchmarks" / "__init__.py").write_text("")
    (tree / "benchmarks" / "scale.py").write_text(Path(__file__).read_text())
    return tree


def _run_text(payload: dict) -> str:
    """How long the run took and the 1-minute load average around it (what else ran), where recorded."""
    if "load average at start" not in payload:
        return "duration and load not recorded by this run"
    return (
        f"{payload['minutes']:.1f} minutes; 1-minute load average {payload['load average at start']:.2f} when it "
        f"started, {payload['load average at end']:.2f} when it ended"
    )


def render(payload: dict) -> str:
    """The markdown section (and the plot beside it) from the measurements."""
    rows = payload["rows"]
    lines = [
        "## Evaluation at scale: memory and speed of the per-category table",
        "",
        f"`python -m benchmarks.scale` at commit {payload['commit']} ({payload['machine']}; {_run_text(payload)}). "
        f"Generated test sets of {SIZE} x {SIZE} anomaly maps and masks, {CATEGORIES} categories on unrelated raw "
        "scales, all 7 metrics (image AUROC/AP/F1-max, pixel AUROC/AP/F1-max, AUPRO), each run in a fresh process; "
        "seconds inside `update` and `compute` only. `streamed`: this package's evaluator; `gathered`: the same "
        f"evaluator at commit {GATHERED_COMMIT}, which kept every map; `anomalib`: anomalib's default `Evaluator` "
        "(image and pixel AUROC and F1, pooled: no categories). The two that keep maps are run where they fit.",
        "",
        "| evaluator | test images | pixels (M) | peak RSS growth (MiB) | seconds | bytes / pixel | M pixels / s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "failed" in row:
            lines.append(f"| {row['evaluator']} | {row['images']:,} | - | failed: {' '.join(row['failed'])} | | | |")
            continue
        lines.append(
            f"| {row['evaluator']} | {row['images']:,} | {row['pixels'] / 1e6:.0f} | "
            f"{row['peak_rss_growth_bytes'] / 2**20:.0f} | {row['seconds']:.1f} | {row['bytes_per_pixel']:.2f} | "
            f"{row['megapixels_per_second']:.1f} |"
        )
    streamed = [r for r in rows if r["evaluator"] == "streamed" and "failed" not in r]
    gathered = [r for r in rows if r["evaluator"] != "streamed" and "failed" not in r]
    if streamed:
        largest = max(streamed, key=lambda r: r["images"])
        speed = min(r["megapixels_per_second"] for r in streamed)
        keeping = max((r["bytes_per_pixel"] for r in gathered if r["evaluator"] == "gathered"), default=float("nan"))
        lines += [
            "",
            f"What this means for the papers' test sets at 256 px: keeping every map (the `gathered` evaluator's "
            f"{keeping:.0f} bytes per pixel) against streaming (the largest run's peak, plus "
            f"{HISTOGRAM_MIB} MiB per category beyond its {CATEGORIES}), at the slowest measured "
            f"{speed:.1f} M pixels/s:",
            "",
        ]
        for dataset, (images, categories) in DATASETS.items():
            pixels = images * SIZE * SIZE
            memory = largest["peak_rss_growth_bytes"] / 2**20 + HISTOGRAM_MIB * max(0, categories - CATEGORIES)
            lines.append(
                f"- {dataset}: {images:,} test images, {categories} categories ({pixels / 1e9:.2f} G pixels): "
                f"{keeping * pixels / 2**30:,.0f} GiB kept, against about {memory:.0f} MiB streamed, in about "
                f"{pixels / speed / 1e6 / 60:.1f} min of evaluation."
            )
    lines += ["", "![evaluation memory](benchmarks/results/scale.png)"]
    return "\n".join(lines) + "\n"


def plot(payload: dict, path: Path) -> None:
    """Peak RSS growth against test images, one line per evaluator (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    for name in LIMITS:
        rows = [r for r in payload["rows"] if r["evaluator"] == name and "failed" not in r]
        if rows:
            axis.plot([r["images"] for r in rows], [r["peak_rss_growth_bytes"] / 2**20 for r in rows], "o-", label=name)
    axis.set_xscale("log", base=2)
    axis.set_yscale("log")
    axis.set_xlabel(f"test images ({SIZE} x {SIZE}, {CATEGORIES} categories)")
    axis.set_ylabel("peak RSS growth (MiB)")
    axis.axhline(768, color="grey", linestyle=":", label="768 MiB")
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    """Run every (evaluator, size) in its own process; write JSON, markdown and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--evaluators", nargs="+", default=list(LIMITS), choices=list(LIMITS))
    parser.add_argument("--measure", nargs=2, metavar=("EVALUATOR", "IMAGES"), help=argparse.SUPPRESS)
    parser.add_argument("--render", action="store_true", help="rewrite markdown and plot from the saved JSON")
    parser.add_argument("--append", action="store_true", help="add these rows to the saved JSON (same commit)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]))))
        return
    args.output.mkdir(parents=True, exist_ok=True)
    json_path = args.output / "scale.json"
    if args.render:
        payload = json.loads(json_path.read_text())
    else:
        from benchmarks.cells import code_commit

        started = time.perf_counter()
        payload = {
            "commit": code_commit(), "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}",
            "load average at start": os.getloadavg()[0],
        }  # fmt: skip
        rows = []
        with tempfile.TemporaryDirectory() as work:
            gathered = _gathered_tree(Path(work)) if "gathered" in args.evaluators else None
            for images in args.sizes:
                for name in args.evaluators:
                    if images > LIMITS[name]:
                        continue
                    tree = gathered if name == "gathered" and gathered is not None else REPOSITORY
                    rows.append(_run(name, images, tree))
                    print(json.dumps(rows[-1]), flush=True)
        if args.append and json_path.exists():
            previous = json.loads(json_path.read_text())
            if previous["commit"] != payload["commit"]:
                parser.error(f"--append: the saved rows are from commit {previous['commit']}, not {payload['commit']}")
            new = {(r["evaluator"], r["images"]) for r in rows}
            rows = [r for r in previous["rows"] if (r["evaluator"], r["images"]) not in new] + rows
            rows.sort(key=lambda r: (r["images"], list(LIMITS).index(r["evaluator"])))
        payload["rows"] = rows
        payload["minutes"] = (time.perf_counter() - started) / 60
        payload["load average at end"] = os.getloadavg()[0]
        json_path.write_text(json.dumps(payload, indent=2))
    (args.output / "scale.md").write_text(render(payload))
    plot(payload, args.output / "scale.png")
    print(f"Written {args.output / 'scale.md'}, scale.json and scale.png")


if __name__ == "__main__":
    main()
