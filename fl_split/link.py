"""Edge links and the link model: how long a run takes on a link, from what it measured.

A :class:`LinkProfile` is a device's link: uplink and downlink Mbit/s and a round-trip time. The
named profiles (:data:`PROFILES`) are typical, not measured, rates; ``up=2,down=8,rtt=40`` names any.

The model (:func:`predict_time_to_round`) takes a run's metrics rows measured on a fast link (an
unshaped one: ``measured_on``) and puts each round's bytes on the given link::

    t_link(L)     = up_bytes / (L.up · η) + down_bytes / (L.down · η) + exchanges · L.rtt     (per client)
    t_round(L)    = t_round − t_stream + max(t_stream, t_link(L))      SplitFed over the stream transport
    t_round(L)    = t_round + t_link(L)                                 FL, messages transport, sequential SL

Clients of a round run in parallel, each on its own link (SplitFed, FL), so a round waits for its
slowest client; with equal partitions every client moves ``bytes / clients``. In a SplitFed round
over the stream transport (``stream_s``: its first frame to its last) a client's compute overlaps the
other clients' transfers (measured: on 5/20 Mbit/s links the stream part took the longer of its
unshaped time and the link time, within 2 s), so that part is the longer of the two; the round's
other seconds (Flower's messages, evaluation) stay. Elsewhere the link time adds: FL's transfers
come before and after local training, and ``sequential`` split learning's clients take turns, so their
link times add up. ``η`` (:data:`GOODPUT`) is the share of a link's rate that carries payload bytes
(TCP payload per full Ethernet frame; ``tests/test_netns.py`` checks it on a ``tbf`` link). Not
modelled: TCP slow start after idle periods, loss, and round trips beyond one per exchange.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Share of a link's rate that carries payload bytes: a full Ethernet frame of 1514 bytes (what ``tbf``
#: counts) carries 1448 of TCP payload (20 bytes of IP and 32 of TCP with timestamps, 14 of Ethernet);
#: the stream's framing adds under 0.5 % on MB-sized messages. Measured on this project's shaped veth
#: links with a 4 KiB burst: 0.959 and 0.958 of 1 and 4 Mbit/s, 0.956 and 0.958 of 20 and 50
#: (``tests/test_netns.py`` checks 4 and 12).
#: It was 0.985 until 12-08, read off links whose 64 KiB burst carried a transfer's first bytes free.
GOODPUT = 1448 / 1514


@dataclass(frozen=True)
class LinkProfile:
    """A device's link: uplink (device → server) and downlink Mbit/s, round-trip time in ms."""

    name: str
    up_mbit: float
    down_mbit: float
    rtt_ms: float = 0.0
    about: str = ""

    def transfer_s(self, up_bytes: float, down_bytes: float, exchanges: float = 0.0) -> float:
        """Seconds to move ``up_bytes`` up and ``down_bytes`` down (in turn), plus ``exchanges`` round trips."""
        t = exchanges * self.rtt_ms / 1000.0
        if up_bytes:
            t += up_bytes * 8 / (self.up_mbit * 1e6 * GOODPUT) if self.up_mbit > 0 else 0.0
        if down_bytes:
            t += down_bytes * 8 / (self.down_mbit * 1e6 * GOODPUT) if self.down_mbit > 0 else 0.0
        return t

    def describe(self) -> str:
        """``lte (5/20 Mbit/s, RTT 50 ms)``."""
        return f"{self.name} ({self.up_mbit:g}/{self.down_mbit:g} Mbit/s up/down, RTT {self.rtt_ms:g} ms)"


#: Named profiles: typical rates of each kind of link (not measurements of a particular network).
PROFILES: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        LinkProfile("iot", 1.0, 4.0, 100.0, "a constrained IoT uplink (NB-IoT/LTE-M class, upper end)"),
        LinkProfile("lte", 5.0, 20.0, 50.0, "a cellular LTE link at the cell edge"),
        LinkProfile("wifi", 20.0, 50.0, 10.0, "a shared Wi-Fi link"),
    )
}

#: No link: the model's zero (a measurement on localhost or an unshaped namespace).
UNSHAPED = LinkProfile("unshaped", 0.0, 0.0, 0.0, "no shaping")


