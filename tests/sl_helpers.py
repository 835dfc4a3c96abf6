"""Shared pieces of the split-learning tests: small configs and the centralized reference."""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import torch
from torch import nn

from fl_split.sl.config import load_sl_config
from fl_split.sl.setup import batch_indices, batches_per_epoch, build_halves, client_data, make_sgd

MODES = ("sequential", "splitfed1", "splitfed2")


def oracle_config(mode: str, **values: Any) -> dict[str, Any]:
    """The multi-client oracles' run: 3 clients with unequal partitions (digits, Dirichlet α = 1:
    561, 498 and 378 samples), whole epochs of batch 64 (partial last batches), 2 rounds, codec ``none``."""
    base = {"clients": 3, "partition": "dirichlet", "dirichlet_alpha": 1.0, "batch_size": 64, "rounds": 2}
    return small_config(mode=mode, **{"uplink": "none", **base, **values})


def run_on_flower(configs: list[dict[str, Any]], mods: tuple = (), **client: Any) -> list[Any]:
    """Run one strategy per config, one after the other, in one Flower simulation (one Ray start).

    The clients' ``context.state`` persists between the runs; a client resets its cursor when
    ``sl_begin`` carries a config other than the one it holds, so every run starts fresh.
    """
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from simulations.client_app import make_client_app
    from simulations.engine import run_flower_simulation
    from strategies.split_learning import SplitLearningStrategy

    strategies = [SplitLearningStrategy(c, keep_history=True) for c in configs]
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        for strategy in strategies:
            strategy.start(grid, local=True)

    first = configs[0]
    run_flower_simulation(
        app, make_client_app(mods, **client), int(first["clients"]), engine_wait_ms=first["flower"]["engine_wait_ms"]
    )
    return strategies


def inprocess_twin(flower: Any) -> Any:
    """The in-process run of a Flower run's config, its nodes given the Flower run's ids and partitions."""
    from fl_split.sl.transport import InProcessTransport
    from strategies.split_learning import SplitLearningStrategy

    config = flower.config.replace(engine="inprocess", transport="messages")
    nodes = sorted(flower.partitions, key=flower.partitions.get)
    assert [flower.partitions[n] for n in nodes] == list(range(int(config["clients"]))), flower.partitions
    local = SplitLearningStrategy(config, keep_history=True)
    local.start(InProcessTransport(int(config["clients"]), node_ids=nodes))
    return local


def history_diff(a: list[list[torch.Tensor]], b: list[list[torch.Tensor]]) -> float:
    """Largest difference between two runs' per-round snapshots (same number of rounds)."""
    return max(
        float((p.float() - q.float()).abs().max()) for x, y in zip(a, b, strict=True) for p, q in zip(x, y, strict=True)
    )


def small_config(**values: Any) -> dict[str, Any]:
    """A quick digits config (in process, no progress bar, outputs under ``out_dir``)."""
    base: dict[str, Any] = {
        "engine": "inprocess",
        "progress": False,
        "rounds": 1,
        "clients": 1,
        "client_device": "cpu",  # the oracles compare with CPU references (auto would take a GPU where one is)
        "out_dir": tempfile.mkdtemp(prefix="fl-split-test-"),  # runs never share (or refuse) a folder
    }
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


