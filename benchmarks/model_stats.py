"""Parameter counts and FLOPs of our models at the papers' configurations (the figures in the model READMEs).

    python -m benchmarks.model_stats

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matmul/conv only, one multiply-add = 2 FLOPs)
for one image at the paper's input size (224 × 224 for UniAD and MINT-AD, 256 × 256 for RLR, Omni-AD and LGC) in
eval mode;
"GMACs" = FLOPs / 2, the unit most papers (fvcore, thop) call FLOPs.
"""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def _flops(module: torch.nn.Module, *inputs: torch.Tensor) -> int:
    # The math backend writes attention as matmuls, which the counter sees (fused CPU kernels are not counted).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def main() -> None:
    """Print the table."""
    from anomalib_multiclass.models.lgc import LGCModel
    from anomalib_multiclass.models.mint_ad import MintADModel
    from anomalib_multiclass.models.omni_ad import OmniADModel
    from anomalib_multiclass.models.rlr import RLRModel
    from anomalib_multiclass.models.uniad import UniADModel

    rows = []
    uniad = UniADModel(pre_trained=False).eval()
    mint = MintADModel(num_classes=15, pre_trained=False).eval()
    rlr = RLRModel(pre_trained=False).eval()
    rlr_dense = RLRModel(pre_trained=False, dense_attention=True).eval()
    omni = OmniADModel(pre_trained=False).eval()
    omni_official = OmniADModel(pre_trained=False, official_code_behaviour=True).eval()
    lgc = LGCModel(pre_trained=False).eval()
    frozen_part = {"Omni-AD": "teacher", "LGC": "encoder"}
    for name, model, size in (
        ("UniAD", uniad, 224),
        ("MINT-AD (15 classes)", mint, 224),
        ("RLR (windowed LCA, fused MLKA)", rlr, 256),
        ("RLR (textbook N x N attention)", rlr_dense, 256),
        ("Omni-AD (registered output maps)", omni, 256),
        ("Omni-AD (official code: unregistered output maps)", omni_official, 256),
        ("LGC (wide_resnet50_2)", lgc, 256),
    ):
        image = torch.rand(1, 3, size, size)
        learnable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        extractor = getattr(model, frozen_part.get(name.split(" ")[0], "feature_extractor"))
        frozen = sum(p.numel() for p in extractor.parameters() if not p.requires_grad)
        backbone = _flops(extractor, image)
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


if __name__ == "__main__":
    main()
