"""The plugin's connection (plugin_blender.connection) and job book against a real Easel server:
the backend's server on a loopback port with a tiny random depth model (5-channel UNet), and
the real ThreadedClient. This is the Blender plugin's network path without Blender; the
in-Blender test (test_in_blender.py) runs it from inside the host."""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from plugin_blender.clientkit.events import ConnectFailed, SubmitFailed, Submitted
from plugin_blender.clientkit.links import ReconnectPolicy, ThreadLink
from plugin_blender.depth import normalise_depth
from plugin_blender.jobs import Ended, Finished, JobBook, JobKind, Preview, Status
from plugin_blender.pixels import depth_to_depth32f, unit_to_grey8
from plugin_blender.request import ControlInput, GenerationRequest
from protocol import ImageFormat, ImagePayload, JobResult, Task
from protocol.transport import Connected, Disconnected, JobLost
from tests.blender.tcp_proxy import TcpProxy

WAIT_S = 120.0  # a bound so a hang fails; not a timing claim


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pump(connection: ThreadLink, book: JobBook, until, timeout: float = WAIT_S) -> list:
    """Poll the way Blender's timer does, until ``until(outcomes)`` holds."""
    outcomes: list = []
    deadline = time.monotonic() + timeout
    while not until(outcomes):
        assert time.monotonic() < deadline, f"timed out; book status: {book.status}"
        outcomes += book.handle(connection.poll())
        time.sleep(0.02)
    return outcomes


