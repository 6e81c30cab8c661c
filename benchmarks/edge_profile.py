"""Fair CPU timing of several OpenVINO variants of one model, and where each spends its time (issue 27).

Timing separate runs per precision on a shared machine compares the load of one moment with that of another.
Here every variant is compiled in one process and run interleaved (round r runs the variants in an order rotated
by r: A B C, B C A, C A B, ...), so load hits all alike; the report gives medians and the spread of each, and the
ratio of medians. OpenVINO's per-layer counters (``PERF_COUNT``) say which layers take the time and in which
precision each actually ran (the CPU plugin's ``exec_type`` ends in ``_f32``, ``_bf16``, ``_I8``/``_u8``...).

    python -m benchmarks.edge_profile model_fp32.xml model_int8.xml --batch 1 32   # a quick look at any exports
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

F32 = {"INFERENCE_PRECISION_HINT": "f32"}
LATENCY = {"PERFORMANCE_HINT": "LATENCY"}
PRECISIONS = ("int8", "bf16", "f16", "f32", "other")
# the CPU plugin's layer types that are convolutions or matrix products: what INT8 makes faster (a fused "Subgraph"
# holds elementwise chains, and in attention also its matrix products: it counts as the rest)
COMPUTE_LAYERS = frozenset({"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul"})


@dataclass
class Timing:
    """Seconds per call of one variant over the interleaved rounds."""

    times: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> float:
        """Half the inter-quartile range, relative to the median: how much load moved this variant's calls."""
        q1, _, q3 = statistics.quantiles(self.times, n=4) if len(self.times) > 1 else (self.times[0],) * 3
        return (q3 - q1) / 2 / self.median


def compile_static(path: Path | str, batch: int, config: dict[str, str], perf_count: bool = False) -> Any:
    """The exported model reshaped to a static (batch, 3, H, W) input and compiled for the CPU."""
    import openvino

    core = openvino.Core()
    model = core.read_model(str(path))
    shape = model.input(0).get_partial_shape()
    model.reshape({model.input(0).get_any_name(): [batch, 3, shape[2].get_length(), shape[3].get_length()]})
    extra = {"PERF_COUNT": "YES"} if perf_count else {}
    return core.compile_model(model, "CPU", {**LATENCY, **config, **extra})


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int, calls_per_round: int = 1) -> dict[str, Timing]:
    """Run every call once to warm up, then ``rounds`` rounds of all of them in a rotated order."""
    names = list(calls)
    for name in names:
        calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            for _ in range(calls_per_round):
                calls[name]()
            times[name].append((time.perf_counter() - start) / calls_per_round)
    return {name: Timing(t) for name, t in times.items()}


