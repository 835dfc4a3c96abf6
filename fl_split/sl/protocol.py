"""The split-learning round protocol: one object per mode, and sessions with explicit states.

A round is a list of *waves*; the clients of a wave train at the same time, each in a
:class:`Session`. A mode decides four things and nothing else:

1. the waves (:meth:`RoundProtocol.waves`): who trains, and in which order;
2. what a wave's ``sl_begin`` hands out (:meth:`RoundProtocol.begin`): the client-half weights,
   the client optimizer state, and what the client must return when it is done;
3. which server half a session trains (:meth:`RoundProtocol.session`);
4. how finished sessions are merged (:meth:`RoundProtocol.end_wave`, :meth:`RoundProtocol.end_round`).

The modes (``mode`` in the config):

``sequential``
    Vanilla split learning. The sampled clients take turns, one per wave, in an order drawn each
    round from the run's seeded generator (``random.Random(seed)``, the same that samples the
    clients; a shuffle of the sampled nodes in ascending id). Each client starts from the client
    half *and its SGD momentum* that the previous client returned, and returns both. One server
    half and its optimizer serve every client. With codec ``none`` this is exactly centralized
    training of the whole model on the clients' batches in visiting order.
``splitfed1``
    SplitFed v1. All sampled clients in one wave; each trains its own copy of the server half.
    At the end of the round both halves are averaged, weighted by the samples the server stepped for
    each client (with ``gradients=local``: the samples each client sent).
``splitfed2``
    SplitFed v2. All sampled clients in one wave, one shared server half stepped in the order the
    clients' batches arrive; client halves averaged by samples at the end of the round.

Optimizer state (SGD momentum) follows one rule in every mode: **state belongs to a trajectory of
weights.** A half trained as one continuous trajectory keeps its state: the sequential client half
(handed on with the weights, across clients and rounds) and the shared server half of
``sequential`` and ``splitfed2`` (kept on the server for the whole run). A half that is replaced
by an average at the end of a round starts the next round with fresh state: the client halves of
``splitfed1``/``splitfed2`` and ``splitfed1``'s server-half copies. A momentum buffer accumulated on
one client's weights points nowhere useful once the weights are an average, and with
``fraction < 1`` it can be many rounds old. This is also what FedAvg's local solver does, and what
``fl-split fl`` does (a fresh optimizer per client and round), so SL and FL are compared under the
same policy, and nothing extra is sent or stored for it.

If a client fails in ``sequential`` mode, the next client starts from the last half that was
returned (the failed client's client-side steps are lost; its server-side steps cannot be undone).
"""

from __future__ import annotations

import copy
import enum
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fl_split.sl.server import fedavg_into
from fl_split.sl.wire import MOMENTUM, RETURNS, WEIGHTS, encode_tensors

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class SessionStatus(enum.Enum):
    """Where one client's session of a round stands."""

    ACTIVE = "active"  #: sl_begin sent, exchanging steps
    DONE = "done"  #: returned what the begin asked for; its half is merged
    FAILED = "failed"  #: raised, timed out, or sent something malformed; nothing of it is merged


@dataclass
class Session:
    """One client's part in the current round.

    ``server``/``optimizer`` are the server half this client's batches train (shared or a copy).
    ``batches``, ``steps`` and ``trained`` are the server's own counts of what the client sent and
    what was stepped; its done reply must agree with them. ``weights`` (client-half tensors),
    ``momentum`` (``none``-codec payloads, ``b""`` where no step made a buffer yet) and ``samples``
    (the server's count, the FedAvg weight) are set when the client is done; ``error`` and
    ``reason`` (one of :data:`fl_split.validate.REASONS`) when it failed.
    """

    node: int
    server: nn.Module
    optimizer: torch.optim.Optimizer
    status: SessionStatus = SessionStatus.ACTIVE
    weights: list[torch.Tensor] | None = None
    momentum: list[bytes] = field(default_factory=list)
    samples: int = 0
    batches: int = 0
    steps: int = 0
    trained: int = 0
    error: str | None = None
    reason: str | None = None

    @property
    def active(self) -> bool:
        """Still exchanging steps this round."""
        return self.status is SessionStatus.ACTIVE

    def finish(self, weights: list[torch.Tensor], momentum: list[bytes], samples: int) -> None:
        """The client returned its half: ACTIVE → DONE."""
        self._leave(SessionStatus.DONE)
        self.weights, self.momentum, self.samples = weights, momentum, samples

    def fail(self, error: str, reason: str = "raised") -> None:
        """The client is out of this round: ACTIVE → FAILED."""
        self._leave(SessionStatus.FAILED)
        self.error, self.reason = error, reason

    def _leave(self, status: SessionStatus) -> None:
        if not self.active:
            raise RuntimeError(f"session of client {self.node} is already {self.status.value}")
        self.status = status


