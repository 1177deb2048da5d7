"""A killed scheduler's cut requests: retryable within its window, lost outside it; its requests in
flight are the larger of its own count and the client's."""

from __future__ import annotations

import math

from sbs.bench.chaos.load import Deaths, Outcome

URL = "http://10.0.0.1:8000"


def _out(sent: float, end: float, url: str = URL, kind: str = "cut") -> Outcome:
    return Outcome(sent=sent, kind=kind, end=end, url=url)


def test_cuts_near_the_kill_are_retryable_others_lost() -> None:
    deaths = Deaths(at={URL: 100.0})
    near, late, elsewhere = _out(90.0, 100.2), _out(90.0, 110.0), _out(90.0, 100.2, "http://other")
    deaths.attribute([near, late, elsewhere])
    assert (near.kind, late.kind, elsewhere.kind) == ("retryable", "lost", "lost")
    assert near.detail == "cut (scheduler killed)"


def test_in_flight_is_the_larger_of_the_endpoints_count_and_the_clients() -> None:
    outcomes = [
        _out(99.0, 99.5, kind="completed"),  # done before the kill
        _out(99.5, 100.1),
        _out(99.99, 100.1),  # sent as the count was read: still on the wire
        _out(99.7, math.nan, kind="hung"),
        _out(100.05, 100.06, kind="rejected"),  # after the kill
        _out(99.5, 100.1, "http://other"),
    ]
    assert Deaths(at={URL: 100.0}, counted={URL: 2}).in_flight(outcomes) == 3
    assert Deaths(at={URL: 100.0}, counted={URL: 5}).in_flight(outcomes) == 5
    assert Deaths().in_flight(outcomes) == 0


def test_a_request_sent_before_the_killed_socket_closed_was_in_flight() -> None:
    # SIGKILL is sent at 100.0 but the process's listening socket closes at 100.03: a request sent at
    # 100.01 was accepted by the dying process and cut with it (CI: "21 <= 20").
    outcomes = [_out(99.5, 100.05), _out(100.01, 100.04), _out(100.05, 100.05, kind="lost")]
    assert Deaths(at={URL: 100.0}).in_flight(outcomes) == 1
    assert Deaths(at={URL: 100.0}, closed={URL: 100.03}).in_flight(outcomes) == 2
