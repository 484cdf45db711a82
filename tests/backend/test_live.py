"""Live jobs over the real websocket with the real engine on tiny models: latest wins on the server.

A client's live channel holds at most one running and one pending live job. A newer live job
replaces the pending one in its queue position (``job_cancelled`` ``superseded``, never started)
and cancels the running one within one denoising step (``superseded`` too). Non-live jobs, and
other clients' live jobs, are untouched. Nothing here asserts a duration: "within one step" is
counted in steps, by a wrapper that records, for every step the engine reports, whether the job's
cancel flag was already set.
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from protocol import ErrorCode, JobAccepted, JobCancelled, JobFailed, JobParams, JobStarted, StepPreview, SubmitJob

sys.path.insert(0, str(Path(__file__).parent))  # the harness module sits next to this file (any import mode)
from test_server_harness import (  # noqa: E402,F401 - engine, tiny_models are fixtures
    TERMINAL, Client, GatedEngine, ServerThread, engine, rgba, tiny_config, tiny_models, txt2img,
)


def ends_of(client: Client, job_ids: tuple[str, ...]) -> dict[str, Any]:
    """The terminal events of ``job_ids``, in whatever order they come."""
    ends = {e.job_id: e for e in client.log if isinstance(e, TERMINAL) and e.job_id in job_ids}

    def seen(event: Any) -> bool:
        if isinstance(event, TERMINAL) and event.job_id in job_ids:
            ends[event.job_id] = event
        return all(job_id in ends for job_id in job_ids)

    if not seen(None):
        client.until(seen)
    return ends


def live(job_id: str, image_id: str, **params: Any) -> SubmitJob:
    settings = dict(model="tiny", width=64, height=64, steps=2, seed=7, prompt="live", strength=1.0, live=True)
    settings.update(params)
    return SubmitJob(job_id, "img2img", JobParams(**settings), {"image": image_id})


class StepWatch:
    """The real engine, with every job's reported steps recorded as (step, cancel flag already set)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.steps: dict[str, list[tuple[int, bool]]] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def run(self, prepared: Any, progress: Any) -> Any:
        record = self.steps.setdefault(prepared.job_id, [])
        return self.engine.run(prepared, _WatchedProgress(progress, record))


class _WatchedProgress:
    def __init__(self, progress: Any, record: list[tuple[int, bool]]) -> None:
        self._progress = progress
        self._record = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._progress, name)

    def step(self, step: int, total: int, *args: Any) -> None:
        self._record.append((step, self._progress.cancelled()))
        self._progress.step(step, total, *args)


def test_a_newer_live_job_cancels_the_running_one_within_a_step(engine, tiny_models, tmp_path, caplog):
    caplog.set_level("INFO", logger="easel")
    watch = StepWatch(engine)
    first, second = rgba(64, 64, seed=1), rgba(64, 64, seed=2)
    with ServerThread(tiny_config(tiny_models, tmp_path), watch) as server, Client(server.url) as client:
        client.submit(live("old", first.id, steps=150), [first])  # long enough to still run when "new" comes
        client.until(lambda e: isinstance(e, StepPreview) and e.job_id == "old")
        client.submit(live("new", second.id), [second])
        cancelled = client.until_done("old")[-1]
        assert isinstance(cancelled, JobCancelled) and cancelled.reason == "superseded"
        assert client.until_done("new")[-1].finished.seeds == (7,)

    old = watch.steps["old"]
    assert 0 < len(old) < 150  # it ran, and did not run to its end
    # Steps finished after the cancel was asked for: at most the one that was running then.
    assert sum(flagged for _, flagged in old) <= 1
    assert [step for step, _ in watch.steps["new"]] == [1, 2]
    messages = [r.getMessage() for r in caplog.records]
    assert any("/old cancelled after" in m and "(superseded)" in m for m in messages), messages
    assert not any("/old finished" in m for m in messages)