def depth_request(size: int = 64, **params) -> GenerationRequest:
    yy, xx = np.mgrid[0:size, 0:size]
    depth = 5.0 + xx / size * 5.0  # a wall receding to the right
    depth[: size // 4] = 1e10       # sky at the bottom rows (Blender order), to exercise the background
    payload = ImagePayload.build(ImageFormat.DEPTH32F, size, size, depth_to_depth32f(normalise_depth(depth)))
    values = dict(task=Task.DEPTH2IMG, width=size, height=size, prompt="a wall", seed=3, steps=2,
                  images={"depth": payload})
    return GenerationRequest(**{**values, **params})


def test_an_unreachable_server_fails_the_job_without_blocking_the_caller():
    connection = ThreadLink(f"ws://127.0.0.1:{free_port()}", client_name="blender", policy=ReconnectPolicy(open_timeout=5.0))
    book = JobBook()
    try:
        request = depth_request()
        job = book.open(JobKind.TEXTURE, request)
        started = time.monotonic()
        connection.submit(request.job(job.job_id), request.payloads())
        assert time.monotonic() - started < 1.0  # queued for the worker thread, not sent here
        ended = pump(connection, book, lambda out: any(isinstance(o, Ended) for o in out))
        assert "cannot connect to the Easel server" in ended[0].message
        assert not book.busy() and "cannot connect" in book.status
    finally:
        connection.close()


def test_a_malformed_url_is_reported():
    connection = ThreadLink("localhost:9797", client_name="blender", policy=ReconnectPolicy(open_timeout=2.0))
    try:
        connection.connect()
        deadline = time.monotonic() + WAIT_S
        events: list = []
        while not events:
            assert time.monotonic() < deadline
            events = connection.poll()
            time.sleep(0.02)
        assert isinstance(events[0], ConnectFailed) and "ws://" in events[0].reason
    finally:
        connection.close()


@pytest.fixture(scope="module")
def depth_server(tmp_path_factory):
    pytest.importorskip("torch")
    from backend.config import ModelEntry, ServerConfig
    from backend.demo import build_tiny_model
    from backend.engine import Engine
    from tests.backend.test_server_harness import ServerThread

    root = tmp_path_factory.mktemp("blender-models")
    model = build_tiny_model(root / "tiny-depth", "depth")
    config = ServerConfig(port=0, models=(ModelEntry("tiny-depth", str(model)),), device="cpu",
                          cache_dir=root / "cache", queue_size=4)
    with ServerThread(config, Engine(config)) as server:
        server.model_path = model
        yield server


def test_refresh_once_the_server_is_up_clears_the_cannot_connect_error(depth_server, tmp_path):
    """Issue 12, defect 2: the server is down and a job fails with "cannot connect" (the panel shows
    it in red); the server starts; Refresh connects, and the panel says so instead of the old error."""
    port = free_port()
    connection = ThreadLink(f"ws://127.0.0.1:{port}", client_name="blender", policy=ReconnectPolicy(open_timeout=5.0))
    book = JobBook()
    try:
        request = depth_request()
        job = book.open(JobKind.TEXTURE, request)
        connection.submit(request.job(job.job_id), request.payloads())
        pump(connection, book, lambda out: any(isinstance(o, Ended) for o in out))
        assert "cannot connect" in book.last_error and book.status == book.last_error
        with another_server(depth_server, tmp_path, port):
            connection.connect()  # the panel's Refresh
            pump_events(connection, book, lambda events: any(isinstance(e, Connected) for e in events))
            assert book.last_error == "" and book.status.startswith("connected to easel"), book.status
            connection.connect()  # Refresh while connected: the state is delivered again, still no error
            pump_events(connection, book, lambda events: any(isinstance(e, Connected) for e in events))
            assert book.status.startswith("connected to easel")
    finally:
        connection.close()


def test_depth2img_round_trip_with_previews(depth_server):
    connection = ThreadLink(depth_server.url, client_name="blender-test")
    book = JobBook()
    try:
        request = depth_request(model="tiny-depth")
        job = book.open(JobKind.TEXTURE, request, {"objects": ["Cube"]})
        connection.submit(request.job(job.job_id), request.payloads())
        outcomes = pump(connection, book, lambda out: any(isinstance(o, Finished | Ended) for o in out))
        finished = [o for o in outcomes if isinstance(o, Finished)]
        assert finished, [getattr(o, "message", o) for o in outcomes]
        result = finished[0].images[0]
        assert (result.format, result.width, result.height) == (ImageFormat.RGBA8, 64, 64)
        assert finished[0].seed == 3 and finished[0].job.context == {"objects": ["Cube"]}
        assert any(isinstance(o, Preview) and o.jpeg[:3] == b"\xff\xd8\xff" for o in outcomes)
        assert book.connection.startswith("connected to")
        assert [m.id for m in book.models] == ["tiny-depth"]
    finally:
        connection.close()


def test_a_bad_parameter_comes_back_as_the_servers_sentence(depth_server):
    connection = ThreadLink(depth_server.url, client_name="blender")
    book = JobBook()
    try:
        request = depth_request(model="tiny-depth", cfg_scale=500.0)
        job = book.open(JobKind.TEXTURE, request)
        connection.submit(request.job(job.job_id), request.payloads())
        ended = pump(connection, book, lambda out: any(isinstance(o, Ended) for o in out))
        assert "cfg_scale" in ended[-1].message and not ended[-1].cancelled
    finally:
        connection.close()


def test_cancel_reaches_the_server(depth_server):
    connection = ThreadLink(depth_server.url, client_name="blender")
    book = JobBook()
    try:
        request = depth_request(model="tiny-depth", steps=50)
        job = book.open(JobKind.TEXTURE, request)
        connection.submit(request.job(job.job_id), request.payloads())
        pump(connection, book, lambda out: job.phase in ("queued", "running"))
        connection.cancel(job.job_id)
        book.cancel(job.job_id)
        # The server answers job_cancelled (or finished first, if it was that quick); the book
        # already ended the job and ignores either. The connection stays usable.
        again = depth_request(model="tiny-depth")
        second = book.open(JobKind.TEXTURE, again)
        connection.submit(again.job(second.job_id), again.payloads())
        outcomes = pump(connection, book, lambda out: any(isinstance(o, Finished | Ended) for o in out))
        assert [o.job.job_id for o in outcomes if isinstance(o, Finished | Ended)] == [second.job_id]
    finally:
        connection.close()


def test_submits_after_close_are_refused():
    connection = ThreadLink("ws://127.0.0.1:1", client_name="blender")
    connection.close()
    connection.close()
    with pytest.raises(RuntimeError, match="closed"):
        connection.connect()
    assert not [e for e in connection.poll() if isinstance(e, SubmitFailed)]


# -- ControlNet: the ControlNet is picked from the server's own list when the job is sent


@pytest.fixture(scope="module")
def control_server(tmp_path_factory):
    """A tiny base model and a tiny ControlNet the server lists as a depth one."""
    pytest.importorskip("torch")
    from backend.config import ModelEntry, ServerConfig
    from backend.demo import build_tiny_controlnet, build_tiny_model
    from backend.engine import Engine
    from tests.backend.test_server_harness import ServerThread

    root = tmp_path_factory.mktemp("blender-control-models")
    base = build_tiny_model(root / "tiny", "base")
    net = build_tiny_controlnet(root / "tiny-cn", base)
    config = ServerConfig(port=0, models=(ModelEntry("tiny", str(base)),
                                          ModelEntry("tiny-depth-cn", str(net), kind="controlnet", control_type="depth")),
                          device="cpu", cache_dir=root / "cache", queue_size=4)
    with ServerThread(config, Engine(config)) as server:
        yield server


def controlnet_request(size: int = 64) -> GenerationRequest:
    depth = normalise_depth(5.0 + np.mgrid[0:size, 0:size][1] / size * 5.0)
    control = ControlInput("depth", ImagePayload.build(ImageFormat.GREY8, size, size, unit_to_grey8(depth)), weight=0.7)
    return GenerationRequest(task=Task.TXT2IMG, width=size, height=size, prompt="a wall", seed=4, steps=2,
                             controls=(control,))


def test_a_controlnet_depth_job_picks_the_servers_depth_controlnet_when_sent(control_server):
    connection = ThreadLink(control_server.url, client_name="blender")
    book = JobBook()
    try:
        request = controlnet_request()  # no ControlNet named: the book knows no models yet
        job = book.open(JobKind.TEXTURE, request)
        connection.submit_built(job.job_id, lambda welcome: (
            lambda resolved: (resolved.job(job.job_id), resolved.payloads()))(
                request.resolved(welcome.capabilities.models, welcome.capabilities.preprocessors)))
        outcomes = pump(connection, book, lambda out: any(isinstance(o, Finished | Ended) for o in out))
        finished = [o for o in outcomes if isinstance(o, Finished)]
        assert finished, [getattr(o, "message", o) for o in outcomes]
        sent = book.entry(job.job_id).job.sent
        assert sent.task == "txt2img" and sent.params.controls[0].model == "tiny-depth-cn"
        assert sent.params.controls[0].image == request.controls[0].image.id and sent.params.controls[0].weight == 0.7
        assert (finished[0].images[0].width, finished[0].images[0].height) == (64, 64)
    finally:
        connection.close()


def test_a_request_that_does_not_fit_the_server_fails_with_its_sentence(depth_server):
    connection = ThreadLink(depth_server.url, client_name="blender")  # a server with no ControlNet at all
    book = JobBook()
    try:
        request = controlnet_request()
        job = book.open(JobKind.TEXTURE, request)
        connection.submit_built(job.job_id, lambda welcome: (
            request.resolved(welcome.capabilities.models).job(job.job_id), []))
        ended = pump(connection, book, lambda out: any(isinstance(o, Ended) for o in out))
        assert "no model that runs txt2img" in ended[0].message  # the tiny depth model runs depth2img only
        assert book.entry(job.job_id).status is Status.FAILED
    finally:
        connection.close()


# -- drops: a job running when the connection drops is resumed, or reported lost


def another_server(depth_server, tmp_path, port: int = 0):
    """A second server on the depth model (a restarted one: it never heard of the client or its jobs)."""
    from backend.config import ModelEntry, ServerConfig
    from backend.engine import Engine
    from tests.backend.test_server_harness import ServerThread

    config = ServerConfig(port=port, models=(ModelEntry("tiny-depth", str(depth_server.model_path)),), device="cpu",
                          cache_dir=tmp_path / "cache", queue_size=4)
    return ServerThread(config, Engine(config))


def run_long_job(connection: ThreadLink, book: JobBook):
    """A 150-step job, sent; returns once it runs."""
    request = depth_request(model="tiny-depth", steps=150)
    job = book.open(JobKind.TEXTURE, request)
    connection.submit(request.job(job.job_id), request.payloads())
    pump_events(connection, book, lambda events: job.phase == "running")
    return job


def pump_events(connection: ThreadLink, book: JobBook, until, timeout: float = WAIT_S) -> list:
    """Like :func:`pump`, but returns the transport's events (to see drops and reconnects)."""
    events: list = []
    deadline = time.monotonic() + timeout
    while not until(events):
        assert time.monotonic() < deadline, f"timed out; book status: {book.status}"
        batch = connection.poll()
        book.handle(batch)
        events += batch
        time.sleep(0.02)
    return events


def test_a_job_running_when_the_connection_drops_is_resumed_and_its_result_lands(depth_server):
    proxy = TcpProxy(depth_server.port)
    connection = ThreadLink(f"ws://127.0.0.1:{proxy.port}", client_name="blender")
    book = JobBook()
    try:
        request = depth_request(model="tiny-depth", steps=40)
        job = book.open(JobKind.TEXTURE, request, {"objects": ["Cube"]})
        connection.submit(request.job(job.job_id), request.payloads())
        before = pump_events(connection, book, lambda events: any(isinstance(e, Submitted) for e in events)
                             and job.phase == "running")
        first_id = next(e.welcome.client_id for e in before if isinstance(e, Connected))
        assert proxy.cut() == 1
        events = pump_events(connection, book, lambda events: any(isinstance(e, JobResult | JobLost) for e in events))
        drop = next(i for i, e in enumerate(events) if isinstance(e, Disconnected))
        assert events[drop].will_retry
        back = next(e for e in events[drop:] if isinstance(e, Connected))
        assert back.welcome.client_id == first_id  # the same client: the server kept it and its job
        assert not [e for e in events if isinstance(e, JobLost)]
        entry = book.entry(job.job_id)
        assert entry.status is Status.RECEIVED and entry.job.context == {"objects": ["Cube"]}
        assert (entry.images[0].width, entry.seed) == (64, 3) and proxy.accepted == 2
    finally:
        connection.close()
        proxy.close()


def test_a_job_the_server_no_longer_has_after_a_reconnect_is_marked_lost(depth_server, tmp_path):
    # A second server stands in for a restarted one: it has never heard of the client or its job.
    with another_server(depth_server, tmp_path) as restarted:
        proxy = TcpProxy(depth_server.port)
        connection = ThreadLink(f"ws://127.0.0.1:{proxy.port}", client_name="blender")
        book = JobBook()
        try:
            job = run_long_job(connection, book)
            proxy.retarget(restarted.port)
            proxy.cut()
            events = pump_events(connection, book, lambda events: any(isinstance(e, JobLost | JobResult) for e in events))
            assert [e.job_id for e in events if isinstance(e, JobLost)] == [job.job_id]
            entry = book.entry(job.job_id)
            assert entry.status is Status.LOST and "run it again" in entry.message and not book.busy()
            assert "run it again" in book.status
        finally:
            connection.close()
            proxy.close()


def test_refresh_while_the_server_is_down_keeps_the_job_and_a_restart_ends_it_as_lost(depth_server, tmp_path):
    """Issue 12, defect 3: the server dies mid-job (the proxy now leads nowhere, as after a
    SIGKILL), the user presses Refresh while it is down, and the server comes back without the
    job. Refresh must not give up the reconnecting client (that ended the job as "cannot connect",
    or left it unanswered); once the server is back the job ends as lost, as in Krita."""
    proxy = TcpProxy(depth_server.port)
    connection = ThreadLink(f"ws://127.0.0.1:{proxy.port}", client_name="blender",
                            policy=ReconnectPolicy(open_timeout=1.0), open_jobs=lambda: book.sent_jobs())
    book = JobBook()
    try:
        job = run_long_job(connection, book)
        proxy.retarget(free_port())  # the server is gone: every reconnect is refused
        proxy.cut()
        pump_events(connection, book, lambda events: book.reconnecting)
        connection.connect()  # Refresh, while it is down
        deadline = time.monotonic() + 3.0  # three of Refresh's open timeouts
        while time.monotonic() < deadline:
            assert book.handle(connection.poll()) == [], book.status
            time.sleep(0.05)
        assert job.job_id in book.jobs and book.reconnecting
        with another_server(depth_server, tmp_path) as restarted:  # back, without the job
            proxy.retarget(restarted.port)
            outcomes = pump(connection, book, lambda out: any(isinstance(o, Ended | Finished) for o in out))
        assert [(type(o), o.lost) for o in outcomes if isinstance(o, Ended)] == [(Ended, True)]
        assert book.entry(job.job_id).status is Status.LOST and "no longer had this job" in book.status
    finally:
        connection.close()
        proxy.close()
