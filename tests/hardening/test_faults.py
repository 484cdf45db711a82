"""Faults inside one job, and clients that vanish mid-upload or mid-job: the job fails (or is
cancelled) with a typed event, nothing is left behind, and the worker and server keep serving.

Real server and engine on tiny models. Each fault is INJECTED, and each test says where: an
exception raised from the real UNet's forward inside the real diffusers pipeline, for one job.
"""
from __future__ import annotations

import logging
import re
import socket
import time
from typing import Any, Callable

import pytest

from protocol import ErrorCode, ImageChunk, ImageFormat, ImageInfo, ImagesWanted, JobCancelled, JobFailed, JobResult, JobStarted, OfferImages, StepPreview
from soak import RawClient, resources
from test_server_harness import WAIT_S, Client, rgba, txt2img


def _fault_in_unet(engine: Any, monkeypatch: pytest.MonkeyPatch, fault: Callable[[], BaseException]) -> None:
    """FAULT INJECTED: jobs whose prompt is ``boom`` raise ``fault()`` from the UNet's forward,
    inside the pipeline's denoising loop; every other job runs untouched."""
    model, _ = engine.models.get("tiny")
    real_forward = model.root.unet.forward
    real_run = engine.run
    armed = {"on": False}

    def forward(*args: Any, **kwargs: Any) -> Any:
        if armed["on"]:
            raise fault()
        return real_forward(*args, **kwargs)

    def run(prepared: Any, progress: Any) -> Any:
        armed["on"] = prepared.params.prompt == "boom"
        try:
            return real_run(prepared, progress)
        finally:
            armed["on"] = False

    monkeypatch.setattr(model.root.unet, "forward", forward)
    monkeypatch.setattr(engine, "run", run)


def _oom() -> BaseException:
    import torch

    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 8.00 GiB total capacity)")


@pytest.mark.parametrize("fault, code, words", [
    (lambda: RuntimeError("shape mismatch in attention"), ErrorCode.INTERNAL, "log id"),
    (_oom, ErrorCode.OUT_OF_MEMORY, "smaller size or batch"),
    (lambda: SystemExit(3), ErrorCode.INTERNAL, "log id"),
], ids=["exception", "cuda-oom", "system-exit"])
def test_a_crash_inside_one_job_fails_that_job_and_the_worker_keeps_serving(serve, engine, monkeypatch, caplog, fault, code, words):
    caplog.set_level(logging.INFO)
    _fault_in_unet(engine, monkeypatch, fault)
    with serve(allow_errors=True) as server, Client(server.url) as victim, Client(server.url) as other:
        other.submit(txt2img("queued-behind", steps=2))
        failed = victim.run(txt2img("bad", prompt="boom", steps=3))[-1]
        assert isinstance(failed, JobFailed) and failed.code is code, failed
        assert words in failed.message and "Traceback" not in failed.message
        if code is ErrorCode.INTERNAL:
            assert re.fullmatch(r"[0-9a-f]{8}", failed.log_id)
            assert any(failed.log_id in r.getMessage() and r.exc_info for r in caplog.records)
        assert isinstance(other.until_done("queued-behind")[-1], JobResult)
        assert isinstance(victim.run(txt2img("next", steps=2))[-1], JobResult)
        assert server.call(lambda: server.server.scheduler._worker._thread.is_alive())


def test_a_failure_while_reporting_a_result_still_ends_the_job(serve, monkeypatch, caplog):
    """FAULT INJECTED: keeping the result in the client's image store raises."""
    import backend.server

    caplog.set_level(logging.INFO)
    real_put = backend.server.ImageStore.put
    with serve(allow_errors=True) as server, Client(server.url) as client:
        monkeypatch.setattr(backend.server.ImageStore, "put", lambda self, image: (_ for _ in ()).throw(MemoryError("store")))
        failed = client.run(txt2img("lost-end", steps=1))[-1]
        assert isinstance(failed, JobFailed) and failed.code is ErrorCode.INTERNAL and failed.log_id
        monkeypatch.setattr(backend.server.ImageStore, "put", real_put)
        assert isinstance(client.run(txt2img("next", steps=1))[-1], JobResult)


def _upload_start(url: str, chunks_sent: int = 1) -> RawClient:
    """A client that offered a 3-chunk image and sent ``chunks_sent`` of its chunks."""
    client = RawClient(url)
    info = ImageInfo("cd" * 32, ImageFormat.RGBA8, 1024, 1024, 4 * 1024 * 1024)
    client.send(OfferImages((info,)))
    client.until(lambda m: isinstance(m, ImagesWanted))
    for index in range(chunks_sent):
        client.send(ImageChunk(info.id, info.format, 1024, 1024, info.size, index, 3, b"\x00" * (2 * 1024 * 1024)))
    return client


@pytest.mark.parametrize("grace", [0.0, 0.5])
def test_a_client_that_vanishes_mid_upload_leaves_nothing_behind(serve, grace):
    with serve(reconnect_grace_s=grace) as server:
        _upload_start(server.url).close()  # warm-up: the loop's thread pool starts its thread for chunks
        server.settle()
        before = resources(server)
        for n in range(5):
            client = _upload_start(server.url, chunks_sent=1 + n % 2)
            if n % 2:
                client.close()
            else:  # no close handshake: the socket just goes
                client.ws.socket.shutdown(socket.SHUT_RDWR)
                client.ws.recv_events_thread.join(WAIT_S)  # (the test client's own reader thread)
                client.ws.socket.close()
        state = server.settle()  # with a grace period: until it ran out
        after = resources(server)
        with Client(server.url) as client:
            assert isinstance(client.run(txt2img("after", steps=1))[-1], JobResult)
    assert state["clients"] == 0 and state["store_bytes"] == 0
    assert after["tasks"] == before["tasks"] and after["threads"] <= before["threads"] and after["fds"] <= before["fds"]


def test_a_client_that_vanishes_mid_job_has_its_job_cancelled_and_freed(serve, caplog):
    caplog.set_level(logging.INFO, logger="easel")
    image = rgba(256, 256, seed=3)
    with serve(reconnect_grace_s=0.5) as server:
        with Client(server.url) as warm:
            warm.run(txt2img("warm", steps=1))
        server.settle()
        before = resources(server)
        leaving = Client(server.url)
        job = __import__("soak").img2img_job("gone", image, steps=150)
        leaving.submit(job, [image])
        leaving.until(lambda e: isinstance(e, StepPreview))
        client_id = leaving.welcome.client_id
        leaving.ws.socket.shutdown(socket.SHUT_RDWR)  # vanishes: a clean close (1000) would end the session at once
        leaving.close()
        state = server.settle()  # the grace period ends, the job is cancelled, the client forgotten
        after = resources(server)
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"client {client_id} did not come back" in m for m in messages), messages
    assert any(f"job {client_id}/gone cancelled after" in m and "disconnected" in m for m in messages)
    assert not any(f"job {client_id}/gone finished" in m for m in messages)
    assert state["clients"] == 0 and state["store_bytes"] == 0
    assert after["tasks"] == before["tasks"] and after["fds"] <= before["fds"]
