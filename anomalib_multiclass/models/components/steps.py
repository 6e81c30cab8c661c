"""What the training and validation steps of every model here do alike: log the losses, take the predictions.

Each model's ``lightning_model.py`` writes its own ``training_step`` and ``validation_step`` (what goes into the
torch model, which outputs the loss takes) and calls these for the parts that are the same everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def log_losses(module: Any, losses: Mapping[str, torch.Tensor], batch_size: int) -> None:
    """Log every loss term as ``train_<name>`` (per step and epoch); the total, ``loss``, on the progress bar.

    Args:
        module: The Lightning module whose ``log`` records the values.
        losses: Loss terms by name; ``loss`` is the total that is optimised.
        batch_size: Images in the batch (Lightning's weight for the epoch mean).

    Example:
        >>> log_losses(self, {"loss": loss}, len(batch.image))  # inside a training_step  # doctest: +SKIP
    """
    for name, value in losses.items():
        module.log(
            f"train_{name}", value.item(), on_epoch=True, prog_bar=name == "loss", logger=True, batch_size=batch_size
        )


def with_predictions(batch: Any, predictions: Any) -> Any:
    """The batch with every field the torch model predicted (a ``MultiClassInferenceBatch``; ``None`` fields skipped).

    Returns:
        The updated batch (anomalib's ``Batch.update`` returns a new one of the batch's class).
    """
    return batch.update(**{key: value for key, value in predictions._asdict().items() if value is not None})
