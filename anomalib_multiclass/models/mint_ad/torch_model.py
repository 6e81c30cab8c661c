"""MINT-AD (ECCV 2024) in plain PyTorch: class-aware queries from an implicit neural representation.

Frozen features f′ → feature adaptor → f. A prompt mapper classifies the image from f and gives a class
token t_c; a class-aware INR turns (learnable position encoding z, t_c) into a query map that replaces
UniAD's learned queries in every decoder layer; a distribution decoder predicts a Gaussian per position from
the query map (prior loss on f). The transformer reconstructs f′ from the jittered f. At inference t_c comes
from the image itself: no label is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from anomalib_multiclass.data.dataclasses import MultiClassInferenceBatch
from anomalib_multiclass.models.components.feature_extractor import MultiStageFeatureExtractor
from anomalib_multiclass.models.components.jitter import feature_jitter
from anomalib_multiclass.models.components.reconstruction import ReconstructionTransformer
from anomalib_multiclass.models.components.scoring import check_feature_sizes, pooled_max


class PromptMapper(nn.Module):
    """Class encoder + channel encoder + head (Table 12): class token t_c (32-d) and class logits.

    The class encoder maps each channel's spatial profile (P = h·w values) to 32 values (softmax over them);
    the channel encoder maps the flattened C × 32 map to t_c (softmax); the head maps t_c to the N logits.
    """

    def __init__(self, num_tokens: int, channels: int, num_classes: int, hidden: int = 256, token_dim: int = 32):
        super().__init__()
        self.class_encoder = nn.Sequential(
            nn.Linear(num_tokens, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, token_dim)
        )
        self.channel_encoder = nn.Sequential(
            nn.Linear(channels * token_dim, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, token_dim),
        )
        self.head = nn.Linear(token_dim, max(num_classes, 1))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, N, C) -> (t_c (B, 32), logits (B, num_classes))."""
        per_channel = self.class_encoder(features.transpose(1, 2)).softmax(dim=-1)  # (B, C, 32)
        token = self.channel_encoder(per_channel.flatten(1)).softmax(dim=-1)
        return token, self.head(token)