class _Cursor:
    """A client's data cursor, as the client keeps it: epoch and batch position, carried over rounds."""

    def __init__(self, config: dict[str, Any], partition_id: int, num_partitions: int) -> None:
        self.x, self.y = client_data(config, partition_id, num_partitions)
        self.pid, self.bs, self.seed = partition_id, int(config["batch_size"]), int(config["seed"])
        self.per_round = batches_per_epoch(len(self.y), self.bs) * int(config["local_epochs"])
        if int(config["max_steps_per_round"]):
            self.per_round = min(self.per_round, int(config["max_steps_per_round"]))
        self.epoch = self.pos = 0

    def round_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The batches this client trains in its next round."""
        out = []
        for _ in range(self.per_round):
            idx = batch_indices(len(self.y), self.bs, self.seed, self.pid, self.epoch, self.pos)
            out.append((self.x[idx], self.y[idx]))
            self.pos += 1
            if self.pos == batches_per_epoch(len(self.y), self.bs):
                self.epoch, self.pos = self.epoch + 1, 0
        return out


def _sgd_step(halves: list[tuple[nn.Module, torch.optim.Optimizer]], x: torch.Tensor, y: torch.Tensor) -> None:
    """One step of the unsplit model ``halves[0] → halves[1]``: both optimizers step on the same loss."""
    (client, c_opt), (server, s_opt) = halves
    client.train()
    server.train()
    loss = nn.functional.cross_entropy(server(client(x)), y)
    c_opt.zero_grad()
    s_opt.zero_grad()
    loss.backward()
    c_opt.step()
    s_opt.step()


def _average(target: nn.Module, modules: list[nn.Module], weights: list[int]) -> None:
    """``target``'s state ← the ``weights``-weighted average of ``modules``' states (float64 sums)."""
    total = float(sum(weights))
    with torch.no_grad():
        for name, dst in target.state_dict(keep_vars=True).items():
            acc = sum(m.state_dict()[name].double() * (w / total) for m, w in zip(modules, weights, strict=True))
            dst.copy_(acc)


def _snapshot(module: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in module.state_dict().values()]


def reference_sequential(
    config: dict[str, Any], orders: list[list[int]]
) -> tuple[nn.Module, nn.Module, list[list[torch.Tensor]]]:
    """Centralized training of the whole model on the clients' batches in visiting order.

    ``orders``: per round, the partition ids in the order they train. One SGD (momentum, weight
    decay) for the whole model, carried across clients and rounds. Returns both halves and the
    client half after every round.
    """
    client, server = build_halves(config, seed=int(config["seed"]))
    opts = [(client, make_sgd(client.parameters(), config)), (server, make_sgd(server.parameters(), config))]
    cursors = {p: _Cursor(config, p, int(config["clients"])) for p in range(int(config["clients"]))}
    history = []
    for order in orders:
        for pid in order:
            for x, y in cursors[pid].round_batches():
                _sgd_step(opts, x, y)
        history.append(_snapshot(client))
    return client, server, history


def reference_splitfed(config: dict[str, Any], rounds: int) -> tuple[nn.Module, nn.Module, list[list[torch.Tensor]]]:
    """SplitFed by hand: every client trains copies from the round's global halves, averaged by samples.

    ``splitfed1``: each client a copy of both halves with fresh SGD state; both halves averaged.
    ``splitfed2``: client-half copies with fresh SGD state and one shared server half (its SGD state
    kept for the run), stepped round-robin in ascending partition order (the in-process engine's
    arrival order: each client's batch t before any client's batch t + 1); client halves averaged.
    """
    n = int(config["clients"])
    client, server = build_halves(config, seed=int(config["seed"]))
    server_opt = make_sgd(server.parameters(), config)
    cursors = [_Cursor(config, p, n) for p in range(n)]
    history = []
    for _ in range(rounds):
        batches = [c.round_batches() for c in cursors]
        clients = [copy.deepcopy(client) for _ in range(n)]
        c_opts = [make_sgd(c.parameters(), config) for c in clients]
        if config["mode"] == "splitfed1":
            servers = [copy.deepcopy(server) for _ in range(n)]
            s_opts = [make_sgd(s.parameters(), config) for s in servers]
            for p in range(n):
                for x, y in batches[p]:
                    _sgd_step([(clients[p], c_opts[p]), (servers[p], s_opts[p])], x, y)
            _average(server, servers, [sum(len(y) for _, y in b) for b in batches])
        else:
            for t in range(max(len(b) for b in batches)):
                for p in range(n):
                    if t < len(batches[p]):
                        _sgd_step([(clients[p], c_opts[p]), (server, server_opt)], *batches[p][t])
        _average(client, clients, [sum(len(y) for _, y in b) for b in batches])
        history.append(_snapshot(client))
    return client, server, history


def _train_locally(
    module: nn.Module, opt: torch.optim.Optimizer, batches: list[tuple[torch.Tensor, torch.Tensor]], every: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Local-loss SL by hand, one client: a step on the auxiliary head's loss per batch; the activations
    (computed before the step) and labels of batches 0, ``every``, 2·``every``, ... of the round."""
    sent = []
    for j, (x, y) in enumerate(batches):
        module.train()
        out = module.body(x)
        loss = nn.functional.cross_entropy(module.head(out), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if j % every == 0:
            sent.append((out.detach(), y))
    return sent


def _server_step(server: nn.Module, opt: torch.optim.Optimizer, a: torch.Tensor, y: torch.Tensor) -> None:
    server.train()
    loss = nn.functional.cross_entropy(server(a), y)
    opt.zero_grad()
    loss.backward()
    opt.step()


def reference_local_loss(
    config: Any, rounds: int, orders: list[list[int]] | None = None
) -> tuple[nn.Module, nn.Module, list[list[torch.Tensor]]]:
    """Local-loss split learning by hand: the client halves (with their heads) train on their own loss,
    and the server half trains on the activations they sent, as centralized training of each on its own.

    ``splitfed2``: client copies with fresh SGD state per round, averaged by the samples sent; one server
    half (SGD state kept for the run) stepped round-robin in ascending partition order.
    ``splitfed1``: the same clients; a server copy per client with fresh SGD state, averaged likewise.
    ``sequential``: one client half and its SGD state, handed from client to client in ``orders``' order.
    Returns the client module (half + head), the server half and the client module after each round.
    """
    from fl_split.sl.setup import build_sl_halves

    n, every, mode = int(config["clients"]), int(config["send_every"]), str(config["mode"])
    client, server = build_sl_halves(config, seed=int(config["seed"]))
    server_opt = make_sgd(server.parameters(), config)
    client_opt = make_sgd(client.parameters(), config)  # sequential: one trajectory
    cursors = [_Cursor(config, p, n) for p in range(n)]
    history = []
    for rnd in range(rounds):
        if mode == "sequential":
            assert orders is not None, "sequential needs the visiting order of each round"
            for pid in orders[rnd]:
                for a, y in _train_locally(client, client_opt, cursors[pid].round_batches(), every):
                    _server_step(server, server_opt, a, y)
            history.append(_snapshot(client))
            continue
        copies = [copy.deepcopy(client) for _ in range(n)]
        sent = [
            _train_locally(c, make_sgd(c.parameters(), config), cur.round_batches(), every)
            for c, cur in zip(copies, cursors, strict=True)
        ]
        weights = [sum(len(y) for _, y in s) for s in sent]
        if mode == "splitfed1":
            servers = [copy.deepcopy(server) for _ in range(n)]
            for s, batches in zip(servers, sent, strict=True):
                opt = make_sgd(s.parameters(), config)
                for a, y in batches:
                    _server_step(s, opt, a, y)
            _average(server, servers, weights)
        else:
            for t in range(max(len(s) for s in sent)):
                for p in range(n):
                    if t < len(sent[p]):
                        _server_step(server, server_opt, *sent[p][t])
        _average(client, copies, weights)
        history.append(_snapshot(client))
    return client, server, history
