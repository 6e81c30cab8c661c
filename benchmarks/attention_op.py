"""RLR's first-level attention on OpenVINO's CPU plugin: the decomposed graph against the fused SDPA operation.

    python -m benchmarks.attention_op

The ONNX route (anomalib's export) decomposes attention into MatMul, Add (the mask), Softmax, MatMul; OpenVINO also
has a fused ``ScaledDotProductAttention`` operation. This times both, f32 and bf16, at the shape of RLR's masked
key attention over the 1/4 map of the edge proxy (batch 32, 4 heads, 1024 tokens of 16 channels, keys a constant:
the learnt reference; every token's 7 x 7 window hidden), interleaved in one process (issue 27: whether the fused
operation makes RLR's costliest layer cheaper). Prints the median of 7 rounds per variant and its largest
difference from the decomposed f32 result.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

BATCH, HEADS, TOKENS, CHANNELS, SIDE, WINDOW = 32, 4, 1024, 16, 32, 7


def _models() -> dict[str, object]:
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((1, HEADS, TOKENS, CHANNELS)).astype(np.float32)
    rows, cols = np.divmod(np.arange(TOKENS), SIDE)
    hidden = (np.abs(rows[:, None] - rows[None]) <= WINDOW // 2) & (np.abs(cols[:, None] - cols[None]) <= WINDOW // 2)
    mask = np.where(hidden, np.float32(-1e9), np.float32(0))[None, None]
    scale = np.float32(CHANNELS**-0.5)

    def inputs() -> tuple:
        shape = [BATCH, HEADS, TOKENS, CHANNELS]
        return ops.parameter(shape, np.float32, name="q"), ops.parameter(shape, np.float32, name="v")

    q, v = inputs()
    logits = ops.add(ops.matmul(q, ops.constant(keys * scale), False, True), ops.constant(mask))
    decomposed = ov.Model([ops.matmul(ops.softmax(logits, -1), v, False, False)], [q, v])
    q, v = inputs()
    shape = ops.constant(np.array([BATCH, HEADS, TOKENS, CHANNELS], np.int64))
    fused_out = ops.scaled_dot_product_attention(
        q, ops.broadcast(ops.constant(keys), shape), v, ops.constant(mask), ops.constant(scale), causal=False
    )
    return {"decomposed": decomposed, "fused SDPA": ov.Model([fused_out], [q, v])}


def main() -> None:
    import openvino as ov

    core = ov.Core()
    requests = {}
    for name, model in _models().items():
        for precision in ("f32", "bf16"):
            config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
            requests[f"{name} {precision}"] = core.compile_model(model, "CPU", config).create_infer_request()
    rng = np.random.default_rng(1)
    q, v = (rng.standard_normal((BATCH, HEADS, TOKENS, CHANNELS)).astype(np.float32) for _ in range(2))
    reference = None
    differences = {}
    for name, request in requests.items():
        out = next(iter(request.infer([q, v]).values()))
        reference = out if reference is None else reference
        differences[name] = float(np.abs(out - reference).max())
    times: dict[str, list[float]] = {name: [] for name in requests}
    names = list(requests)
    for round_ in range(7):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            requests[name].infer([q, v])
            times[name].append(time.perf_counter() - start)
    for name in names:
        print(f"{name:18s} {statistics.median(times[name]) * 1e3:7.1f} ms  max |difference| {differences[name]:.2e}")


if __name__ == "__main__":
    main()