def parse_link(text: str) -> LinkProfile:
    """A named profile (``lte``) or rates: ``up=2,down=8[,rtt=40]`` (Mbit/s, ms).

    Raises
    ------
    ValueError
        An unknown name (with the names) or malformed rates (with the form).
    """
    text = text.strip()
    if text in PROFILES:
        return PROFILES[text]
    if "=" not in text:
        from fl_split.suggest import did_you_mean

        raise ValueError(
            f"unknown link {text!r}{did_you_mean(text, PROFILES)}; named links: {', '.join(PROFILES)}, "
            "or rates up=MBIT,down=MBIT[,rtt=MS]"
        )
    values: dict[str, float] = {}
    for part in text.split(","):
        key, _, raw = part.partition("=")
        key = key.strip()
        if key not in ("up", "down", "rtt"):
            raise ValueError(f"link rates take up=, down= and rtt= (Mbit/s, Mbit/s, ms); got {key!r} in {text!r}")
        try:
            values[key] = float(raw)
        except ValueError:
            raise ValueError(f"link {key}={raw!r} is not a number (in {text!r})") from None
        if not math.isfinite(values[key]):
            raise ValueError(f"link {key}={raw!r} must be a finite number (in {text!r})")
        if values[key] < 0 or (key != "rtt" and values[key] == 0):
            raise ValueError(f"link {key}={raw} must be {'>= 0' if key == 'rtt' else '> 0'} (in {text!r})")
    if "up" not in values or "down" not in values:
        raise ValueError(f"link rates need both up= and down= (Mbit/s), got {text!r}")
    return LinkProfile(text, values["up"], values["down"], values.get("rtt", 0.0))


def round_link_s(row: Mapping[str, Any], link: LinkProfile, clients: int, *, sequential: bool = False) -> float:
    """The link's share of one round: its bytes (``uplink_bytes``, ``downlink_bytes``) and exchanges
    (``messages``: one round trip each; else one per client) split evenly among the round's clients
    (its ``clients``, else ``clients``), which run in parallel, each on its own link, unless ``sequential``."""
    clients = max(1, int(row.get("clients") or clients))  # the round's own count when it has one
    exchanges = float(row.get("messages") or clients)
    per = link.transfer_s(
        float(row["uplink_bytes"]) / clients, float(row["downlink_bytes"]) / clients, exchanges / clients
    )
    return per * clients if sequential else per


def round_walls(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Each round's seconds, from the rows' cumulative ``wall_s``."""
    walls = [float(r["wall_s"]) for r in rows]
    return [w - (walls[i - 1] if i else 0.0) for i, w in enumerate(walls)]


def predict_time_to_round(
    rows: Sequence[Mapping[str, Any]],
    link: LinkProfile,
    last_round: int,
    clients: int,
    measured_on: LinkProfile = UNSHAPED,
    *,
    sequential: bool = False,
) -> float:
    """Predicted seconds from the first round's start to the end of round ``last_round`` on ``link``, from
    the metrics rows of a run measured on ``measured_on`` (see the module docstring).

    Raises
    ------
    ValueError
        The rows end before ``last_round``.
    """
    rows = list(rows)
    if not rows or int(rows[-1]["round"]) < last_round:
        raise ValueError(f"the measured run has no row for round {last_round} (its rows end before it)")
    total = 0.0
    for row, wall in zip(rows, round_walls(rows), strict=True):
        if int(row["round"]) > last_round:
            break
        total += predict_round_s(row, wall, link, clients, measured_on, sequential=sequential)
    return total


def predict_round_s(
    row: Mapping[str, Any],
    wall: float,
    link: LinkProfile,
    clients: int,
    measured_on: LinkProfile = UNSHAPED,
    *,
    sequential: bool = False,
) -> float:
    """One round's seconds on ``link`` from its row and its measured ``wall`` seconds (see the module docstring).

    A split-learning round over the stream transport (its row has ``stream_s``, the seconds from its first
    frame to its last) overlaps its clients' compute with the other clients' transfers: that part takes
    the longer of its compute and the link time; the rest of the round (Flower's messages, evaluation)
    is kept. Other rounds (FL, the messages transport, ``sequential`` clients in turn) add the link time.
    """
    measured_link = round_link_s(row, measured_on, clients, sequential=sequential)
    new_link = round_link_s(row, link, clients, sequential=sequential)
    stream = row.get("stream_s")
    if stream is None or sequential:
        return max(0.0, wall - measured_link) + new_link
    stream = float(stream)
    compute = max(0.0, stream - measured_link)  # measured on a link slower than the compute: a lower bound
    return max(0.0, wall - stream) + max(compute, new_link)


def link_share_s(
    rows: Sequence[Mapping[str, Any]], link: LinkProfile, last_round: int, clients: int, *, sequential: bool = False
) -> float:
    """Seconds of the first ``last_round`` rounds the model gives to moving their bytes over ``link``."""
    return sum(round_link_s(r, link, clients, sequential=sequential) for r in rows if int(r["round"]) <= last_round)
