"""The link model (fl_split.link): profiles, rates, and the prediction arithmetic on known rows."""

from __future__ import annotations

import pytest

from fl_split.link import GOODPUT, PROFILES, UNSHAPED, LinkProfile, parse_link, predict_time_to_round, round_walls


def test_profiles_and_rates_parse() -> None:
    assert parse_link("lte") is PROFILES["lte"] and PROFILES["lte"].up_mbit < PROFILES["lte"].down_mbit
    custom = parse_link("up=2,down=8,rtt=40")
    assert (custom.up_mbit, custom.down_mbit, custom.rtt_ms) == (2.0, 8.0, 40.0)
    assert parse_link(" up=1.5, down=3 ").rtt_ms == 0.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lt", "did you mean 'lte'"),
        ("up=2", "both up= and down="),
        ("up=0,down=3", "must be > 0"),
        ("up=x,down=3", "not a number"),
        ("up=1,down=2,delay=3", "take up=, down= and rtt="),
    ],
)
def test_bad_links_say_what_is_wrong(text: str, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        parse_link(text)


def test_transfer_time_is_bytes_over_goodput_plus_round_trips() -> None:
    link = LinkProfile("x", up_mbit=2.0, down_mbit=8.0, rtt_ms=50.0)
    t = link.transfer_s(1_000_000, 4_000_000, exchanges=10)
    assert t == pytest.approx(8e6 / (2e6 * GOODPUT) + 32e6 / (8e6 * GOODPUT) + 0.5)
    assert UNSHAPED.transfer_s(10**9, 10**9) == 0.0


def test_prediction_replaces_the_measured_links_share_round_by_round() -> None:
    """Two rounds measured on an unshaped link (cumulative wall 3 s, then 7 s), 4 clients in parallel."""
    rows = [
        {"round": 1, "wall_s": 3.0, "uplink_bytes": 4_000_000, "downlink_bytes": 8_000_000, "messages": 8},
        {"round": 2, "wall_s": 7.0, "uplink_bytes": 4_000_000, "downlink_bytes": 8_000_000, "messages": 8},
    ]
    assert round_walls(rows) == [3.0, 4.0]
    link = LinkProfile("x", up_mbit=1.0, down_mbit=4.0, rtt_ms=100.0)
    per_client = 1e6 * 8 / (1e6 * GOODPUT) + 2e6 * 8 / (4e6 * GOODPUT) + 2 * 0.1  # bytes/4 each, 8/4 exchanges
    assert predict_time_to_round(rows, link, 1, clients=4) == pytest.approx(3.0 + per_client)
    assert predict_time_to_round(rows, link, 2, clients=4) == pytest.approx(7.0 + 2 * per_client)
    sequential = predict_time_to_round(rows, link, 2, clients=4, sequential=True)
    assert sequential == pytest.approx(7.0 + 8 * per_client)  # the four clients take turns
    # measured on the link itself, the prediction for that link is the measurement
    shaped = [{**r, "wall_s": r["wall_s"] + (i + 1) * per_client} for i, r in enumerate(rows)]
    assert predict_time_to_round(shaped, link, 2, clients=4, measured_on=link) == pytest.approx(7.0 + 2 * per_client)
    with pytest.raises(ValueError, match="no row for round 3"):
        predict_time_to_round(rows, link, 3, clients=4)


def test_compare_gives_each_run_its_time_to_target_on_a_link() -> None:
    """``fl-split compare --link``: the run's rows up to its first round at the target, through the model;
    sequential split learning puts its clients' links in turn, splitfed2 in parallel."""
    from fl_split.compare.cells import Cell, cell_result
    from fl_split.sl.config import SLConfig

    rows = [
        {
            "round": r,
            "wall_s": 2.0 * r,
            "uplink_bytes": 10**6,
            "downlink_bytes": 4 * 10**6,
            "messages": 4,
            "test_accuracy": acc,
            "cum_uplink_bytes": r * 10**6,
            "cum_downlink_bytes": 4 * r * 10**6,
        }
        for r, acc in ((1, 0.5), (2, 0.96), (3, 0.97))
    ]
    link = PROFILES["lte"]
    for mode, sequential in (("splitfed2", False), ("sequential", True)):
        cell = Cell("sl", "x", SLConfig.from_dict({"clients": 4, "mode": mode, "engine": "inprocess"}))
        got = cell_result(cell, {"status": "completed"}, rows, 0.95, link)
        assert (got["s_to_target"], got["link"]) == (4.0, "lte")
        # by hand: per client and round 0.25 MB up at 5 Mbit/s, 1 MB down at 20 (x 1/GOODPUT), one 50 ms exchange
        per_client = 2e6 / (5e6 * GOODPUT) + 8e6 / (20e6 * GOODPUT) + 0.05
        expected = 4.0 + 2 * (4 * per_client if sequential else per_client)
        assert got["s_to_target_link"] == pytest.approx(expected, abs=0.01), (mode, got["s_to_target_link"])
    # a round's own client count wins over the configured one (sampling: 2 of 10 here)
    sampled = [{**r, "clients": 2} for r in rows]
    cell = Cell("sl", "x", SLConfig.from_dict({"clients": 10, "fraction": 0.2, "engine": "inprocess"}))
    got = cell_result(cell, {"status": "completed"}, sampled, 0.95, link)
    per_client = 4e6 / (5e6 * GOODPUT) + 16e6 / (20e6 * GOODPUT) + 0.1
    assert got["s_to_target_link"] == pytest.approx(4.0 + 2 * per_client, abs=0.01)
    assert cell_result(cell, {"status": "completed"}, rows, 0.99, link)["s_to_target_link"] is None


def test_a_splitfed_stream_round_overlaps_compute_with_transfers() -> None:
    """SplitFed over the stream: the streamed part takes the longer of its compute and the link time
    (clients compute while others transfer); the round's other seconds stay (measured on lte links)."""
    row = {
        "round": 1,
        "wall_s": 20.0,
        "stream_s": 9.0,
        "uplink_bytes": 4_000_000,
        "downlink_bytes": 8_000_000,
        "messages": 4,
        "clients": 4,
    }
    slow = LinkProfile("slow", up_mbit=1.0, down_mbit=2.0)
    fast = LinkProfile("fast", up_mbit=100.0, down_mbit=100.0)
    link_slow = 8e6 / (1e6 * GOODPUT) + 16e6 / (2e6 * GOODPUT)  # per client: 1 MB up, 2 MB down
    assert predict_time_to_round([row], slow, 1, clients=4) == pytest.approx(11.0 + link_slow)
    assert predict_time_to_round([row], fast, 1, clients=4) == pytest.approx(20.0)  # compute (9 s) is longer
    # sequential clients take turns: nothing overlaps, the link time adds
    assert predict_time_to_round([row], slow, 1, clients=4, sequential=True) == pytest.approx(20.0 + 4 * link_slow)
