"""Real post-ReLU feature maps: the client half of a briefly trained :class:`DigitsCNN` on digits."""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from fl_split.data.digits import load_digits_tensors
from fl_split.models.digits_cnn import DigitsCNN, build_digits_cnn

BATCH_SIZE = 64
LEARNING_RATE = 2e-3
#: The client keeps conv+ReLU, conv+ReLU: it outputs post-ReLU 64×16×16 maps.
FEATURE_CUT = 2


@lru_cache(maxsize=4)
def _trained_state(seed: int, train_steps: int) -> dict[str, torch.Tensor]:
    """Train a :class:`DigitsCNN` with Adam (batch 64) on the digits train split; return its state."""
    x, y = load_digits_tensors("train", upscale=16, seed=0)
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        torch.manual_seed(seed)
        model = DigitsCNN()
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        model.train()
        order = torch.randperm(len(y), generator=gen)
        pos = 0
        for _ in range(train_steps):
            if pos + BATCH_SIZE > len(order):
                order, pos = torch.randperm(len(y), generator=gen), 0
            idx = order[pos : pos + BATCH_SIZE]
            pos += BATCH_SIZE
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_digits_cnn(train_steps: int = 100, seed: int = 0) -> DigitsCNN:
    """A :class:`DigitsCNN` trained for ``train_steps`` Adam steps (batch 64) on the digits train split.

    Deterministic for a given ``seed`` on a given machine; the training itself is cached
    in-process, and every call returns a fresh model (in eval mode) loaded with the trained weights.

    Parameters
    ----------
    train_steps:
        Number of optimiser steps (>= 0). Default 100 (about 4.5 epochs).
    seed:
        Seed of the initialisation and of the batch order.

    Raises
    ------
    ValueError
        If ``train_steps`` is negative.
    """
    if not isinstance(train_steps, int) or train_steps < 0:
        raise ValueError(f"train_steps must be a non-negative int, got {train_steps!r}")
    model = DigitsCNN()
    model.load_state_dict(_trained_state(seed, train_steps))
    return model.eval()


@lru_cache(maxsize=8)
def _feature_maps(n: int, seed: int, train_steps: int) -> torch.Tensor:
    client, _ = build_digits_cnn(cut=FEATURE_CUT, model=train_digits_cnn(train_steps, seed))
    x, _ = load_digits_tensors("train", upscale=16, seed=0)
    reps = -(-n // len(x))
    inputs = x.repeat(reps, 1, 1, 1)[:n] if reps > 1 else x[:n]
    with torch.no_grad():
        return client(inputs).to(torch.float32).contiguous()


def real_feature_maps(n: int = 256, seed: int = 0, train_steps: int = 100) -> torch.Tensor:
    """Post-ReLU activations sent by the client half of a trained :class:`DigitsCNN`.

    Trains the net (see :func:`train_digits_cnn`), cuts it after its second conv+ReLU and returns
    that client half's output on the first ``n`` digits training images (the 1437 training images
    are repeated in order when ``n`` is larger). The result is cached in-process; each call returns
    a copy, so callers may modify it.

    Parameters
    ----------
    n:
        Number of feature maps (>= 1). Default 256.
    seed:
        Seed of the training run.
    train_steps:
        Optimiser steps of the training run. Default 100.

    Returns
    -------
    torch.Tensor
        ``float32 [n, 64, 16, 16]``, all elements >= 0.

    Raises
    ------
    ValueError
        If ``n`` < 1 or ``train_steps`` < 0.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(train_steps, int) or train_steps < 0:
        raise ValueError(f"train_steps must be a non-negative int, got {train_steps!r}")
    return _feature_maps(n, seed, train_steps).clone()
