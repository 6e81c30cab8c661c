"""Parameter counts and FLOPs of our models at the papers' configurations (the figures in the model READMEs).

    python -m benchmarks.model_stats

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv only, one multiply-add = 2 FLOPs)
for one 224 × 224 image in eval mode; "GMACs" = FLOPs / 2, the unit most papers (fvcore, thop) call FLOPs.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def _flops(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def main() -> None:
    """Print the table."""
    from anomalib_multiclass.models.mint_ad import MintADModel
    from anomalib_multiclass.models.uniad import UniADModel

    image = torch.rand(1, 3, 224, 224)
    rows = []
    uniad = UniADModel(pre_trained=False).eval()
    mint = MintADModel(num_classes=15, pre_trained=False).eval()
    for name, model in (("UniAD", uniad), ("MINT-AD (15 classes)", mint)):
        learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.feature_extractor.parameters())
        features = model.extract_features(image)
        backbone = _flops(model.feature_extractor, image)
        total = _flops(model, image)
        rows.append((name, learnable, frozen, backbone, total - backbone, total))
    queries = sum(layer.learned_query.numel() for layer in uniad.reconstruction.decoder)
    print(
        "| model | learnable params | frozen backbone params | backbone GFLOPs | trainable-part GFLOPs | total GFLOPs |"
    )
    print("|---|---|---|---|---|---|")
    for name, learnable, frozen, backbone, head, total in rows:
        print(f"| {name} | {learnable:,} | {frozen:,} | {backbone / 1e9:.2f} | {head / 1e9:.2f} | {total / 1e9:.2f} |")
    print(f"\nUniAD without its 4 layer-wise query embeddings: {rows[0][1] - queries:,} learnable parameters")
    print(
        f"MINT-AD INR (Table 13 + output layer): {mint.inr.parameter_count():,}; prompt mapper "
        f"{sum(p.numel() for p in mint.prompt_mapper.parameters()):,}; distribution decoder "
        f"{sum(p.numel() for p in mint.distribution.parameters()):,}"
    )
    del features


if __name__ == "__main__":
    main()
