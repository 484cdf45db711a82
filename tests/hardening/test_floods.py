"""Floods — oversized frames, too many jobs, idle connections — while a well-behaved client (the
plugins' transport, connected before the flood like a running plugin) completes its jobs.

Real server and engine (tiny models) on loopback; the flood clients are real websocket clients.
The long-run numbers are in benchmarks/RESULTS.md ("Hardening", from tests/hardening/soak.py).
"""
from __future__ import annotations

import time

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from protocol import CLOSE_NO_HELLO, Hello, JobResult, Welcome, decode, encode
from soak import ClientLoop, run_floods
from test_server_harness import WAIT_S, Client, txt2img


def test_floods_get_typed_answers_and_the_good_client_still_completes(serve):
    with serve(queue_size=8, max_client_jobs=3, max_connections=8, hello_timeout_s=1.0, reconnect_grace_s=0.0) as server, \
            ClientLoop() as loop:
        stats = run_floods(server, loop, oversized=6, flood_clients=2, jobs_each=5, idle=16)
        server.settle()
    assert stats.failures == []
    assert stats.oversized_closed_1009 == 6
    # 2 clients x 5 jobs, 3 per client: 2 x 2 answered busy, by the per-client bound.
    assert stats.busy == 4 and stats.busy_codes == {"client": 4}
    # 16 idle connections from one address on a server of 8: that address may hold 2 connections
    # without hello (a quarter of 8), so each new one closes its oldest (1008) and the last two are
    # closed by the hello timeout (1008): none is refused, and the good client's slot is never at risk.
    assert stats.idle_closed == 16 and stats.refused_503 == 0
    assert stats.good_finished >= 3


def test_an_idle_connection_is_closed_after_the_hello_timeout_and_its_slot_freed(serve):
    with serve(max_connections=2, hello_timeout_s=0.5) as server:
        with Client(server.url) as plugin, Client(server.url) as other:
            try:  # the slots are taken by clients that said hello: a third is refused
                connect(server.url, compression=None, open_timeout=WAIT_S)
                raise AssertionError("a third connection was admitted")
            except InvalidStatus as refused:
                assert refused.response.status_code == 503 and b"max-connections" in refused.response.body
        with Client(server.url) as plugin:
            idle = connect(server.url, compression=None, open_timeout=WAIT_S)
            started = time.monotonic()
            try:
                idle.recv(WAIT_S)
                raise AssertionError("the idle connection got a frame")
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == CLOSE_NO_HELLO and "hello" in closed.rcvd.reason
            assert time.monotonic() - started < WAIT_S
            # Its slot is free again, and the plugin never noticed.
            deadline = time.monotonic() + WAIT_S
            while server.call(lambda: server.server.connection_count) > 1 and time.monotonic() < deadline:
                time.sleep(0.02)
            with connect(server.url, compression=None, open_timeout=WAIT_S) as again:
                again.send(encode(Hello(1, "again", "1")))
                assert isinstance(decode(again.recv(WAIT_S)), Welcome)
            assert isinstance(plugin.run(txt2img("ok", steps=1))[-1], JobResult)


def test_junk_before_hello_does_not_extend_the_hello_deadline(serve):
    with serve(hello_timeout_s=0.5) as server:
        with connect(server.url, compression=None, open_timeout=WAIT_S) as junk:
            deadline = time.monotonic() + WAIT_S
            try:
                while time.monotonic() < deadline:
                    junk.send(b"\xc1")  # answered with malformed_frame, but it is no hello
                    junk.recv(WAIT_S)
                    time.sleep(0.05)
                raise AssertionError("never closed")
            except ConnectionClosed as closed:
                assert closed.rcvd is not None and closed.rcvd.code == CLOSE_NO_HELLO


def test_pressure_bounded_worst_prompts_four_storing_clients_and_an_unread_client(serve, monkeypatch):
    """soak.py's pressure run, bounded for CI (the backlog thresholds lowered so that eight tiny-model
    results exceed them): every worst-prompt frame is refused after its parse, and the client that
    never reads is dropped. The figures (ping stalls, peak memory) are in benchmarks/RESULTS.md."""
    import backend.server as server_module
    from soak import run_pressure

    monkeypatch.setattr(server_module, "BACKLOG_HIGH", 1024 * 1024)
    monkeypatch.setattr(server_module, "BACKLOG_LOW", 256 * 1024)
    monkeypatch.setattr(server_module, "BACKLOG_DROP", 1024 * 1024)
    with serve(queue_size=64) as server, ClientLoop() as loop:
        stats = run_pressure(server, loop, worst_frames=5, pings=30, store_images=2, store_side=256, unread_jobs=8)
    assert stats.failures == []
    assert stats.worst_refused == 5 and stats.unread_dropped
    assert stats.four_client_bytes == 4 * 2 * 256 * 256 * 4