class RoundProtocol(ABC):
    """What a split-learning mode decides (see the module docstring).

    Parameters
    ----------
    client_half:
        The global client half (updated in place by merges).
    server_half, server_optimizer:
        The server's half and its optimizer (updated in place; copied per session in ``splitfed1``).
    make_optimizer:
        A fresh optimizer for a module (``splitfed1``'s server-half copies).
    rng:
        The run's seeded generator (sampling and visiting order).
    """

    name: ClassVar[str]
    #: what a client returns when it is done (the ``returns`` field of ``sl_begin``)
    returns: ClassVar[tuple[str, ...]] = (WEIGHTS,)

    def __init__(
        self,
        client_half: nn.Module,
        server_half: nn.Module,
        server_optimizer: torch.optim.Optimizer,
        make_optimizer: OptimizerFactory,
        rng: random.Random,
    ) -> None:
        self.client_half = client_half
        self.server_half = server_half
        self.server_optimizer = server_optimizer
        self.make_optimizer = make_optimizer
        self.rng = rng

    @abstractmethod
    def waves(self, sampled: Sequence[int]) -> list[list[int]]:
        """The round's waves: lists of nodes that train at the same time, in order."""

    def begin(self) -> dict[str, Any]:
        """The fields every ``sl_begin`` of the next wave carries besides the config and round."""
        return {WEIGHTS: encode_tensors(list(self.client_half.state_dict().values())), RETURNS: list(self.returns)}

    def session(self, node: int) -> Session:
        """A session on the shared server half (``splitfed1`` overrides: a copy per client)."""
        return Session(node, self.server_half, self.server_optimizer)

    def end_wave(self, sessions: Sequence[Session]) -> None:  # noqa: B027 - a hook, empty by default
        """A wave is over (every session done or failed)."""

    def end_round(self, sessions: Sequence[Session]) -> None:  # noqa: B027 - a hook, empty by default
        """The round is over: merge what the done sessions returned."""

    def state_dict(self) -> dict[str, Any]:
        """What the mode carries from round to round besides the halves (for checkpoints)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 - nothing by default
        """Restore :meth:`state_dict`."""


def mergeable(sessions: Sequence[Session]) -> list[Session]:
    """Sessions with something to merge, in ascending node order (a fixed FedAvg summation order)."""
    return sorted(
        (s for s in sessions if s.status is SessionStatus.DONE and s.samples > 0 and s.weights is not None),
        key=lambda s: s.node,
    )


class Sequential(RoundProtocol):
    """Vanilla split learning: one client at a time, the client half and its momentum handed on."""

    name = "sequential"
    returns = (WEIGHTS, MOMENTUM)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.momentum: list[bytes] = []  #: the handed-on client momentum (empty: fresh)

    def waves(self, sampled: Sequence[int]) -> list[list[int]]:
        """One wave per client, in an order drawn from the run's generator."""
        order = sorted(sampled)
        self.rng.shuffle(order)
        return [[node] for node in order]

    def begin(self) -> dict[str, Any]:
        """The half (and momentum) the previous client returned."""
        fields = super().begin()
        if self.momentum:
            fields[MOMENTUM] = self.momentum
        return fields

    def state_dict(self) -> dict[str, Any]:
        """The handed-on client momentum."""
        return {"momentum": list(self.momentum)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the handed-on client momentum."""
        self.momentum = list(state["momentum"])

    def end_wave(self, sessions: Sequence[Session]) -> None:
        """Hand on the half the client returned (a failed client hands on nothing)."""
        for s in mergeable(sessions):
            fedavg_into(self.client_half, [s.weights or []], [1.0])
            self.momentum = s.momentum


class SplitFed2(RoundProtocol):
    """SplitFed v2: one shared server half stepped in arrival order; client halves FedAvg'd by samples."""

    name = "splitfed2"

    def waves(self, sampled: Sequence[int]) -> list[list[int]]:
        """Every sampled client at once."""
        return [sorted(sampled)]

    def end_round(self, sessions: Sequence[Session]) -> None:
        """Average the client halves, weighted by samples trained."""
        done = mergeable(sessions)
        if done:
            fedavg_into(self.client_half, [s.weights or [] for s in done], [float(s.samples) for s in done])


class SplitFed1(SplitFed2):
    """SplitFed v1: SplitFed v2's waves, but a server-half copy per client, averaged like the client halves."""

    name = "splitfed1"

    def session(self, node: int) -> Session:
        """A copy of the server half with a fresh optimizer (it is averaged at the round's end)."""
        server = copy.deepcopy(self.server_half)
        return Session(node, server, self.make_optimizer(server))

    def end_round(self, sessions: Sequence[Session]) -> None:
        """Average client halves and server copies, weighted by samples trained."""
        super().end_round(sessions)
        done = mergeable(sessions)
        if done:
            states = [list(s.server.state_dict().values()) for s in done]
            fedavg_into(self.server_half, states, [float(s.samples) for s in done])


#: mode name (the config's ``mode``) → protocol class
PROTOCOLS: dict[str, type[RoundProtocol]] = {p.name: p for p in (Sequential, SplitFed1, SplitFed2)}


def create_protocol(
    mode: str,
    client_half: nn.Module,
    server_half: nn.Module,
    server_optimizer: torch.optim.Optimizer,
    make_optimizer: OptimizerFactory,
    rng: random.Random,
) -> RoundProtocol:
    """The protocol object for ``mode`` (``KeyError`` naming the known modes otherwise)."""
    try:
        cls = PROTOCOLS[mode]
    except KeyError:
        raise KeyError(f"unknown split-learning mode {mode!r}; known: {', '.join(PROTOCOLS)}") from None
    return cls(client_half, server_half, server_optimizer, make_optimizer, rng)
