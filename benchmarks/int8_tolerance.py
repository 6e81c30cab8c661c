"""The fp32 against INT8_PTQ gap that ``tests/integration/test_int8.py`` allows, measured over several seeds.

    python -m benchmarks.int8_tolerance --models UniAD MintAD RLR OmniAD LGC --seeds 0 1 2

Each model as the test builds and trains it (tiny, real Lite0 features, 64 px, the test's epochs, the test's
generated data), seeded with each seed in turn, exported by anomalib's engine as fp32 and as INT8_PTQ (4
calibration images per category); prints the mean per-category image AUROC of both on the test images and their
difference. The test's ``AUROC_TOLERANCE`` is the largest |difference| seen plus one swapped pair.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Measure; ``{"<model> <seed>": (fp32 AUROC, INT8 AUROC)}``."""
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine

    from anomalib_multiclass.data.synthetic import make_synthetic_dataset
    from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights
    from tests.integration.test_int8 import EPOCHS, FP32, MODELS, _datamodule, _mean_category_auroc, _run, _test_set

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    args = parser.parse_args(argv)
    install_efficientnet_lite0_weights()
    torch.set_flush_denormal(True)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        root = make_synthetic_dataset(  # the test's ``synthetic_root``
            work / "synthetic" / "mvtec", n_train=6, n_test_good=3, n_test_defect=5, image_size=64, seed=0
        )
        images, labels, categories = _test_set(root)
        for name in args.models:
            for seed in args.seeds:
                start = time.perf_counter()
                torch.manual_seed(seed)
                cls, kwargs = MODELS[name]
                module = cls(**kwargs)
                engine = Engine(
                    max_epochs=EPOCHS.get(name, 2), accelerator="cpu", default_root_dir=work / f"{name}{seed}",
                    logger=False, enable_progress_bar=False, enable_model_summary=False,
                )  # fmt: skip
                engine.fit(module, datamodule=_datamodule(root))
                module.eval()
                post = module.post_processor
                post.enable_normalization = post.enable_thresholding = False  # raw scores, as the test
                aurocs = []
                for compression in (None, CompressionType.INT8_PTQ):
                    path = engine.export(
                        module, ExportType.OPENVINO, export_root=work / f"{name}{seed}" / str(compression),
                        input_size=(64, 64), compression_type=compression,
                        datamodule=_datamodule(root, calibration_images_per_category=4),
                    )  # fmt: skip
                    scores = _run(path, images, FP32 if compression is None else None)["pred_score"].ravel()
                    aurocs.append(_mean_category_auroc(scores, labels, categories))
                results[f"{name} {seed}"] = (aurocs[0], aurocs[1])
                print(
                    f"{name} seed {seed}: fp32 {aurocs[0]:.4f} INT8 {aurocs[1]:.4f} difference "
                    f"{aurocs[1] - aurocs[0]:+.4f} ({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    return results


if __name__ == "__main__":
    main()