def time_variants(
    variants: dict[str, tuple[Path | str, dict[str, str]]], batch: int, rounds: int, size: tuple[int, int]
) -> dict[str, Timing]:
    """Interleaved timing of exported variants ``name -> (model.xml, CPU config)`` at one batch size."""
    requests = {}
    for name, (path, config) in variants.items():
        requests[name] = compile_static(path, batch, config).create_infer_request()
    inputs = np.random.default_rng(0).random((batch, 3, *size), dtype=np.float32)
    per_round = max(1, 8 // batch)  # batch 1 calls are short: a few per round steady the clock
    return interleaved({n: (lambda r=r: r.infer(inputs)) for n, r in requests.items()}, rounds, per_round)


def time_spec(spec: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Run one timing spec in this process: ``{label: {variant: seconds per call}}`` for every
    ``(batch, rounds, label)`` of ``spec["runs"]`` over ``spec["variants"]`` (``name -> [model.xml, config]``)."""
    variants = {name: (path, config) for name, (path, config) in spec["variants"].items()}
    size = (int(spec["size"][0]), int(spec["size"][1]))
    return {
        label: {name: timing.times for name, timing in time_variants(variants, batch, rounds, size).items()}
        for batch, rounds, label in spec["runs"]
    }


def time_in_fresh_processes(spec: dict[str, Any], processes: int) -> list[dict[str, dict[str, list[float]]]]:
    """:func:`time_spec` run in ``processes`` fresh Python processes, one after another.

    Interleaving makes the variants of one process comparable; a ratio measured in one process can still differ
    from the next one's (the same LGC export gave 2.05x in one run and 1.40x in another: OpenVINO picks its
    kernels and threads when it compiles, under that moment's load). Each process compiles anew, so the spread of
    the per-process ratios is the run-to-run spread a single figure hides.
    """
    import json
    import subprocess
    import sys
    import tempfile

    outcomes = []
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(spec, handle)
    for _ in range(processes):
        result = subprocess.run([sys.executable, "-m", "benchmarks.edge_profile", "--spec", handle.name],
                                capture_output=True, text=True, check=False)  # fmt: skip
        if result.returncode != 0:
            msg = f"a timing process failed (exit {result.returncode}): {result.stderr[-1500:]}"
            raise RuntimeError(msg)
        outcomes.append(json.loads(result.stdout.strip().splitlines()[-1]))
    Path(handle.name).unlink()
    return outcomes


def precision_of(exec_type: str) -> str:
    """The precision a CPU-plugin layer ran in, from its ``exec_type`` (``brgconv_avx512_1x1_I8`` -> ``int8``)."""
    suffix = exec_type.rsplit("_", 1)[-1].lower()
    if suffix in {"i8", "u8"}:
        return "int8"
    return suffix if suffix in {"bf16", "f16", "f32"} else "other"


def counters(path: Path | str, batch: int, config: dict[str, str], size: tuple[int, int], runs: int = 3) -> dict:
    """Per-layer time of one variant (median over ``runs`` inferences), grouped by precision and by layer type.

    Returns ``ms`` (the layers' total), ``ms_by_precision``, ``compute_ms`` (convolutions and matrix products,
    :data:`COMPUTE_LAYERS`), ``reorder_ms`` (layout/precision conversions the plugin inserted),
    ``layers_by_precision`` (how many layers ran in each), ``top`` (the costliest layer types with their
    ``exec_type``) and ``top_nodes`` (the three costliest single layers, by name).
    """
    request = compile_static(path, batch, config, perf_count=True).create_infer_request()
    inputs = np.random.default_rng(0).random((batch, 3, *size), dtype=np.float32)
    request.infer(inputs)
    per_layer: dict[tuple[str, str, str], list[float]] = {}
    for _ in range(runs):
        request.infer(inputs)
        for info in request.get_profiling_info():
            if info.status.name != "EXECUTED":
                continue
            key = (info.node_name, info.node_type, info.exec_type)
            per_layer.setdefault(key, []).append(info.real_time.total_seconds() * 1e3)
    by_precision: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    by_type: Counter[tuple[str, str]] = Counter()
    reorder = compute = 0.0
    for (_, node_type, exec_type), times in per_layer.items():
        ms = statistics.median(times)
        precision = precision_of(exec_type)
        by_precision[precision] += ms
        layers[precision] += 1
        by_type[(node_type, exec_type)] += ms
        if node_type in {"Reorder", "Convert"}:
            reorder += ms
        if node_type in COMPUTE_LAYERS:
            compute += ms
    total = sum(by_precision.values())
    top = [
        {"layer": t, "exec_type": e, "ms": round(ms, 3), "share": round(ms / total, 3)}
        for (t, e), ms in by_type.most_common(5)
    ]
    nodes = sorted(((statistics.median(t), key) for key, t in per_layer.items()), reverse=True)[:3]
    top_nodes = [
        {"name": n, "layer": t, "exec_type": e, "ms": round(ms, 3), "share": round(ms / total, 3)}
        for ms, (n, t, e) in nodes
    ]
    return {
        "ms": total,
        "ms_by_precision": {p: by_precision[p] for p in PRECISIONS if by_precision[p]},
        "layers_by_precision": {p: layers[p] for p in PRECISIONS if layers[p]},
        "compute_ms": compute,
        "reorder_ms": reorder,
        "top": top,
        "top_nodes": top_nodes,
    }


def main(argv: list[str] | None = None) -> None:
    """Interleaved timing and counters of any exported models (first: fp32 in f32; the rest: default precision)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv[:1] == ["--spec"]:  # one process of :func:`time_in_fresh_processes`: the timings as JSON
        import json

        print(json.dumps(time_spec(json.loads(Path(argv[1]).read_text()))))
        return
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    import openvino

    shape = openvino.Core().read_model(str(args.models[0])).input(0).get_partial_shape()
    size = (shape[2].get_length(), shape[3].get_length())
    variants = {f"{i}:{p.parent.name}": (p, F32 if i == 0 else {}) for i, p in enumerate(args.models)}
    for batch in args.batch:
        timings = time_variants(variants, batch, args.rounds, size)
        reference = next(iter(timings.values())).median
        for name, timing in timings.items():
            print(
                f"batch {batch:3d} {name:30s} {timing.median * 1e3:9.2f} ms ±{timing.spread:5.1%}"
                f"  x{reference / timing.median:.2f} vs first"
            )
        for name, (path, config) in variants.items():
            info = counters(path, batch, config, size)
            print(f"  {name}: {info['ms']:.1f} ms, {info['ms_by_precision']}, reorders {info['reorder_ms']:.2f} ms")
            for entry in info["top"]:
                print(f"      {entry}")


if __name__ == "__main__":
    main()
