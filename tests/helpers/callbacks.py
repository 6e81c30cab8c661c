"""Callbacks that tests add to the plain `anomalib` command (`--trainer.callbacks`) to look inside a run."""

import json
from pathlib import Path

import torch
from lightning.pytorch import Callback


class DumpPostProcessorStatistics(Callback):
    """After each validation pass, rank 0 writes the post-processor's learnt buffers to ``path`` (JSON)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        buffers = {
            name: value.tolist()
            for name, value in pl_module.post_processor.named_buffers()
            if value.dtype.is_floating_point
        }
        buffers["world_size"] = trainer.world_size
        self.path.write_text(json.dumps(buffers))


def same_statistics(first: dict, second: dict) -> bool:
    """Equal buffers (NaN equal to NaN), whatever the world size."""
    keys = set(first) - {"world_size"}
    if keys != set(second) - {"world_size"}:
        return False
    return all(torch.allclose(torch.tensor(first[k]), torch.tensor(second[k]), equal_nan=True) for k in keys)
