"""Auxiliary heads for local-loss split learning: a small classifier on the cut-layer activations.

In local-loss split learning (``gradients=local``) a client half does not wait for the server's
activation gradient: a small head maps its activations to logits, and the client half and the head
step on that local cross-entropy. The heads, by name (``aux_head`` in the config):

``linear``
    Flatten, then one linear layer to the logits: ``numel(a) · classes`` weights (for the digits
    model's shallow cut, 64×16×16 activations, 164 k weights; ResNet18's, 64×32×32, 655 k).
``pool``
    Average-pool each channel to 2×2 (an image map ``C×H×W``) or to 4 (a signal ``C×L``), flatten,
    one linear layer: ``4C · classes`` weights, whatever the map's size.
``mlp``
    As ``pool``, with a hidden layer of 128 ReLU units before the logits.
``auto``
    ``pool`` for a feature map (activations of two or more dimensions per sample), ``linear`` for a
    flat vector. The auxiliary head is the only part of the model the server never sees; a small one
    keeps the client's extra compute and the bytes of its weights (sent with the client half at
    every round's start and end) small.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

#: Hidden units of the ``mlp`` head.
MLP_HIDDEN = 128


def _pool(shape: Sequence[int]) -> tuple[nn.Module, int]:
    """An average pool to 2×2 (maps) or 4 (signals) and the features it leaves; identity for flat inputs."""
    if len(shape) >= 3:
        return nn.AdaptiveAvgPool2d(2), int(shape[0]) * 4
    if len(shape) == 2:
        return nn.AdaptiveAvgPool1d(4), int(shape[0]) * 4
    return nn.Identity(), int(shape[0])


def _linear(shape: Sequence[int], num_classes: int) -> nn.Module:
    numel = 1
    for d in shape:
        numel *= int(d)
    return nn.Sequential(nn.Flatten(), nn.Linear(numel, num_classes))


def _pooled(shape: Sequence[int], num_classes: int) -> nn.Module:
    pool, features = _pool(shape)
    return nn.Sequential(pool, nn.Flatten(), nn.Linear(features, num_classes))


def _mlp(shape: Sequence[int], num_classes: int) -> nn.Module:
    pool, features = _pool(shape)
    return nn.Sequential(
        pool, nn.Flatten(), nn.Linear(features, MLP_HIDDEN), nn.ReLU(), nn.Linear(MLP_HIDDEN, num_classes)
    )


#: Head name → builder ``(activation shape per sample, classes) -> module``.
_BUILDERS: dict[str, Callable[[Sequence[int], int], nn.Module]] = {"linear": _linear, "pool": _pooled, "mlp": _mlp}
#: The heads ``aux_head`` names (besides ``auto``).
AUX_HEADS: tuple[str, ...] = tuple(_BUILDERS)


def resolve_aux_head(name: str, shape: Sequence[int]) -> str:
    """The head ``name`` means for activations of ``shape`` per sample (``auto`` resolved)."""
    if name == "auto":
        return "pool" if len(shape) >= 2 else "linear"
    if name not in _BUILDERS:
        raise ValueError(f"unknown auxiliary head {name!r}; choose auto or one of {', '.join(AUX_HEADS)}")
    return name


def build_aux_head(name: str, shape: Sequence[int], num_classes: int, seed: int | None = None) -> nn.Module:
    """The auxiliary head ``name`` for activations of ``shape`` per sample and ``num_classes`` logits.

    With ``seed`` its weights are initialised from it (the global RNG is left as it was).
    """
    build = _BUILDERS[resolve_aux_head(name, shape)]
    if seed is None:
        return build(shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(shape, num_classes)


class WithAuxHead(nn.Module):
    """A client half and its auxiliary head.

    ``forward`` is the half's alone (the cut-layer activations, what the server and evaluation see);
    :attr:`head` maps those to logits for the local loss. The state dict lists the half's tensors
    first (``body.*``), then the head's (``head.*``): weights move and average as one module.
    """

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The client half's activations for ``x``."""
        out: torch.Tensor = self.body(x)
        return out
