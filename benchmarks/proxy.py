"""The proxy runs as the commands a user types: ``anomalib train ...`` and ``anomalib-multiclass separate ...``.

Every quality row of BENCHMARKS.md is one command built here and run in-process through anomalib's own CLI
(``AnomalibCLI``), exactly as typed in a shell; the report prints each command. Our models are scaled down for a
CPU (``model_arguments``); the papers' recipes stay in ``configs/``.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

LITE0 = "tf_efficientnet_lite0"


def proxy_input(name: str, cfg: dict[str, Any]) -> int:
    """Input size of a model on the proxy data.

    UniAD and MINT-AD work on one 1/16 map; RLR (attention over the 1/4 map), Omni-AD and LGC (decoders up to
    the 1/4 map) cost several times more per pixel, so they get a smaller image on a CPU.
    """
    return cfg["small_input"] if name in {"RLR", "OmniAD", "LGC"} else cfg["input_size"]


def model_arguments(
    name: str, cfg: dict[str, Any], pre_trained: bool = True, input_size: int | None = None, **extra: Any
) -> dict[str, Any]:
    """Constructor arguments of our model ``name`` scaled down for the proxy (learning rate from the schedule)."""
    size = input_size or proxy_input(name, cfg)
    width, depth = cfg["hidden_dim"], cfg["layers"]
    common = {"backbone": LITE0, "pre_trained": pre_trained, "input_size": [size, size]}
    transformer = {
        "hidden_dim": width, "num_heads": 4, "ffn_dim": 4 * width,
        "num_encoder_layers": depth, "num_decoder_layers": depth,
    }  # fmt: skip
    schedule = cfg["schedule"].get(name, {})
    lr = {"lr": schedule["lr"]} if "lr" in schedule else {}
    if name == "UniAD":
        tokens = size // 16
        arguments = {
            **common,
            **transformer,
            "neighbor_size": 5 if tokens >= 10 else 3,
            "pool_size": max(1, size // 14),
        }
    elif name == "MintAD":
        arguments = {**common, **transformer}
    elif name == "RLR":
        arguments = {
            **common, "layers": [1, 2, 3], "hidden_dims": [width // 2, width // 2, width], "windows": [7, 5, 3],
            "num_blocks": depth, "num_heads": 4,
        }  # fmt: skip
    elif name == "OmniAD":
        # Lite0 stages 1-3 (24/40/112 channels, strides 4/8/16) as the teacher; the neck's width is free
        arguments = {
            **common, "layers": [1, 2, 3], "dims": [width, 112, 40, 24], "depths": [1, depth, depth, 1],
            "num_tokens": 16, "num_heads": 4,
        }  # fmt: skip
    elif name == "LGC":
        # Lite0 stages 1-3 with RD's bottleneck and decoder mirrored from them (models/lgc/mirrored_rd.py)
        arguments = {**common, "layers": [1, 2, 3]}
    else:
        raise KeyError(name)
    return {**arguments, **lr, **extra}


def our_model(name: str, cfg: dict[str, Any], **kwargs: Any) -> Any:
    """Our model ``name`` built with :func:`model_arguments`."""
    import anomalib_multiclass.models as models

    return getattr(models, name)(**model_arguments(name, cfg, **kwargs))


def _cli_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_cli_value(v) for v in value) + "]"
    return str(value)


BASELINES: dict[str, list[str]] = {
    # anomalib's own models, with their default pre-processing (256 px, ImageNet statistics): as a user runs them
    "Padim": ["--model", "Padim", "--model.backbone", LITE0],
    "Patchcore": ["--model", "Patchcore", "--model.backbone", LITE0],
}  # fmt: skip


def train_arguments(
    model: str | list[str],
    data_root: Path,
    root: Path,
    epochs: int,
    init_args: dict[str, Any] | None = None,
    val_every: int | None = None,
    curve: Path | None = None,
    seed: int = 0,
) -> list[str]:
    """The ``anomalib train`` arguments of one proxy row (``model``: our model's name, or a baseline's arguments)."""
    args = list(model) if isinstance(model, list) else ["--model", model]
    for key, value in (init_args or {}).items():
        args += [f"--model.{key}", _cli_value(value)]
    args += ["--data", "MultiClassFolder", "--data.root", str(data_root), "--data.num_workers", "0",
             "--data.train_batch_size", "8", "--data.eval_batch_size", "16",
             "--trainer.max_epochs", str(epochs), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
             "--trainer.enable_progress_bar", "false", "--trainer.logger", "false", "--model.visualizer", "false",
             "--seed_everything", str(seed), "--default_root_dir", str(root)]  # fmt: skip
    if val_every:
        args += ["--trainer.check_val_every_n_epoch", str(val_every)]
    if curve is not None:
        recorder = [{"class_path": "benchmarks.curves.CurveRecorder", "init_args": {"path": str(curve)}}]
        args += ["--trainer.callbacks", json.dumps(recorder)]
    return args


def command_text(program: str, args: list[str], data_root: Path, root: Path) -> str:
    """The shell command of a row, with the scratch paths written as placeholders."""
    text = " ".join(shlex.quote(a) for a in args if not a.startswith('[{"class_path": "benchmarks'))
    text = text.replace(" --trainer.callbacks", "")
    return f"{program} {text}".replace(str(data_root), "<proxy>").replace(str(root), "<run>")


def run_train(args: list[str]) -> tuple[dict[str, dict[str, float]], float]:
    """``anomalib train <args>`` in this process; the per-category table and the seconds it took."""
    from anomalib.cli import AnomalibCLI

    start = time.perf_counter()
    try:
        cli = AnomalibCLI(["train", *args])
    except SystemExit as error:  # the CLI's parser exits on a bad argument: a failed row, not a failed benchmark
        msg = f"anomalib train refused the arguments (exit {error.code}); its message is above"
        raise RuntimeError(msg) from error
    return cli.model.evaluator.results, time.perf_counter() - start


def run_separate(args: list[str]) -> tuple[dict[str, dict[str, float]], float]:
    """``anomalib-multiclass separate <args>`` in this process; the merged table and the seconds it took."""
    from anomalib_multiclass.separate import train_separately

    start = time.perf_counter()
    table = train_separately(args)
    return table.results, time.perf_counter() - start
