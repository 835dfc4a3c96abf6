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
