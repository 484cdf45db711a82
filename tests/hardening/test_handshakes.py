"""Handshakes: connections that never say hello cannot take the slots of a client that does (at
most a share of them per address; a new one closes that address's oldest), and wrong tokens are
slowed down (an address's hellos wait longer after each failure) and logged in summary.

Real server and engine (tiny models) on loopback, real websocket clients.
"""
from __future__ import annotations

import logging
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import backend.server as server_module
from protocol import CLOSE_NO_HELLO, ErrorCode, Hello, JobResult, Refused, Welcome, decode, encode
from test_server_harness import WAIT_S, Client, txt2img


def _idle(url: str):
    return connect(url, compression=None, open_timeout=WAIT_S)


def test_idle_handshakes_cannot_lock_out_a_client_with_the_token(serve):
    """The probe: connections that never send hello took every slot, and the client with the
    right token got HTTP 503 on 12 of 12 tries. Now each address holds at most its share of them."""
    with serve(token="right", max_connections=8, hello_timeout_s=60) as server:
        share = server.server.max_pending_per_address
        idle = [_idle(server.url) for _ in range(20)]
        try:
            for _ in range(3):
                with Client(server.url, token="right") as client:
                    assert client.welcome.client_id
                    assert isinstance(client.run(txt2img("ok", steps=1))[-1], JobResult)
            assert server.call(lambda: len(server.server._pending)) <= share
            closed = 0
            for ws in idle[:-share]:  # the oldest were closed, with a reason that says why
                try:
                    ws.recv(WAIT_S)
                except ConnectionClosed as exc:
                    assert exc.rcvd.code == CLOSE_NO_HELLO and "hello" in exc.rcvd.reason
                    closed += 1
            assert closed == len(idle) - share
        finally:
            for ws in idle:
                ws.close()


def _hello(url: str, token: str):
    with connect(url, compression=None, open_timeout=WAIT_S) as ws:
        ws.send(encode(Hello(1, "guess", "1", token)))
        return decode(ws.recv(WAIT_S))


def test_wrong_tokens_are_slowed_down_and_logged_in_summary(serve, monkeypatch, caplog):
    monkeypatch.setattr(server_module, "AUTH_DELAY_S", 0.05)
    monkeypatch.setattr(server_module, "AUTH_DELAY_MAX_S", 0.2)
    caplog.set_level(logging.INFO, logger="easel")
    with serve(token="right") as server:
        started = time.monotonic()
        answers = [_hello(server.url, f"wrong-{i}") for i in range(10)]
        took = time.monotonic() - started
        assert all(isinstance(a, Refused) and a.code is ErrorCode.UNAUTHORIZED for a in answers)
        # The 2nd to 10th hello waited 0.05 s doubled per earlier failure (at most AUTH_DELAY_MAX_S):
        # a lower bound the server's sleeps guarantee, not a timing claim.
        assert took >= sum(min(server_module.AUTH_DELAY_MAX_S, 0.05 * 2 ** (n - 1)) for n in range(1, 10))
        # The right token still gets in (after the same wait).
        assert isinstance(_hello(server.url, "right"), Welcome)
    lines = [r.getMessage() for r in caplog.records if "token is missing or wrong" in r.getMessage()]
    assert len(lines) == 2  # the 1st and the 10th failure, not one line each
    assert "10 such refusals" in lines[-1] and "right" not in " ".join(lines)
