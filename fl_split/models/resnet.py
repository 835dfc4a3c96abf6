"""ResNet18 and ResNet34 (BasicBlock, torchvision layout) as flat, splittable layer lists.

The flat list is ``[stem, block, block, ..., adaptive avg-pool, flatten, fc]``: the stem
(conv + BN + ReLU, plus max-pool for the ImageNet stem) is one layer and every residual block is one
layer. Parameter names inside the stem, the blocks and ``fc`` follow torchvision's ``resnet18`` /
``resnet34``, and initialisation is torchvision's, so weights carry over block by block.

Two stems:

- ``"cifar"``: conv3×3 stride 1, no max-pool (32×32 input keeps 32×32 in stage 1).
- ``"imagenet"``: conv7×7 stride 2 + max-pool 3×3 stride 2 (224×224 input → 56×56 in stage 1).
"""

from __future__ import annotations

from torch import Tensor, nn

from fl_split.models.registry import register_model

STEMS: tuple[str, ...] = ("cifar", "imagenet")
STAGE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two conv3×3 + BN, identity or 1×1-conv shortcut, then ReLU.

    Parameters
    ----------
    c_in:
        Input channels.
    c_out:
        Output channels.
    stride:
        Stride of the first conv (and of the shortcut).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        """Residual block output (post-ReLU, so non-negative)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Stem(nn.Module):
    """The ResNet input stem: conv + BN + ReLU (+ max-pool for ``"imagenet"``).

    Parameters
    ----------
    in_channels:
        Input channels.
    stem:
        ``"cifar"`` (conv3×3 stride 1) or ``"imagenet"`` (conv7×7 stride 2 and max-pool 3×3 stride 2).
    """

    def __init__(self, in_channels: int, stem: str) -> None:
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """Stem output (post-ReLU, or a max-pool of it; non-negative)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))


def resnet_layers(
    blocks_per_stage: tuple[int, int, int, int],
    num_classes: int = 10,
    in_channels: int = 3,
    stem: str = "cifar",
) -> list[nn.Module]:
    """The flat layer list of a BasicBlock ResNet (fresh modules on every call).

    Parameters
    ----------
    blocks_per_stage:
        Residual blocks in stages 1-4: ``(2, 2, 2, 2)`` for ResNet18, ``(3, 4, 6, 3)`` for ResNet34.
    num_classes:
        Number of output logits.
    in_channels:
        Input channels.
    stem:
        ``"cifar"`` or ``"imagenet"`` (see the module docstring).

    Returns
    -------
    layers:
        ``[stem, *blocks, AdaptiveAvgPool2d(1), Flatten(), Linear(512, num_classes)]``, i.e.
        ``sum(blocks_per_stage) + 4`` layers.

    Raises
    ------
    ValueError
        If ``stem`` is not one of :data:`STEMS`.
    """
    if stem not in STEMS:
        raise ValueError(f"invalid stem {stem!r}; choose one of {list(STEMS)}")
    layers: list[nn.Module] = [Stem(in_channels, stem)]
    c_in = 64
    for stage, (width, n_blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage, strict=True)):
        for i in range(n_blocks):
            layers.append(BasicBlock(c_in, width, stride=2 if stage > 0 and i == 0 else 1))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    # torchvision's ResNet initialisation (fc keeps the nn.Linear default).
    for layer in layers:
        for m in layer.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
    return layers


def _cuts(blocks_per_stage: tuple[int, int, int, int]) -> dict[str, int]:
    # shallow: right after the stem; medium / deep: end of stage 2 / stage 3.
    return {
        "shallow": 1,
        "medium": 1 + sum(blocks_per_stage[:2]),
        "deep": 1 + sum(blocks_per_stage[:3]),
    }


RESNET18_BLOCKS = (2, 2, 2, 2)
RESNET34_BLOCKS = (3, 4, 6, 3)


@register_model("resnet18", cuts=_cuts(RESNET18_BLOCKS), stems=STEMS, default_stem="cifar")
def _resnet18(*, num_classes: int, in_channels: int, stem: str | None) -> list[nn.Module]:
    """Registry entry: ResNet18, 12 layers.

    =======  ===  ======================  ======================
    name     cut  ``cifar`` (32×32 in)    ``imagenet`` (224×224)
    =======  ===  ======================  ======================
    shallow  1    64×32×32                64×56×56
    medium   5    128×16×16               128×28×28
    deep     7    256×8×8                 256×14×14
    =======  ===  ======================  ======================
    """
    return resnet_layers(RESNET18_BLOCKS, num_classes, in_channels, stem or "cifar")


@register_model("resnet34", cuts=_cuts(RESNET34_BLOCKS), stems=STEMS, default_stem="imagenet")
def _resnet34(*, num_classes: int, in_channels: int, stem: str | None) -> list[nn.Module]:
    """Registry entry: ResNet34, 20 layers.

    =======  ===  ======================  ======================
    name     cut  ``cifar`` (32×32 in)    ``imagenet`` (224×224)
    =======  ===  ======================  ======================
    shallow  1    64×32×32                64×56×56
    medium   8    128×16×16               128×28×28
    deep     14   256×8×8                 256×14×14
    =======  ===  ======================  ======================
    """
    return resnet_layers(RESNET34_BLOCKS, num_classes, in_channels, stem or "imagenet")
