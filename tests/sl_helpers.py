"""Shared pieces of the split-learning tests: small configs and the centralized reference."""

from __future__ import annotations

from typing import Any

from torch import nn

from fl_split.sl.config import load_sl_config
from fl_split.sl.setup import batch_indices, batches_per_epoch, build_halves, client_data, make_sgd


def small_config(**values: Any) -> dict[str, Any]:
    """A quick digits config (in process, no progress bar, outputs under ``out_dir``)."""
    base: dict[str, Any] = {"engine": "inprocess", "progress": False, "rounds": 1, "clients": 1}
    base.update(values)
    return load_sl_config("sl", values=base)


def centralized(config: dict[str, Any], steps_per_round: int, rounds: int) -> tuple[nn.Module, nn.Module]:
    """Train the unsplit model as one client would see it: same init, batches, optimizer.

    One partition (``clients = 1``), ``steps_per_round`` batches per round, the cursor carried over
    rounds exactly like the client's.
    """
    client, server = build_halves(config, seed=int(config["seed"]))
    model = nn.Sequential(*client, *server)
    sgd = make_sgd(model.parameters(), config)
    x, y = client_data(config, 0, 1)
    nb = batches_per_epoch(len(y), int(config["batch_size"]))
    epoch = pos = 0
    for _ in range(rounds * steps_per_round):
        idx = batch_indices(len(y), int(config["batch_size"]), int(config["seed"]), 0, epoch, pos)
        model.train()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        pos += 1
        if pos == nb:
            epoch, pos = epoch + 1, 0
    return client, server


def max_diff(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference between two modules' state tensors."""
    return max(
        float((p.float() - q.float()).abs().max())
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
