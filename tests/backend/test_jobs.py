"""The queue and the device worker on their own (backend.jobs).

The engine here is a scripted stand-in, said plainly: these tests pin the queue's logic —
positions, bounds, cancel while queued or running, shutdown, a crash in one job — and need a
device that finishes exactly when the test says. Every end-to-end test (tests/backend/test_server*.py)
runs the real Engine with tiny models.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

import pytest

from backend.errors import JobCancelledError, JobError
from backend.jobs import DISCONNECTED, REQUESTED, SHUTDOWN, Job, JobQueue, QueueFull, Scheduler, ShuttingDown
from protocol import ErrorCode, JobParams, SubmitJob


@dataclass
class Output:
    images: tuple = ()
    seeds: tuple = (1,)
    timings: dict | None = None


class ScriptedEngine:
    """Runs a job by waiting for the test to release it (``release``), checking ``cancelled()`` while
    it waits, like a pipeline between steps. ``fail`` makes the next job raise."""

    def __init__(self) -> None:
        self.gates: dict[str, threading.Event] = {}
        self.ran: list[str] = []
        self.fail: BaseException | None = None

    def gate(self, job_id: str) -> threading.Event:
        return self.gates.setdefault(job_id, threading.Event())

    def run(self, prepared, progress):
        self.ran.append(prepared)
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        gate = self.gate(prepared)
        step = 0
        while not gate.wait(0.005):
            if progress.cancelled():
                raise JobCancelledError(step, 10)
            step += 1
        progress.preview(1, 1, 8, 8, b"jpeg")
        return Output()


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.changed = asyncio.Event()

    def _add(self, *event) -> None:
        self.events.append(event)
        self.changed.set()

    def job_started(self, job): self._add("started", job.job_id)
    def job_position(self, job, position): self._add("position", job.job_id, position)
    def job_preview(self, job, step, total, width, height, jpeg): self._add("preview", job.job_id, step)
    def job_finished(self, job, output): self._add("finished", job.job_id)
    def job_failed(self, job, code, message, log_id, details): self._add("failed", job.job_id, code, message, log_id)
    def job_cancelled(self, job, reason): self._add("cancelled", job.job_id, reason)

    async def wait_for(self, *event, timeout: float = 10.0) -> None:
        async def until():
            while not any(e[:len(event)] == event for e in self.events):
                self.changed.clear()
                await self.changed.wait()
        await asyncio.wait_for(until(), timeout)


def job(job_id: str) -> Job:
    return Job("c1", job_id, SubmitJob(job_id, "txt2img", JobParams()), prepared=job_id)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_queue_is_bounded_and_keeps_order():
    q = JobQueue(2)
    a, b, c = job("a"), job("b"), job("c")
    assert q.push(a) == 0 and q.push(b) == 1
    with pytest.raises(QueueFull) as full:
        q.push(c)
    assert (full.value.length, full.value.capacity) == (2, 2)
    assert q.remove(a) == 0 and q.remove(a) is None
    assert q.after(0) == [(b, 0)] and q.pop() is b and q.pop() is None


def test_positions_move_as_jobs_start_and_leave():
    async def scenario():
        engine, rec = ScriptedEngine(), Recorder()
        sched = Scheduler(engine, rec, capacity=3)
        sched.start()
        a, b, c, d = (job(x) for x in "abcd")
        assert sched.submit(a) == 0
        await rec.wait_for("started", "a")
        assert [sched.submit(j) for j in (b, c, d)] == [0, 1, 2]
        with pytest.raises(QueueFull):
            sched.submit(job("e"))
        sched.cancel(b)  # queued: ends at once, the ones behind it move up
        assert ("cancelled", "b", REQUESTED) in rec.events
        assert rec.events[-2:] == [("position", "c", 0), ("position", "d", 1)]
        engine.gate("a").set()
        await rec.wait_for("started", "c")
        assert rec.events[-1] == ("position", "d", 0)
        assert ("finished", "a") in rec.events and ("preview", "a", 1) in rec.events
        for x in "cd":
            engine.gate(x).set()
        await rec.wait_for("finished", "d")
        assert engine.ran == ["a", "c", "d"]  # b never ran
        await sched.close()
    run(scenario())


def test_cancel_running_job_stops_it_and_the_worker_moves_on():
    async def scenario():
        engine, rec = ScriptedEngine(), Recorder()
        sched = Scheduler(engine, rec, capacity=2)
        sched.start()
        a, b = job("a"), job("b")
        sched.submit(a)
        sched.submit(b)
        await rec.wait_for("started", "a")
        sched.cancel(a, DISCONNECTED)
        await rec.wait_for("cancelled", "a", DISCONNECTED)
        await rec.wait_for("started", "b")
        engine.gate("b").set()
        await rec.wait_for("finished", "b")
        assert not any(e[0] == "preview" and e[1] == "a" for e in rec.events)
        await sched.close()
    run(scenario())


def test_a_job_runs_and_ends_even_when_reporting_its_start_fails():
    """The worker gets the job after the loop has reported its start (job_started, positions): a
    failure there (a bug on this side) must not keep the job from the device."""
    class FailingStart(Recorder):
        def job_started(self, job):
            super().job_started(job)
            raise RuntimeError("reporting failed")

    async def scenario():
        engine, rec = ScriptedEngine(), FailingStart()
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)  # the callback's error
        sched = Scheduler(engine, rec, capacity=2)
        sched.start()
        sched.submit(job("a"))
        sched.submit(job("b"))
        engine.gate("a").set()
        engine.gate("b").set()
        await rec.wait_for("finished", "b")
        assert engine.ran == ["a", "b"] and ("finished", "a") in rec.events
        await sched.close()
    run(scenario())

def test_a_jobs_end_is_logged_after_the_loop_turn_that_queues_it(caplog):
    """The end's log line waits behind what reporting the end scheduled (the writer the end woke)."""
    order: list[str] = []

    class Writing(Recorder):
        def job_finished(self, job, output):
            super().job_finished(job, output)
            order.append("end queued")
            asyncio.get_running_loop().call_soon(order.append, "written")

    class Lines(logging.Handler):
        def emit(self, record):
            if "finished in" in record.getMessage():
                order.append("logged")

    async def scenario():
        engine, rec = ScriptedEngine(), Writing()
        sched = Scheduler(engine, rec, capacity=2)
        sched.start()
        sched.submit(job("a"))
        engine.gate("a").set()
        await rec.wait_for("finished", "a")
        await asyncio.sleep(0.05)
        await sched.close()

    handler = Lines()
    logger = logging.getLogger("easel.jobs")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        run(scenario())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert order == ["end queued", "written", "logged"]


