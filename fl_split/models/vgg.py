"""VGG19 with batch norm for CIFAR-sized input, as a flat, splittable layer list.

A "layer" here is one conv block (conv3×3 + BN + ReLU); the max-pool that ends each of the five
stages belongs to the stage's last conv block. Counted that way, the MS paper's cut points "after
layers 2, 8, 15" give its feature maps 64×16×16, 256×4×4 and 512×2×2 on 32×32 input.
"""

from __future__ import annotations

from torch import nn

from fl_split.models.registry import register_model

# Output channels of the conv blocks, stage by stage (VGG19: 2, 2, 4, 4, 4 convs).
VGG19_STAGES: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4)


def _conv_block(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    # torchvision's VGG initialisation.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    block: list[nn.Module] = [conv, nn.BatchNorm2d(c_out), nn.ReLU()]
    if pool:
        block.append(nn.MaxPool2d(2))
    return nn.Sequential(*block)


def vgg19_layers(num_classes: int = 10, in_channels: int = 3) -> list[nn.Module]:
    """The flat layer list of VGG19-BN (fresh modules on every call).

    Output shapes per image for 32×32 input (every conv block ends in ReLU, then max-pool if "+ pool"):

    =====  ===================================  ================
    idx    layer                                output
    =====  ===================================  ================
    0      conv(in→64)                          64×32×32
    1      conv(64→64) + pool                   64×16×16
    2      conv(64→128)                         128×16×16
    3      conv(128→128) + pool                 128×8×8
    4-6    conv(→256) ×3                        256×8×8
    7      conv(256→256) + pool                 256×4×4
    8-10   conv(→512) ×3                        512×4×4
    11     conv(512→512) + pool                 512×2×2
    12-14  conv(512→512) ×3                     512×2×2
    15     conv(512→512) + pool                 512×1×1
    16     adaptive avg-pool to 1×1             512×1×1
    17     flatten                              512
    18     linear(512→num_classes)              num_classes
    =====  ===================================  ================

    The adaptive average pool is exact identity on 32×32 input and lets larger inputs through.

    Named cuts in the model registry (``create_split_model("vgg19", cut)``; the client keeps ``cut``
    layers; the paper's "after layers 2, 8, 15"):

    =======  ===  ==================================
    name     cut  client output (CIFAR, per image)
    =======  ===  ==================================
    shallow  2    64×16×16, max-pool of post-ReLU
    medium   8    256×4×4, max-pool of post-ReLU
    deep     15   512×2×2, post-ReLU
    =======  ===  ==================================

    Parameters
    ----------
    num_classes:
        Number of output logits.
    in_channels:
        Input channels (3 for CIFAR).

    Returns
    -------
    layers:
        The 19 layers above.
    """
    layers: list[nn.Module] = []
    c_in = in_channels
    for stage in VGG19_STAGES:
        for i, c_out in enumerate(stage):
            layers.append(_conv_block(c_in, c_out, pool=i == len(stage) - 1))
            c_in = c_out
    fc = nn.Linear(c_in, num_classes)
    nn.init.normal_(fc.weight, 0.0, 0.01)
    nn.init.zeros_(fc.bias)
    return [*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc]


@register_model("vgg19", cuts={"shallow": 2, "medium": 8, "deep": 15})
def _vgg19(*, num_classes: int, in_channels: int, stem: str | None) -> list[nn.Module]:
    """Registry entry: :func:`vgg19_layers`."""
    return vgg19_layers(num_classes, in_channels)
