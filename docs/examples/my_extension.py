"""A user's extension: a codec, a dataset and a model, registered on import."""

import torch
from torch import nn

from fl_split.codecs import register_codec
from fl_split.codecs.dense import Bf16Codec
from fl_split.data import register_dataset
from fl_split.models import register_model


@register_codec
class Half2Codec(Bf16Codec):
    """``half2``: bfloat16 under another name and wire id (a user's codec)."""

    name = "half2"
    codec_id = 201


@register_dataset("blobs", num_classes=4, input_shape=(1, 4, 4), default_model="tiny_mlp")
def blobs(split: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four Gaussian clusters in 16 dimensions (the centres are fixed; ``seed`` draws the samples)."""
    centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(123)) * 2
    g = torch.Generator().manual_seed(2 * seed + (split == "test"))
    n = 400 if split == "train" else 200
    y = torch.randint(0, 4, (n,), generator=g)
    return (centres[y] + torch.randn(n, 16, generator=g)).view(n, 1, 4, 4), y


@register_model("tiny_mlp", cuts={"shallow": 1, "medium": 1, "deep": 2}, default_in_channels=1)
def tiny_mlp(*, num_classes: int, in_channels: int, stem: str | None) -> list[nn.Module]:
    """Two hidden ReLU layers; the client keeps the first (or two)."""
    return [
        nn.Sequential(nn.Flatten(), nn.Linear(16 * in_channels, 32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, 32), nn.ReLU()),
        nn.Linear(32, num_classes),
    ]
