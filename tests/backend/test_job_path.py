"""The server's per-job path (issue 20, fixed cost): which jobs are prepared on the event loop and
which on an I/O thread, and the guarantees either way — typed errors, ``job_accepted`` first, a
cancel sent right behind the submit (or while its prepare runs) ends the job as ``requested``.

A real server on loopback with the real Engine and tiny random models (backend.demo); the engine
is wrapped only to record the thread each ``prepare`` ran on, or to hold one ``prepare`` until the
test has sent its cancel. Waits have generous bounds; nothing here asserts a duration.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from protocol import (
    ErrorCode, JobAccepted, JobCancelled, JobFailed, JobParams, JobResult, JobStarted, LoraWeight, SubmitJob,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_server_harness import (  # noqa: E402,F401 - tiny_models is a fixture
    WAIT_S, Client, GatedEngine, ServerThread, make_engine, rgba, tiny_config, tiny_models, txt2img,
)


class WhereEngine:
    """The real engine; ``prepare`` records the name of the thread it ran on, by job id, and, for a
    job id in ``hold``, waits until the test opens that gate (``holding`` is set meanwhile)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.threads: dict[str, str] = {}
        self.hold: dict[str, threading.Event] = {}
        self.holding = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def prepare(self, submit: SubmitJob, images: Any) -> Any:
        self.threads[submit.job_id] = threading.current_thread().name
        gate = self.hold.get(submit.job_id)
        if gate is not None:
            self.holding.set()
            assert gate.wait(WAIT_S)
        return self.engine.prepare(submit, images)


def img2img(job_id: str, **params: Any) -> tuple[SubmitJob, Any]:
    image = rgba(64, 64)
    settings = dict(model="tiny", prompt="x", steps=2, width=64, height=64, seed=1)
    settings.update(params)
    return SubmitJob(job_id, "img2img", JobParams(**settings), {"image": image.id}), image


def test_a_job_with_nothing_to_read_is_prepared_on_the_loop_every_other_on_an_io_thread(tiny_models, tmp_path):
    where = WhereEngine(make_engine(tiny_config(tiny_models, tmp_path)))
    with ServerThread(tiny_config(tiny_models, tmp_path), where) as server, Client(server.url) as client:
        loop = server.call(lambda: threading.current_thread().name)
        assert isinstance(client.run(txt2img("first"))[-1], JobResult)  # the model's files are read: a thread
        assert isinstance(client.run(txt2img("quick"))[-1], JobResult)
        job, image = img2img("with-image")
        assert isinstance(client.run(job, [image])[-1], JobResult)
        assert isinstance(client.run(txt2img("long-prompt", prompt="a lighthouse " * 100))[-1], JobResult)
        refused = client.run(txt2img("unknown-lora", loras=(LoraWeight("no-such-lora", 1.0),)))[-1]
        assert isinstance(refused, JobFailed) and refused.code is ErrorCode.UNKNOWN_MODEL  # needed a rescan
        # Checked on the loop, refused with the same typed error as on a thread.
        bad = client.run(txt2img("bad-size", width=65))[-1]
        assert isinstance(bad, JobFailed) and bad.code is ErrorCode.INVALID_PARAMETER and "width" in bad.message
        bad_cfg = client.run(txt2img("bad-cfg", cfg_scale=-1.0))[-1]
        assert isinstance(bad_cfg, JobFailed) and bad_cfg.code is ErrorCode.INVALID_PARAMETER
    on_loop = {job_id for job_id, thread in where.threads.items() if thread == loop}
    assert on_loop == {"quick", "bad-size", "bad-cfg"}, where.threads
    assert all(where.threads[j].startswith("easel-io") for j in ("first", "with-image", "long-prompt", "unknown-lora"))


def _accepted_then_cancelled(events: list[Any], job_id: str) -> None:
    mine = [e for e in events if getattr(e, "job_id", None) == job_id]
    assert isinstance(mine[0], JobAccepted), mine
    assert isinstance(mine[-1], JobCancelled) and mine[-1].reason == "requested", mine
    assert not any(isinstance(e, JobResult) for e in mine)
    assert all(isinstance(e, JobStarted) for e in mine[1:-1]), mine


def test_a_cancel_right_behind_a_quick_submit_ends_it_after_job_accepted(tiny_models, tmp_path):
    gated = GatedEngine(make_engine(tiny_config(tiny_models, tmp_path)))  # runs wait for their gate
    with ServerThread(tiny_config(tiny_models, tmp_path), gated) as server, Client(server.url) as client:
        gated.gate("warm").set()
        assert isinstance(client.run(txt2img("warm", prompt="warm"))[-1], JobResult)  # now quick: on the loop
        assert gated.prepares_quickly(txt2img("held", prompt="held"))
        client.session.submit(txt2img("held", prompt="held"), ())
        client.session.cancel("held")
        client.flush()  # both frames at once
        _accepted_then_cancelled(client.until_done("held"), "held")
        gated.gate("after").set()
        assert isinstance(client.run(txt2img("after", prompt="after"))[-1], JobResult)


def test_a_cancel_sent_while_the_job_is_prepared_on_a_thread_ends_it_after_job_accepted(tiny_models, tmp_path):
    where = WhereEngine(make_engine(tiny_config(tiny_models, tmp_path)))
    with ServerThread(tiny_config(tiny_models, tmp_path), where) as server, Client(server.url) as client:
        job, image = img2img("mid-prepare", steps=150)
        where.hold["mid-prepare"] = gate = threading.Event()
        client.submit(job, [image])  # the offer; the server's images_wanted is read next, then the
        client.next_events()  # upload and the submit go out: the server prepares it on an I/O thread
        assert where.holding.wait(WAIT_S)
        client.cancel("mid-prepare")  # arrives while prepare runs
        gate.set()
        _accepted_then_cancelled(client.until_done("mid-prepare"), "mid-prepare")
        assert where.threads["mid-prepare"].startswith("easel-io")
        assert isinstance(client.run(txt2img("next"))[-1], JobResult)