class SineLayer(nn.Module):
    """sin(ω₀ (W x + b)) with SIREN initialisation."""

    def __init__(self, in_features: int, out_features: int, omega: float, first: bool) -> None:
        super().__init__()
        self.omega = omega
        self.linear = nn.Linear(in_features, out_features)
        bound = 1 / in_features if first else math.sqrt(6 / in_features) / omega
        nn.init.uniform_(self.linear.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Sine activation of the affine map."""
        return torch.sin(self.omega * self.linear(x))


class ClassAwareINR(nn.Module):
    """The class-aware implicit neural representation (Sec. 3.3, eqs. 8–9, Table 13).

    Synthesis h_i = α_i ⊙ sin(ω₀(W_i h_{i−1} + b_i)) over a learnable 3-d position encoding z (h_0 = z);
    modulation α_1 = ReLU(W'_1 [z, t_c] + b'_1), α_i = ReLU(W'_i α_{i−1} + b'_i); a final linear layer gives the
    query map. 5 + 5 layers of width 256 and the output layer: 602,368 parameters (Table 9's 0.602 M).
    """

    def __init__(
        self,
        num_tokens: int,
        token_dim: int = 32,
        hidden: int = 256,
        out_dim: int = 256,
        num_layers: int = 5,
        position_dim: int = 3,
        omega: float = 30.0,
    ) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.empty(1, num_tokens, position_dim).uniform_(-1, 1))
        self.synthesis = nn.ModuleList(
            SineLayer(position_dim if i == 0 else hidden, hidden, omega, first=i == 0) for i in range(num_layers)
        )
        self.modulation = nn.ModuleList(
            nn.Linear(position_dim + token_dim if i == 0 else hidden, hidden) for i in range(num_layers)
        )
        self.output = nn.Linear(hidden, out_dim)

    def forward(self, class_token: torch.Tensor) -> torch.Tensor:
        """Class token (B, 32) -> query map (B, N, out_dim)."""
        batch = class_token.shape[0]
        z = self.position.expand(batch, -1, -1)
        amplitude = torch.cat([z, class_token.unsqueeze(1).expand(-1, z.shape[1], -1)], dim=-1)
        hidden = z
        for sine, modulation in zip(self.synthesis, self.modulation, strict=True):
            amplitude = F.relu(modulation(amplitude))
            hidden = amplitude * sine(hidden)
        return self.output(hidden)

    def parameter_count(self) -> int:
        """Learnable parameters of Table 13's layers and the output layer (without the position encoding z)."""
        return sum(p.numel() for name, p in self.named_parameters() if name != "position")


class DistributionDecoder(nn.Module):
    """Mean and log-variance of the adapted feature per position from the query map (Table 14)."""

    def __init__(self, dim: int = 256, hidden: int = 256, min_log_var: float = -10.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(),
            nn.Linear(hidden, 2 * dim),
        )
        self.min_log_var = min_log_var

    def forward(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query (B, N, C) -> mean, log-variance (B, N, C); the log-variance is floored (the NLL has no minimum)."""
        mean, log_var = self.net(query).chunk(2, dim=-1)
        return mean, log_var.clamp(min=self.min_log_var)


class MintADModel(nn.Module):
    """MINT-AD: UniAD's reconstruction transformer with class-aware INR queries, a classifier and a prior.

    Unlike UniAD there is no neighbour mask and no layer-wise learned query: the paper drops both.

    Args:
        num_classes: Number of categories (classifier outputs).
        backbone: timm backbone name (frozen; as UniAD ``tf_efficientnet_b4.aa_in1k``).
        layers: timm out-indices of the stages (EfficientNet stages 1-4 = ``(0, 1, 2, 3)``).
        pre_trained: ImageNet weights for the backbone.
        backbone_weights: Local timm weights file of the backbone, used instead of the download.
        input_size: Image size the model runs at; fixes the token grid.
        hidden_dim: Transformer width, also the width of the INR's query map (256).
        num_heads: Attention heads (8).
        ffn_dim: Feed-forward width (1024).
        num_encoder_layers: Encoder depth (4).
        num_decoder_layers: Decoder depth (4).
        dropout: Dropout (0.1).
        jitter_scale: Feature-jitter α (20); 0 disables it.
        jitter_prob: Probability of jittering a batch (1.0).
        token_dim: Size of the class token t_c (32).
        inr_layers: Synthesis/modulation depth of the INR (5).
        omega: SIREN frequency ω₀ (30; not given by the paper).
        pool_size: Average pooling before the image maximum; 1 = the plain maximum of the map (the paper).
        prompt: ``"feature"``: t_c from the image (the paper's default, no label at inference); ``"label"``:
            t_c is a learnt token of the true class, which must then be given at training and inference
            (the label-prompt row of the paper's Table 4).
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "tf_efficientnet_b4.aa_in1k",
        layers: Sequence[int] = (0, 1, 2, 3),
        pre_trained: bool = True,
        backbone_weights: str | None = None,
        input_size: tuple[int, int] = (224, 224),
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        num_encoder_layers: int = 4,
        num_decoder_layers: int = 4,
        dropout: float = 0.1,
        jitter_scale: float = 20.0,
        jitter_prob: float = 1.0,
        token_dim: int = 32,
        inr_layers: int = 5,
        omega: float = 30.0,
        pool_size: int = 1,
        prompt: str = "feature",
    ) -> None:
        super().__init__()
        if prompt not in {"feature", "label"}:
            msg = f"prompt must be 'feature' or 'label', got {prompt!r}."
            raise ValueError(msg)
        self.feature_extractor = MultiStageFeatureExtractor(
            backbone, layers, pre_trained=pre_trained, weights=backbone_weights
        )
        input_size = tuple(input_size)
        self.input_size = input_size
        self.feature_size = self.feature_extractor.grid(input_size)
        num_tokens = self.feature_size[0] * self.feature_size[1]
        self.reconstruction = ReconstructionTransformer(
            in_channels=self.feature_extractor.num_features,
            feature_size=self.feature_size,
            hidden_dim=hidden_dim,
            num_heads=num_heads,
            ffn_dim=ffn_dim,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dropout=dropout,
            neighbor_size=None,
            neighbor_mask_in=(),
            external_query=True,
        )
        self.prompt_mapper = PromptMapper(num_tokens, hidden_dim, num_classes, token_dim=token_dim)
        self.inr = ClassAwareINR(
            num_tokens, token_dim=token_dim, out_dim=hidden_dim, num_layers=inr_layers, omega=omega
        )
        self.distribution = DistributionDecoder(hidden_dim)
        self.prompt = prompt
        self.label_tokens = nn.Embedding(max(num_classes, 1), token_dim) if prompt == "label" else None
        self.num_classes = num_classes
        self.jitter_scale = jitter_scale
        self.jitter_prob = jitter_prob
        self.pool_size = pool_size

    @property
    def adaptor(self) -> nn.Linear:
        """The feature adaptor f′ → f: the transformer's input projection, shared (one FC layer)."""
        return self.reconstruction.input_proj

    def extract_features(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen part: images -> f′ (B, C, h, w)."""
        return self.feature_extractor(images)

    def run(self, features: torch.Tensor, class_index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Everything after the backbone.

        ``class_index`` (the true class) is used only in the label-prompt mode.
        """
        height, width = features.shape[-2:]
        check_feature_sizes([(height, width)], [self.feature_size], self.input_size)
        tokens = features.flatten(2).transpose(1, 2)  # f′
        adapted = self.adaptor(tokens)  # f: classifier and prior see the clean adapted features
        class_token, logits = self.prompt_mapper(adapted)
        if self.prompt == "label":
            if class_index is None:
                msg = "prompt='label' needs the true class index of every image."
                raise ValueError(msg)
            class_token = self._class_token_of(class_index, class_token)
        query = self.inr(class_token)
        mean, log_var = self.distribution(query)
        inputs = feature_jitter(tokens, self.jitter_scale, self.jitter_prob) if self.training else tokens
        reconstruction = self.reconstruction(inputs, query=query)
        return {
            "features": tokens,
            "reconstruction": reconstruction,
            "adapted": adapted,
            "logits": logits,
            "class_token": class_token,
            "mean": mean,
            "log_var": log_var,
        }

    def _class_token_of(self, class_index: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Label-given mode: a learnt token per class (softmax, like t_c), looked up with the true class."""
        if self.label_tokens is None:
            msg = "This model was built with prompt='feature': it takes no class index. Build it with prompt='label'."
            raise ValueError(msg)
        return self.label_tokens(class_index.long()).softmax(dim=-1).to(predicted.dtype)

    def anomaly_map(self, tokens: torch.Tensor, reconstruction: torch.Tensor, size: torch.Size) -> torch.Tensor:
        """Squared L2 distance per position, bilinearly upsampled: (B, 1, H, W)."""
        distance = ((tokens - reconstruction) ** 2).sum(dim=-1)
        distance = distance.reshape(-1, 1, *self.feature_size)
        return F.interpolate(distance, size=size, mode="bilinear", align_corners=True)

    def forward(
        self,
        images: torch.Tensor,
        features: torch.Tensor | None = None,
        class_index: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor] | MultiClassInferenceBatch:
        """Training: the loss inputs. Eval: anomaly map, score and the predicted class (no label needed)."""
        if features is None:
            features = self.extract_features(images)
        out = self.run(features, class_index)
        if self.training:
            return out
        anomaly_map = self.anomaly_map(out["features"], out["reconstruction"], images.shape[-2:])
        return MultiClassInferenceBatch(
            pred_score=pooled_max(anomaly_map, self.pool_size),
            anomaly_map=anomaly_map,
            pred_class=out["logits"].argmax(dim=1),
        )
