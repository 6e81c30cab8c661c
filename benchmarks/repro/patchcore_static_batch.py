"""Minimal reproduction, against anomalib alone: anomalib's PatchCore exports to ONNX with a static batch of 2.

    python -m benchmarks.repro.patchcore_static_batch     # about 30 s on a CPU; exits 1 while the bug is there

anomalib 2.7's ``ExportMixin.to_onnx`` marks the batch axis dynamic (``Dim("batch_size")``) and traces with an example
batch of 2 (``get_example_input``: dynamo specialises sizes 0 and 1). ``PatchcoreModel.nearest_neighbors`` branches
in Python on ``n <= DEFAULT_CHUNK_SIZE`` (1024) and loops over ``range(0, n, chunk_size)``, where ``n`` is batch x
patches: the batch cannot stay symbolic through that code, and ``torch.onnx.export`` writes the graph for batch 2
only. ONNX Runtime then refuses batch 1 ("Got invalid dimensions for input: input ... index: 0 Got: 1 Expected:
2"), which is the error the speed section of BENCHMARKS.md showed, and OpenVINO's export (built from the same ONNX
graph) has the same fixed batch. ``torch.export`` with a strict ``Dim`` says why: "Not all values of batch ...
satisfy the generated guard 2 <= batch <= 16" (16 x 64 patches = 1024 at 64 px without anomalib's resize).

Nothing of anomalib-multiclass is imported: random resnet18 weights, a random memory bank (the bug is in the graph's
shapes, not in its values). The workaround ``benchmarks/run.py`` uses: one static graph per batch size,
``to_onnx(..., dynamic_shapes=({0: batch},))``.
"""

from __future__ import annotations

import sys
import tempfile
import warnings

import onnxruntime
import torch
from anomalib.models import Patchcore


def main() -> int:
    """Export, then run batch 1, 2 and 4 through ONNX Runtime; 1 when a batch size other than 2 is refused."""
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = Patchcore(backbone="resnet18", layers=["layer2", "layer3"], pre_trained=False).eval()
    model.model.memory_bank = torch.randn(100, 384)  # layer2 + layer3 of resnet18: 128 + 256 channels
    refused = []
    with tempfile.TemporaryDirectory() as folder:
        path = model.to_onnx(folder, input_size=(64, 64), opset_version=18)  # anomalib's own export
        session = onnxruntime.InferenceSession(str(path))
        print(f"exported input shape: {session.get_inputs()[0].shape} (batch axis asked dynamic)")
        for batch in (1, 2, 4):
            try:
                session.run(None, {"input": torch.rand(batch, 3, 64, 64).numpy()})
                print(f"batch {batch}: runs")
            except Exception as error:  # onnxruntime's InvalidArgument
                refused.append(batch)
                print(f"batch {batch}: refused: {str(error).splitlines()[0]} {str(error).splitlines()[1].strip()}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
