"""A slow-request flood told from honest clients waiting for a slow answer, connection by
connection, from the kernel's tcp_info as it changes between ticks (observe/behaviour.py
``_trickled`` and ``_slow``). The real processes are in tests/test_behaviour_network.py."""

from __future__ import annotations

from colab_guard.observe.behaviour import Behaviour, _slow
from colab_guard.observe.model import Socket
from colab_guard.observe.tcpinfo import TcpInfo

SOCK = Socket(protocol="tcp", local_ip="127.0.0.1", local_port=40000, remote_ip="10.0.0.9",
              remote_port=80, status="ESTABLISHED")
FLOODS = {("k", ("10.0.0.9", 80)): [(("k", 1), 7, SOCK)]}


def _slow_at_each_tick(ticks: list[tuple[float, int, int, int, int]]) -> list[bool]:
    """Whether connection 7 counts as a flood's at each tick, given there (time, bytes sent
    acknowledged, bytes received, ms since it last sent, ms since it last received)."""
    behaviour, found = Behaviour(), []
    for when, sent, received, since_sent, since_received in ticks:
        info = {7: TcpInfo(1, sent, received, 0, since_sent, since_received)}
        trickled = behaviour._trickled(FLOODS, info, when)
        found.append(_slow(SOCK, info[7], 7 in trickled))
    return found


def test_a_slowloris_trickling_a_header_line_every_few_seconds_is_a_floods():
    # connect and first headers at 0 s; a header line at 2 s and 4 s; nothing ever received
    ticks = [(1.0, 40, 0, 1000, 1000), (2.5, 48, 0, 500, 2500), (3.5, 48, 0, 1500, 3500),
             (4.5, 56, 0, 500, 4500), (5.5, 56, 0, 1500, 5500), (6.5, 56, 0, 2500, 6500)]
    assert _slow_at_each_tick(ticks) == [False, False, False, False, True, True]


def test_a_slowloris_over_tls_is_a_floods():
    # the handshake answered (4 KiB received at 0.01 s), then the partial request, then a
    # header line every 10 s
    ticks = [(1.0, 700, 4000, 980, 990), (11.2, 730, 4000, 200, 11190),
             (12.2, 730, 4000, 1200, 12190)]
    assert _slow_at_each_tick(ticks) == [False, True, True]


def test_a_connection_that_never_sends_is_a_floods_once_silent():
    ticks = [(1.0, 1, 0, 1000, 1000), (5.0, 1, 0, 5000, 5000), (6.0, 1, 0, 6000, 6000)]
    assert _slow_at_each_tick(ticks) == [False, True, True]


def test_a_request_sent_whole_and_waited_for_is_no_floods():
    # sent at 0.01 s, a model thinks 30 s: silent, never sent again
    ticks = [(t, 900, 0, t * 1000 - 10, t * 1000) for t in range(1, 31)]
    assert not any(_slow_at_each_tick(ticks))


def test_a_kept_alive_clients_next_request_after_an_answer_is_no_trickle():
    # answered at 9 s; the next request at 10.5 s; then silent again
    ticks = [(8.0, 900, 0, 7990, 8000), (9.5, 900, 300, 9490, 500),
             (11.0, 1800, 300, 500, 2000)]
    ticks += [(t, 1800, 300, (t - 10.5) * 1000, (t - 9) * 1000) for t in range(12, 25)]
    assert not any(_slow_at_each_tick(ticks))


def test_one_requests_segments_with_a_tick_between_them_are_no_trickle():
    # headers at 0.99 s, the tick at 1.0 s, the body at 1.01 s
    ticks = [(1.0, 200, 0, 10, 1000), (2.0, 900, 0, 990, 2000)]
    ticks += [(t, 900, 0, (t - 1.01) * 1000, t * 1000) for t in range(3, 12)]
    assert not any(_slow_at_each_tick(ticks))


def test_a_request_sent_a_while_after_connecting_is_no_trickle():
    # a pooled connection opened at 0 s, its request sent at 1.5 s (nothing sent before)
    ticks = [(1.0, 1, 0, 1000, 1000), (2.0, 900, 0, 500, 2000)]
    ticks += [(t, 900, 0, (t - 1.5) * 1000, t * 1000) for t in range(3, 12)]
    assert not any(_slow_at_each_tick(ticks))


def test_an_upload_the_server_has_not_answered_yet_is_no_trickle():
    # a large body sent over seconds, more than a trickle's bytes between two ticks
    ticks = [(float(t), 1 + t * 200_000, 0, 10, t * 1000) for t in range(1, 12)]
    assert not any(_slow_at_each_tick(ticks))


def test_an_answer_ends_a_trickle():
    ticks = [(1.0, 40, 0, 1000, 1000), (2.5, 48, 0, 500, 2500), (6.0, 56, 0, 500, 6000),
             (7.0, 56, 500, 1500, 100), (13.0, 56, 500, 7500, 6100)]
    assert _slow_at_each_tick(ticks) == [False, False, True, False, False]

