"""What the benchmark scripts share: their sizes, the table row and its markdown, the proxy datamodule, training.

``benchmarks.run`` (every section), ``benchmarks.quality``, ``benchmarks.edge``, ``benchmarks.lgc_claim`` and
``benchmarks.bf16_training`` import these; none of them imports another script's private helpers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {
        "categories": ["brick", "grass", "coffee"],
        "n_train": 8, "n_test_good": 2, "n_test_defect": 4, "image_size": 96,
        "input_size": 64, "epochs": 2, "hidden_dim": 32, "layers": 1, "repeats": 2, "speed_batch": 4,
        "speed_input": 64, "small_input": 64, "rlr_batches": [1], "rlr_steps": 1, "rlr_level_map": 32,
        "probe_models": ["UniAD"], "probe_epochs": 2,
        "mix_train": 4, "mix_test_good": 2, "mix_test_defect": 2,
        "schedule": {name: {"epochs": 2, "val_every": 1} for name in ("UniAD", "MintAD", "RLR", "OmniAD", "LGC")},
        "seeds": [0, 1], "heldout_categories": ["tissue", "moon", "coins"],
        "edge_epochs": 1, "bf16_steps": 2, "scale_sizes": [256],
        # the evaluator of an old commit ("gathered") needs the git history, which a shallow CI clone lacks
        "scale_evaluators": ["streamed", "anomalib"],
        "tuning": {
            "ours": {name: {"lr": [1e-3, 3e-3], "max_epochs": 2, "val_every": 1}
                     for name in ("UniAD", "MintAD", "RLR", "OmniAD", "LGC")},
            "baselines": {
                "Padim": [["--model.layers", "[blocks.1,blocks.2]", "--model.n_features", "50"],
                          ["--model.layers", "[blocks.2,blocks.4]", "--model.n_features", "100"]],
                "Patchcore": [["--model.layers", "[blocks.2,blocks.4]", "--model.coreset_sampling_ratio", "0.01"],
                              ["--model.layers", "[blocks.2,blocks.6]", "--model.coreset_sampling_ratio", "0.01"]],
            },
        },
    },
    "default": {
        "categories": ["brick", "grass", "gravel", "coffee", "chelsea"],
        "n_train": 20, "n_test_good": 6, "n_test_defect": 10, "image_size": 128,
        "input_size": 224, "epochs": 25, "hidden_dim": 128, "layers": 2, "repeats": 5, "speed_batch": 32,
        "speed_input": 224, "small_input": 128, "rlr_batches": [1, 2, 4], "rlr_steps": 3, "rlr_level_map": 64,
        "probe_models": None, "probe_epochs": 3,
        "mix_train": 12, "mix_test_good": 4, "mix_test_defect": 6,
        # the other sections' epochs and learning rates until the quality section's tuning replaces them
        "schedule": {
            "UniAD": {"epochs": 60, "lr": 1e-3, "val_every": 10},
            "MintAD": {"epochs": 60, "lr": 1e-3, "val_every": 10},
            "RLR": {"epochs": 40, "lr": 3e-3, "val_every": 5},
            "OmniAD": {"epochs": 60, "lr": 1e-3, "val_every": 10},
            "LGC": {"epochs": 30, "val_every": 5},
        },
        "seeds": [0, 1, 2],
        "edge_epochs": 2, "bf16_steps": 12, "scale_sizes": [256, 1024, 4096, 16384],
        "scale_evaluators": ["streamed", "gathered", "anomalib"],
        "heldout_categories": ["tissue", "moon", "astronaut", "rocket", "coins", "camera"],
        # two configurations per model, chosen on the validation proxy (``benchmarks.quality``); Lite0's feature
        # stages in timm are blocks.1 (stride 4), blocks.2 (8), blocks.4 (16), blocks.6 (32). PatchCore keeps a 1 %
        # coreset in both: its greedy selection over stride-4 patches, or of anomalib's default 10 %, takes 10-20
        # minutes per run on this CPU (measured: blocks.1+2 at 1 %, 4,095 steps at 3 per second)
        "tuning": {
            "ours": {
                "UniAD": {"lr": [1e-3, 3e-3], "max_epochs": 60, "val_every": 10},
                "MintAD": {"lr": [1e-3, 3e-3], "max_epochs": 60, "val_every": 10},
                "RLR": {"lr": [1e-3, 3e-3], "max_epochs": 40, "val_every": 5},
                "OmniAD": {"lr": [1e-3, 3e-3], "max_epochs": 60, "val_every": 10},
                "LGC": {"lr": [5e-3, 1.5e-3], "max_epochs": 30, "val_every": 5},
            },
            "baselines": {
                "Padim": [["--model.layers", "[blocks.1,blocks.2]", "--model.n_features", "50"],
                          ["--model.layers", "[blocks.2,blocks.4]", "--model.n_features", "100"]],
                "Patchcore": [["--model.layers", "[blocks.2,blocks.4]", "--model.coreset_sampling_ratio", "0.01"],
                              ["--model.layers", "[blocks.2,blocks.6]", "--model.coreset_sampling_ratio", "0.01"]],
            },
        },
    },
}  # fmt: skip
RESULTS = Path(__file__).parent / "results"
OUR_MODELS = ("UniAD", "MintAD", "RLR", "OmniAD", "LGC")
SMALL_INPUT_MODELS = ("RLR", "OmniAD", "LGC")


@dataclass
class Row:
    """One line of a result table."""

    name: str
    setting: str
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""


def proxy_datamodule(root: Path, categories: list[str] | None = None) -> Any:
    from anomalib_multiclass.data import MultiClassFolder

    return MultiClassFolder(root=root, categories=categories, train_batch_size=8, eval_batch_size=16, num_workers=0)


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


def fit_and_test(model: Any, datamodule: Any, epochs: int, work: Path) -> tuple[dict, float]:
    """Train and test a model object (the all-in-all run, whose mixed datamodule is built in Python)."""
    from anomalib.engine import Engine

    engine = Engine(
        max_epochs=epochs, accelerator="cpu", default_root_dir=work, logger=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    start = time.perf_counter()
    engine.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    engine.test(model, datamodule=datamodule, verbose=False)
    return model.evaluator.results, seconds


def built_models() -> list[str]:
    """Our models, in the order of the tables (every one is built; ``benchmarks.edge`` takes its default here)."""
    return list(OUR_MODELS)


def table(rows: list[Row]) -> str:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row.values if c not in columns]
    lines = ["| model | setting | " + " | ".join(columns) + " | note |", "|" + "---|" * (len(columns) + 3)]
    for row in rows:
        cells = [v if isinstance(v := row.values.get(c), str) else fmt(v) for c in columns]  # text as it is
        lines.append(f"| {row.name} | {row.setting} | " + " | ".join(cells) + f" | {row.note} |")
    return "\n".join(lines)


def fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