def test_a_crash_fails_one_job_with_a_log_id_and_the_next_runs():
    async def scenario():
        engine, rec = ScriptedEngine(), Recorder()
        sched = Scheduler(engine, rec, capacity=2)
        sched.start()
        engine.fail = ZeroDivisionError("boom")
        sched.submit(job("a"))
        await rec.wait_for("failed", "a")
        _, _, code, message, log_id = next(e for e in rec.events if e[0] == "failed")
        assert code is ErrorCode.INTERNAL and log_id and log_id in message and "boom" not in message
        engine.fail = JobError(ErrorCode.OUT_OF_MEMORY, "smaller please")
        sched.submit(job("b"))
        await rec.wait_for("failed", "b", ErrorCode.OUT_OF_MEMORY, "smaller please")
        engine.fail = type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate 2 GiB")
        sched.submit(job("c"))
        await rec.wait_for("failed", "c", ErrorCode.OUT_OF_MEMORY)
        sched.submit(job("d"))
        engine.gate("d").set()
        await rec.wait_for("finished", "d")
        await sched.close()
    run(scenario())


def test_close_cancels_queued_and_running_jobs_and_refuses_new_ones():
    async def scenario():
        engine, rec = ScriptedEngine(), Recorder()
        sched = Scheduler(engine, rec, capacity=2)
        sched.start()
        sched.submit(job("a"))
        sched.submit(job("b"))
        await rec.wait_for("started", "a")
        await sched.close()
        assert ("cancelled", "a", SHUTDOWN) in rec.events and ("cancelled", "b", SHUTDOWN) in rec.events
        with pytest.raises(ShuttingDown):
            sched.submit(job("c"))
        assert "b" not in engine.ran  # a may have been stopped before the engine even began it
    run(scenario())


def test_close_with_drain_finishes_the_queue_first():
    async def scenario():
        engine, rec = ScriptedEngine(), Recorder()
        sched = Scheduler(engine, rec, capacity=2)
        sched.start()
        sched.submit(job("a"))
        sched.submit(job("b"))
        await rec.wait_for("started", "a")
        closing = asyncio.create_task(sched.close(drain=True))
        await asyncio.sleep(0.05)
        assert not closing.done()
        engine.gate("a").set()
        engine.gate("b").set()
        await closing
        assert ("finished", "a") in rec.events and ("finished", "b") in rec.events
    run(scenario())
