"""bf16-mixed against fp32 training on this machine's CPU, each model, step times interleaved (issue 27).

    python -m benchmarks.bf16_training --steps 12     # writes benchmarks/results/bf16_training.md and .json

Lightning's ``--trainer.precision bf16-mixed`` on a CPU runs each training step under
``torch.autocast("cpu", dtype=torch.bfloat16)``. Here two copies of a model, built from the same seed, take the
same batches in turns (fp32 step, bf16 step, bf16 step, fp32 step, ...), so the load of a shared machine hits both
alike; both draw the same random numbers on a step. The steps are the module's own ``training_step`` with its own
optimizer, outside a Trainer (two Trainers cannot take turns): the backbone runs on every step (no feature cache),
as in a first epoch.

A ratio measured in one process can differ from the next one's beyond its own steps' spread (LGC gave 1.12x in
one process and 1.36x in the next, their 95 % intervals apart): each process allocates and schedules threads
anew. So the measurement runs in ``--processes`` fresh processes one after another, and a speed-up is called real
only by a t-test over the per-process speed-ups (``processes - 1`` degrees of freedom, fixed before the run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.cells import code_commit
from benchmarks.common import OUR_MODELS, SIZES, proxy_datamodule
from benchmarks.edge import machine_info
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
    return result | step_statistics(times["fp32"][1:], times["bf16-mixed"][1:], losses["fp32"], losses["bf16-mixed"])


def step_statistics(
    fp32_s: list[float], bf16_s: list[float], fp32_loss: list[float], bf16_loss: list[float]
) -> dict[str, Any]:
    """Within one process: the per-step speed-up's spread and geometric mean, and how far the losses part.

    Step ``i`` of both copies takes the same batch next to each other in time, so the steps pair: a paired t-test
    on the log step times gives the geometric-mean speed-up and its 95 % interval *within the process*. The loss
    gap is relative, ``bf16 / fp32 - 1`` per step; step 1 is at the same weights (the precision's own error), later
    steps also carry the two trajectories' drift."""
    ratios = [a / b for a, b in zip(fp32_s, bf16_s, strict=True)]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    test = paired_t_test([math.log(a) for a in fp32_s], [math.log(b) for b in bf16_s])
    gaps = [b / a - 1 for a, b in zip(fp32_loss, bf16_loss, strict=True)]
    return {
        "ratio quartiles": quartiles,
        "geometric speed-up": math.exp(test.difference),
        "speed-up 95% CI": [math.exp(test.low), math.exp(test.high)],
        "p": test.p_value,
        "verdict": _verdict(test),
        "loss gap first": gaps[0],
        "loss gap mean": statistics.fmean(gaps),
        "loss gap largest": max(gaps, key=abs),
    }


def across_processes(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's row from its runs in several fresh processes: the first run's figures (step times, losses)
    with the speed-up, its interval and verdict taken over the per-process geometric-mean speed-ups (one-sample
    t-test on their logs, ``processes - 1`` degrees of freedom)."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    logs = [math.log(r["geometric speed-up"]) for r in runs]
    test = paired_t_test(logs, [0.0] * len(logs))
    combined = dict(runs[0])
    combined |= {
        "processes": len(runs),
        "per process": [r["geometric speed-up"] for r in runs],
        "per process 95% CI": [r["speed-up 95% CI"] for r in runs],
        "geometric speed-up": math.exp(statistics.fmean(logs)),
        "speed-up 95% CI": [math.exp(test.low), math.exp(test.high)] if len(runs) > 1 else [math.nan, math.nan],
        "p": test.p_value,
        "verdict": _verdict(test),
        "fp32 step s per process": [r["fp32"]["step s"] for r in runs],
        "bf16-mixed step s per process": [r["bf16-mixed"]["step s"] for r in runs],
    }
    return combined


def _verdict(test: Comparison) -> str:
    if math.isnan(test.p_value):
        return "not tested (one process)"
    if not test.beyond_noise:
        return "within noise"
    return "faster beyond noise" if test.difference > 0 else "slower beyond noise"


def report(results: dict[str, Any], command: str, minutes: float, machine: dict[str, Any]) -> str:
    """The markdown fragment."""
    lines = [
        "| model | batch | N | processes | fp32 step s | bf16-mixed step s | bf16 speed-up | per process | 95 % CI "
        "| verdict | loss gap, step 1 (same weights) | fp32 / bf16 loss after N | loss gap over N: mean / largest "
        "| note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} |  |  |  |  |  |  |  |  |  |  |  |  | failed: {r['error']} |")
            continue
        low, high = r["speed-up 95% CI"]
        per_process = " / ".join(f"{x:.2f}" for x in r.get("per process", [r["geometric speed-up"]]))
        lines.append(
            f"| {name} | {r['batch']} | {r['steps']} | {r.get('processes', 1)} | {r['fp32']['step s']:.3f} | "
            f"{r['bf16-mixed']['step s']:.3f} | {r['geometric speed-up']:.2f} | {per_process} | {low:.2f}-{high:.2f} | "
            f"{r['verdict']} | {100 * r['loss gap first']:+.2f} % | "
            f"{r['fp32']['losses'][-1]:.4f} / {r['bf16-mixed']['losses'][-1]:.4f} | "
            f"{100 * r['loss gap mean']:+.2f} % / {100 * r['loss gap largest']:+.2f} % |  |"
        )
    table = "\n".join(lines)
    load = machine.get("load average at start")
    load_text = (
        f"1-minute load average {load:.2f} when the run started" if load is not None else "load average not recorded"
    )
    if load is not None and "load average at end" in machine:
        load_text += f", {machine['load average at end']:.2f} when it ended"
    return f"""## bf16-mixed training on the CPU

Generated by `{command}` in {minutes:.1f} minutes (code at commit {machine.get("commit", "unknown")}); do not edit
by hand. Machine: {machine["cores"]} CPU cores ({machine["cpu"]}; AVX-512 BF16, no AMX), {load_text}. Each model
as in `benchmarks/proxy.py` (default size), built twice from seed 0; bf16-mixed is each step under
`torch.autocast("cpu", dtype=torch.bfloat16)`, what Lightning's `--trainer.precision bf16-mixed` does. The host
is shared, so the two copies take their N steps in turns (fp32, bf16, bf16, fp32, ...) on the same batches and the
same random draws, in several fresh processes one after another (a process's ratio moves beyond its own steps'
spread). "bf16 speed-up": the geometric mean of the per-process speed-ups, each the geometric mean of that
process's per-step ratios (the first step left out: it allocates); "95 % CI" and the verdict: a t-test over the
per-process speed-ups (log scale, processes - 1 degrees of freedom; N and the number of processes fixed before the
run). Step times and losses are the first process's. Loss gap: bf16 / fp32 - 1; at step 1 both copies have the
same weights (the precision's own error), later steps add the drift of the two trajectories.

{table}

{gains(results)}
"""


def gains(results: dict[str, Any]) -> str:
    """Which models gain from bf16-mixed training here and by how much, from the verdicts."""
    measured = {name: r for name, r in results.items() if "error" not in r}

    def named(verdict: str) -> str:
        parts = []
        for name, r in measured.items():
            if r["verdict"] == verdict:
                low, high = r["speed-up 95% CI"]
                parts.append(f"{name} {r['geometric speed-up']:.2f}x ({low:.2f}-{high:.2f})")
        return ", ".join(parts) or "none"

    failed = [name for name in results if name not in measured]
    return (
        f"Which models gain: faster beyond noise with bf16-mixed: {named('faster beyond noise')}; slower beyond "
        f"noise: {named('slower beyond noise')}; within noise: {named('within noise')} (speed-up and its 95 % "
        f"interval over the processes)" + (f"; failed: {', '.join(failed)}." if failed else ".")
    )


def _worker(data_root: Path, steps: int, models: list[str], output: Path) -> None:
    """One process's measurements of every model, written to ``output`` (a failure is the model's row)."""
    torch.set_flush_denormal(True)
    cfg = SIZES["default"]
    results: dict[str, Any] = {}
    for name in models:
        try:
            results[name] = measure(name, cfg, data_root, steps)
        except Exception as error:  # one model's failure is a row, not the end of the run
            results[name] = {"error": f"{error!r}"[:300]}
    output.write_text(json.dumps(results))


def main(argv: list[str] | None = None) -> Path:
    """Measure every model in ``--processes`` fresh processes and write ``bf16_training.md`` and ``.json``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--processes", type=int, default=5, help="fresh processes the measurement runs in")
    parser.add_argument("--models", nargs="*", default=list(OUR_MODELS))
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=2, type=Path, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.worker[0], args.steps, args.models, args.worker[1])
        return args.worker[1]
    cfg = SIZES["default"]
    from anomalib_multiclass.data.synthetic import make_synthetic_dataset
    from anomalib_multiclass.utils.pretrained import install_efficientnet_lite0_weights

    started = time.perf_counter()
    install_efficientnet_lite0_weights()
    command = f"python -m benchmarks.bf16_training --steps {args.steps} --processes {args.processes}"
    if args.models != list(OUR_MODELS):
        command += " --models " + " ".join(args.models)
    machine = machine_info() | {"commit": code_commit()}  # machine_info records the load average at the start
    args.output_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = make_synthetic_dataset(
            Path(scratch) / "proxy", categories=cfg["categories"], n_train=cfg["n_train"], n_test_good=2,
            n_test_defect=2, image_size=cfg["image_size"], seed=0,
        )  # fmt: skip
        for process in range(args.processes):
            print(f"[{time.perf_counter() - started:7.1f}s] bf16 training: process {process + 1}", flush=True)
            output = Path(scratch) / f"process{process}.json"
            worker = [sys.executable, "-m", "benchmarks.bf16_training", "--steps", str(args.steps), "--models",
                      *args.models, "--worker", str(root), str(output)]  # fmt: skip
            done = subprocess.run(worker, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"a bf16 process failed (exit {done.returncode}): {done.stderr[-1500:]}")
            runs.append(json.loads(output.read_text()))
    results = {name: across_processes([run[name] for run in runs]) for name in args.models}
    minutes = (time.perf_counter() - started) / 60
    machine["load average at end"] = os.getloadavg()[0]
    saved = {"command": command, "minutes": minutes, "machine": machine, "results": results}
    (args.output_dir / "bf16_training.json").write_text(json.dumps(saved, indent=2))
    out = args.output_dir / "bf16_training.md"
    out.write_text(report(results, command, minutes, machine))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
