"""A small 1-D CNN for MNIST-1D signals ``[N, 1, 40]``, splittable into client and server halves."""

from __future__ import annotations

from torch import nn

from fl_split.models.registry import register_model

SIGNAL_LENGTH = 40


def _conv1d_relu(c_in: int, c_out: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.ReLU())


def mnist1d_layers(num_classes: int = 10, in_channels: int = 1) -> list[nn.Module]:
    """The flat layer list of the MNIST-1D CNN (fresh modules on every call).

    ====  ==========================  ====================
    idx   layer                       output (per signal)
    ====  ==========================  ====================
    0     conv1d k5 (in→32) + ReLU    32×40
    1     conv1d k5 (32→64) + ReLU    64×40 (post-ReLU)
    2     maxpool 2                   64×20
    3     conv1d k3 (64→64) + ReLU    64×20
    4     maxpool 2                   64×10
    5     flatten                     640
    6     linear(640→num_classes)     num_classes
    ====  ==========================  ====================

    Named cuts in the model registry (``create_split_model("mnist1d_cnn", cut)``; the client keeps
    ``cut`` layers):

    =======  ===  ================================
    name     cut  client output (per signal)
    =======  ===  ================================
    shallow  2    64×40, post-ReLU
    medium   4    64×20, post-ReLU
    deep     5    64×10, max-pool of post-ReLU
    =======  ===  ================================

    Parameters
    ----------
    num_classes:
        Number of output logits.
    in_channels:
        Input channels (1 for MNIST-1D).

    Returns
    -------
    layers:
        The seven layers above; the input length must be 40.
    """
    return [
        _conv1d_relu(in_channels, 32, 5),
        _conv1d_relu(32, 64, 5),
        nn.MaxPool1d(2),
        _conv1d_relu(64, 64, 3),
        nn.MaxPool1d(2),
        nn.Flatten(),
        nn.Linear(64 * (SIGNAL_LENGTH // 4), num_classes),
    ]


@register_model("mnist1d_cnn", cuts={"shallow": 2, "medium": 4, "deep": 5}, default_in_channels=1)
def _mnist1d_cnn(*, num_classes: int, in_channels: int, stem: str | None) -> list[nn.Module]:
    """Registry entry: :func:`mnist1d_layers`."""
    return mnist1d_layers(num_classes, in_channels)
