"""The Ray Serve deployment behind ``easel serve --cluster``: one replica owns one device and one
engine, and runs one job at a time on the in-process :class:`backend.jobs.Worker` — the same
worker thread, engine seam and error mapping as the embedded server.

A job travels as one streamed call, ``run(request)`` with the job's model id as Serve's
multiplexed model id (so Serve routes it to a replica that holds that model). It yields, in order:

    ("started", info)       the device is this job's now; info: replica, pid, loads, held, last_end
    ("preview", (step, total, width, height, jpeg))   zero or more, in step order
    ("finished", {images: [ImagePayload], seeds, timings, run_seconds})   or
    ("failed", {code, message, details})   or   ("cancelled", {step, total})   — exactly one, last

Cancelling the call (``DeploymentResponseGenerator.cancel()``) stops the engine at its next step;
the call ends only once the device is free, so Serve sends the replica its next job after that.
Input images come in as object-store references (put once per content id by the server, so an
image used by many jobs travels once); results come back in the last streamed item, which Ray also
keeps in its object store.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from dataclasses import replace
from typing import Any, Callable

from ray import serve

from ..errors import JobCancelledError, JobError
from ..jobs import Job, Worker, new_log_id
from .settings import ClusterSettings

log = logging.getLogger("easel.cluster")

_FAILED = "the server hit an unexpected error while loading the job's model; it keeps serving. Quote log id {log_id} when reporting it"


class _Outbox:
    """Stands in for the scheduler the :class:`Worker` reports to: routes its posts (on the
    replica's loop) to the stream of the job they belong to."""

    def __init__(self) -> None:
        self.streams: dict[Job, asyncio.Queue] = {}
        self.synced: deque[asyncio.Future] = deque()
        self.running = 0  # jobs given to the worker and not yet reported back

    def _preview(self, job: Job, step: int, total: int, width: int, height: int, jpeg: bytes) -> None:
        stream = self.streams.get(job)
        if stream is not None and not job.cancel.is_set():
            stream.put_nowait(("preview", (step, total, width, height, jpeg)))

    def _done(self, job: Job, outcome: Any) -> None:
        self.running -= 1
        stream = self.streams.get(job)
        if stream is not None:
            stream.put_nowait(("end", outcome))

    def _warmed(self) -> None:  # the worker ran a device task (see EaselReplica._on_device)
        waiter = self.synced.popleft()
        if not waiter.done():
            waiter.set_result(None)


class EaselReplica:
    """One device, one engine, one worker thread. Built by Serve on a worker node."""

    def __init__(self, config: Any) -> None:
        if config.threads:
            import torch

            torch.set_num_threads(config.threads)
        from ..engine import Engine

        settings: ClusterSettings = config.cluster
        self.engine = Engine(replace(config, model_cache_size=settings.models_per_replica))
        self.loads: dict[str, int] = {}
        self.last_end: dict[str, Any] | None = None
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._outbox = _Outbox()
        self._worker: Worker | None = None

    def _device(self) -> Worker:
        if self._worker is None:  # the worker posts to the loop that runs the replica's requests
            self._worker = Worker(self.engine, self._outbox, asyncio.get_running_loop())  # type: ignore[arg-type]
            self._worker.start()
        return self._worker

    async def _on_device(self, task: Callable[[], None]) -> None:
        """Run ``task`` on the worker thread, after whatever it is running now."""
        waiter = asyncio.get_running_loop().create_future()
        self._outbox.synced.append(waiter)
        self._device().give(task)
        await waiter

    async def load(self, model_id: str) -> str:
        """Serve's multiplexed loader (wrapped per deployment, see :func:`deployment`): loads
        ``model_id`` into the engine on the worker thread. The engine's model cache has the same
        size and the same least-recently-used order as Serve's, so the two agree on what is held."""
        failure: list[BaseException] = []

        def load() -> None:
            try:
                self.engine.models.get(model_id)
            except BaseException as exc:  # reported to the job below, the worker keeps going
                failure.append(exc)
        await self._on_device(load)
        if failure:
            raise failure[0]
        self.loads[model_id] = self.loads.get(model_id, 0) + 1
        log.info("replica %s (pid %d) loaded model %s (%d times so far)", self.replica, os.getpid(), model_id,
                 self.loads[model_id])
        return model_id

    def info(self) -> dict[str, Any]:
        return {"replica": self.replica, "pid": os.getpid(), "loads": dict(self.loads),
                "held": list(self.engine.models.loaded_ids()), "last_end": self.last_end}

    async def run(self, request: dict[str, Any]):
        """Run one job (see the module docstring for what it yields)."""
        model_id = serve.get_multiplexed_model_id()
        try:
            if model_id:
                await self.get_model(model_id)  # type: ignore[attr-defined]
        except JobError as exc:
            yield "failed", {"code": exc.code.value, "message": exc.message, "details": exc.details}
            return
        except Exception:
            log_id = new_log_id()
            log.error("replica %s: loading model %s failed [log %s]", self.replica, model_id, log_id, exc_info=True)
            yield "failed", {"code": "internal", "message": _FAILED.format(log_id=log_id), "details": {"log_id": log_id}}
            return
        if self._outbox.running:
            await self._on_device(lambda: None)  # a cancelled job before this one is still ending its step
        prepared = request["prepared"]
        images = dict(zip(prepared.images, await asyncio.gather(*prepared.images.values())))
        controls = dict(zip(prepared.control_images, await asyncio.gather(*prepared.control_images.values())))
        job = Job(request["client_id"], request["job_id"], request["submit"],
                  replace(prepared, images=images, control_images=controls))
        stream: asyncio.Queue = asyncio.Queue()
        self._outbox.streams[job] = stream
        outcome: Any = None
        try:
            yield "started", self.info()
            self._outbox.running += 1
            self._device().give(job)
            while True:
                kind, value = await stream.get()
                if kind == "end":
                    outcome = value
                    break
                yield kind, value
        finally:
            if outcome is None:  # the call was cancelled (or its caller went away): stop at the next step
                job.cancel.set()
                while outcome is None:
                    kind, value = await stream.get()
                    outcome = value if kind == "end" else None
            del self._outbox.streams[job]
            self._record(job, outcome)
        yield self._end(job, outcome)

    def _record(self, job: Job, outcome: Any) -> None:
        if isinstance(outcome, JobCancelledError):
            self.last_end = {"job": job.key, "end": "cancelled", "step": outcome.step, "total": outcome.total}
        elif isinstance(outcome, JobError):
            self.last_end = {"job": job.key, "end": "failed", "code": outcome.code.value}
        elif hasattr(outcome, "images"):
            self.last_end = {"job": job.key, "end": "finished"}
        else:
            self.last_end = {"job": job.key, "end": "cancelled", "step": 0, "total": 0}

    def _end(self, job: Job, outcome: Any) -> tuple[str, dict[str, Any]]:
        if isinstance(outcome, JobError):
            return "failed", {"code": outcome.code.value, "message": outcome.message, "details": outcome.details}
        if not hasattr(outcome, "images"):  # JobCancelledError, or cancelled before it started
            return "cancelled", {"step": getattr(outcome, "step", 0), "total": getattr(outcome, "total", 0)}
        # The images ride in the stream's last item: Ray keeps each streamed item in its object store
        # (shared memory between processes of a node) and the server reads it from there once.
        return "finished", {"images": list(outcome.images), "seeds": list(outcome.seeds),
                            "timings": dict(outcome.timings), "run_seconds": job.run_seconds}

    def __del__(self) -> None:
        if self._worker is not None:
            self._worker.stop()


def deployment(config: Any) -> Any:
    """The bound Serve application for ``config`` (a ``ServerConfig`` whose ``cluster`` is set)."""
    settings: ClusterSettings = config.cluster

    class Replica(EaselReplica):
        @serve.multiplexed(max_num_models_per_replica=settings.models_per_replica)
        async def get_model(self, model_id: str) -> str:
            return await self.load(model_id)

    Replica.__name__ = Replica.__qualname__ = "EaselReplica"
    options: dict[str, Any] = dict(
        name="EaselReplica",
        max_ongoing_requests=1,  # one device, one job: the rest wait in the server's queue or Serve's router
        ray_actor_options={"num_gpus": settings.gpus_per_replica, "num_cpus": settings.cpus_per_replica},
        graceful_shutdown_timeout_s=30,
    )
    if settings.autoscaling:
        options["autoscaling_config"] = {
            "min_replicas": settings.min_replicas, "max_replicas": settings.max_replicas,
            "target_ongoing_requests": settings.target_jobs_per_replica}
    else:
        options["num_replicas"] = settings.min_replicas
    return serve.deployment(**options)(Replica).bind(config)