def test_a_newer_live_job_replaces_the_pending_one_in_its_place(engine, tiny_models, tmp_path):
    # Deterministic queue test: job X of another client holds the device behind a gate (GatedEngine)
    # while the live jobs queue up; the pipelines themselves are real.
    gated = GatedEngine(engine)
    image = rgba(64, 64, seed=3)
    config = tiny_config(tiny_models, tmp_path, queue_size=3)
    with ServerThread(config, gated) as server, Client(server.url) as painter, Client(server.url) as other:
        other.submit(txt2img("x", prompt="X"))
        other.until(lambda e: isinstance(e, JobStarted) and e.job_id == "x")
        painter.submit(live("l1", image.id, prompt="L"), [image])
        assert painter.until(lambda e: isinstance(e, JobAccepted))[-1].queue_position == 0
        other.submit(txt2img("y", prompt="Y"))
        assert other.until(lambda e: isinstance(e, JobAccepted))[-1].queue_position == 1
        painter.submit(txt2img("n", prompt="N"))  # not live: never superseded
        assert painter.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "n")[-1].queue_position == 2

        # The queue is full (3 waiting), yet a live job that replaces a pending one is accepted...
        painter.submit(live("l2", image.id, prompt="L"), [image])
        events = painter.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "l2")
        assert [(type(e).__name__, e.job_id) for e in events if getattr(e, "job_id", "") in ("l1", "l2")] == [
            ("JobCancelled", "l1"), ("JobAccepted", "l2")]
        assert next(e for e in events if isinstance(e, JobCancelled)).reason == "superseded"
        assert events[-1].queue_position == 0  # ...in the place of the one it replaced, ahead of "y"
        painter.submit(live("l3", image.id, prompt="L"), [image])
        events = painter.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "l3")
        assert any(isinstance(e, JobCancelled) and e.job_id == "l2" and e.reason == "superseded" for e in events)
        assert events[-1].queue_position == 0
        # ...while a job that is not live still finds the queue full.
        painter.submit(txt2img("z", prompt="Z"))
        busy = painter.until_done("z")[-1]
        assert isinstance(busy, JobFailed) and busy.code is ErrorCode.BUSY

        for key in "XLYN":
            gated.gate(key).set()
        assert other.until_done("x")[-1].finished  # the other client's running job was not touched
        assert painter.until_done("l3")[-1].finished
        assert other.until_done("y")[-1].finished
        assert painter.until_done("n")[-1].finished
    assert gated.started == ["X", "L", "Y", "N"]  # l1 and l2 never reached the device


def test_live_channels_are_per_client_and_other_jobs_are_untouched(engine, tiny_models, tmp_path):
    gated = GatedEngine(engine)
    one_image, two_image = rgba(64, 64, seed=4), rgba(64, 64, seed=5)
    with ServerThread(tiny_config(tiny_models, tmp_path), gated) as server, Client(server.url) as one, \
            Client(server.url) as two:
        one.submit(live("one-a", one_image.id, prompt="A"), [one_image])
        one.until(lambda e: isinstance(e, JobStarted) and e.job_id == "one-a")
        two.submit(live("two-a", two_image.id, prompt="B"), [two_image])  # another client's live job
        two.until(lambda e: isinstance(e, JobAccepted))
        one.submit(txt2img("one-plain", prompt="P"))  # the running live job's own client, not live
        one.until(lambda e: isinstance(e, JobAccepted) and e.job_id == "one-plain")
        for key in "ABP":
            gated.gate(key).set()
        assert one.until_done("one-a")[-1].finished  # neither job superseded it
        assert two.until_done("two-a")[-1].finished
        assert one.until_done("one-plain")[-1].finished


def test_a_live_job_cancelled_while_gated_ends_superseded_and_the_newest_runs(engine, tiny_models, tmp_path):
    # The running live job waits behind its gate (GatedEngine honours cancellation while it waits):
    # a newer live job must end it as superseded, and only the newest reaches the device after it.
    gated = GatedEngine(engine)
    image = rgba(64, 64, seed=6)
    with ServerThread(tiny_config(tiny_models, tmp_path), gated) as server, Client(server.url) as client:
        client.submit(live("r", image.id, prompt="R"), [image])
        client.until(lambda e: isinstance(e, JobStarted) and e.job_id == "r")
        client.submit(live("s", image.id, prompt="S"), [image])
        client.submit(live("t", image.id, prompt="T"), [image])
        gated.gate("T").set()
        ends = ends_of(client, ("r", "s", "t"))
        assert isinstance(ends["r"], JobCancelled) and ends["r"].reason == "superseded"
        assert isinstance(ends["s"], JobCancelled) and ends["s"].reason == "superseded"
        assert ends["t"].finished
    # "s" may have reached the device between "r"'s end and "t"'s arrival (then "t" cancelled it
    # there, behind its closed gate); either way only "t" ran to its end.
    assert gated.started in (["R", "T"], ["R", "S", "T"])
