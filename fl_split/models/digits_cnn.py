"""A small CNN for 16×16 single-channel digits, splittable into client and server halves."""

from __future__ import annotations

from torch import nn

from fl_split.models.registry import register_model

NUM_CLASSES = 10


def _conv_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())


def digits_layers(num_classes: int = NUM_CLASSES) -> list[nn.Module]:
    """The flat layer list of :class:`DigitsCNN` (fresh modules on every call).

    ====  ==========================  ====================
    idx   layer                       output (per image)
    ====  ==========================  ====================
    0     conv3x3(1→32) + ReLU        32×16×16
    1     conv3x3(32→64) + ReLU       64×16×16 (post-ReLU)
    2     maxpool 2                   64×8×8
    3     conv3x3(64→64) + ReLU       64×8×8
    4     maxpool 2                   64×4×4
    5     flatten                     1024
    6     linear(1024→num_classes)    num_classes
    ====  ==========================  ====================

    Named cuts in the model registry (``create_split_model("digits_cnn", cut)``; the client keeps
    ``cut`` layers, so it sends the output of layer ``cut - 1``):

    =======  ===  ==========================================
    name     cut  client output (per image)
    =======  ===  ==========================================
    shallow  2    64×16×16, post-ReLU (the MS paper's setting)
    medium   4    64×8×8, post-ReLU
    deep     5    64×4×4, max-pool of post-ReLU
    =======  ===  ==========================================
    """
    return [
        _conv_relu(1, 32),
        _conv_relu(32, 64),
        nn.MaxPool2d(2),
        _conv_relu(64, 64),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, num_classes),
    ]


@register_model(
    "digits_cnn",
    cuts={"shallow": 2, "medium": 4, "deep": 5},
    default_in_channels=1,
    fixed_in_channels=True,
)
def _digits_cnn(*, num_classes: int, in_channels: int, stem: str | None) -> list[nn.Module]:
    """Registry entry: :func:`digits_layers` (``[N, 1, 16, 16]`` input, one channel only)."""
    return digits_layers(num_classes)


class DigitsCNN(nn.Sequential):
    """Conv net for ``[N, 1, 16, 16]`` inputs: two 3×3 conv+ReLU, pool, conv+ReLU, pool, linear.

    A ``nn.Sequential`` of the layers listed by :func:`digits_layers`.

    Parameters
    ----------
    num_classes:
        Number of output logits. Default 10.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(*digits_layers(num_classes))


def valid_cuts() -> list[int]:
    """Cuts accepted by :func:`build_digits_cnn`: the client keeps layers ``0 .. cut - 1``."""
    return list(range(1, len(digits_layers())))


def build_digits_cnn(cut: int = 2, model: DigitsCNN | None = None) -> tuple[nn.Sequential, nn.Sequential]:
    """Split a :class:`DigitsCNN` into ``(client_half, server_half)`` after its first ``cut`` layers.

    The client half is ``layers[:cut]`` and the server half ``layers[cut:]`` of the flat layer list
    (see :func:`digits_layers`). Both share the modules, and so the parameters, of ``model``, hence
    ``server(client(x)) == model(x)`` exactly.

    Parameters
    ----------
    cut:
        Number of layers on the client, in ``1 .. 6``. The default 2 ends the client after the
        second conv+ReLU, so it sends post-ReLU ``64×16×16`` feature maps (the MS paper's setting).
    model:
        The network to split; a freshly initialised :class:`DigitsCNN` when ``None``.

    Returns
    -------
    client_half, server_half:
        Two ``nn.Sequential`` modules.

    Raises
    ------
    ValueError
        If ``cut`` is not one of the valid cuts.
    """
    cuts = valid_cuts()
    if not isinstance(cut, int) or isinstance(cut, bool) or cut not in cuts:
        raise ValueError(f"cut must be one of {cuts} (the number of layers kept by the client), got {cut!r}")
    layers = list(model if model is not None else DigitsCNN())
    return nn.Sequential(*layers[:cut]), nn.Sequential(*layers[cut:])
