"""A client that never reads is paused, then dropped — never buffered past its share: the probe's
eight unread 64 MiB results took the server from 858 MB to 2,628 MB. The thresholds are lowered
here (monkeypatched module constants) so that a few tiny-model results exceed them.

Real server and engine (tiny models); the unread client is a real websocket client that stops
reading its socket (``max_queue=1``: the library pauses reading when one frame waits).
"""
from __future__ import annotations

import logging
import time

from websockets.sync.client import connect

import backend.server as server_module
from protocol import Hello, JobResult, decode, encode
from test_reconnect import ResumingClient
from test_server_harness import WAIT_S, txt2img

MiB = 1024 * 1024


def test_a_client_that_does_not_read_is_dropped_and_gets_its_results_when_it_comes_back(serve, monkeypatch, caplog):
    monkeypatch.setattr(server_module, "BACKLOG_HIGH", 1 * MiB)
    monkeypatch.setattr(server_module, "BACKLOG_LOW", 256 * 1024)
    monkeypatch.setattr(server_module, "BACKLOG_DROP", 1 * MiB, raising=False)
    caplog.set_level(logging.INFO, logger="easel")
    with serve(max_client_jobs=8) as server:
        ws = connect(server.url, compression=None, max_size=8 * MiB, open_timeout=WAIT_S, max_queue=1)
        ws.send(encode(Hello(1, "deaf", "1")))
        client_id = decode(ws.recv(WAIT_S)).client_id
        jobs = [f"big{i}" for i in range(8)]
        for job_id in jobs:  # 8 x 4 MiB of results, never read
            ws.send(encode(txt2img(job_id, width=512, height=512, batch_size=4, steps=1)))
        peak = 0
        deadline = time.monotonic() + WAIT_S
        while server.state()["connections"] and time.monotonic() < deadline:
            peak = max(peak, server.call(lambda: max((c.backlog for c in server.server.connections), default=0)))
            time.sleep(0.02)
        assert server.state()["connections"] == 0, "the unread client was never dropped"
        assert any("does not read" in r.getMessage() for r in caplog.records)
        # Paused at 1 MiB, dropped when the next end found more than that unread: at most one
        # job's results (4 MiB) more, never all eight.
        assert peak <= 1 * MiB + 5 * MiB, peak
        assert server.state()["clients"] == 1  # kept for the grace period, like any drop
        ws.close()
        with ResumingClient(server.url, client_id, resume=tuple(jobs)) as back:
            assert back.welcome.client_id == client_id
            assert isinstance(back.until(lambda e: isinstance(e, JobResult))[-1], JobResult)


def test_an_unread_client_is_never_buffered_past_its_share_of_the_budget(serve, caplog):
    """The unread bytes one client may hold are its share of the memory budget (the budget over the
    connected clients, shrinking as they join), not a fixed 64 MiB: with a 16 MiB budget and two
    clients, 8 MiB. Results that would go past it are not queued; the connection is dropped."""
    from soak import RawClient

    caplog.set_level(logging.INFO, logger="easel")
    with serve(max_client_jobs=8, memory_budget=16 * MiB) as server:
        with RawClient(server.url):
            ws = connect(server.url, compression=None, max_size=8 * MiB, open_timeout=WAIT_S, max_queue=1)
            ws.send(encode(Hello(1, "deaf", "1")))
            decode(ws.recv(WAIT_S))
            assert server.call(lambda: (server.server.client_share, server.server.unread_allowance())) == (8 * MiB, 8 * MiB)
            for n in range(8):  # 8 x 4 MiB of results, never read
                ws.send(encode(txt2img(f"big{n}", width=512, height=512, batch_size=4, steps=1)))
            peak = 0
            deadline = time.monotonic() + WAIT_S
            while server.state()["connections"] > 1 and time.monotonic() < deadline:
                peak = max(peak, server.call(lambda: max((c.backlog for c in server.server.connections), default=0)))
                time.sleep(0.02)
            assert server.state()["connections"] == 1, "the unread client was never dropped"
            assert any("does not read" in r.getMessage() for r in caplog.records)
            assert peak <= 8 * MiB + 256 * 1024, peak  # its share, and a few small frames (job_started, ...)
            ws.close()
