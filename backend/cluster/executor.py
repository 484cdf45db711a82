"""The server's side of ``easel serve --cluster``: :class:`Cluster` connects to Ray and deploys
the replicas; :class:`ClusterScheduler` is the :class:`backend.jobs.Scheduler` that hands jobs to
them instead of to an in-process worker.

The websocket server is unchanged: it still prepares each job with its own engine (checks only, no
model is loaded in this process) and talks to the scheduler through ``submit``/``cancel``/``close``
and the :class:`~backend.jobs.JobListener` events. The queue stays here, so positions are true:
at most ``max_replicas`` jobs are out at the cluster at once; a job sent but not yet started on a
replica counts ahead of every queued job. Each job sent is one streamed Serve call (see
:mod:`backend.cluster.replica`) whose items become ``job_started``, ``job_preview`` and the end.

Failures: a replica that dies before the job started on it → the job is sent once more; after it
started → the job fails with ``internal`` (details ``reason: worker_lost``) and the others go on.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any

from protocol import ErrorCode
from protocol.images import ImagePayload

from ..errors import JobCancelledError as JobCancelled, JobError
from ..jobs import SHUTDOWN, Job, JobListener, Scheduler, new_log_id
from .settings import ClusterSettings

log = logging.getLogger("easel.cluster")

#: Image blobs kept in the object store for reuse by later jobs (uploads reused across jobs).
BLOB_CACHE = 256

_LOST = ("the GPU worker running this job stopped (its process died); the server keeps serving on the others. "
         "Submit the job again. Quote log id {log_id} when reporting it")


class Cluster:
    """A Ray connection and the deployed Easel application. ``Cluster.start(config)`` connects
    (``address`` ``auto``: a local Ray instance) and deploys; :meth:`shutdown` removes the app and,
    if this process started Ray, stops it."""

    def __init__(self, config: Any, handle: Any, started_ray: bool) -> None:
        self.config = config
        self.settings: ClusterSettings = config.cluster
        self.handle = handle
        self.started_ray = started_ray

    @classmethod
    def start(cls, config: Any, *, ray_init: dict[str, Any] | None = None) -> "Cluster":
        settings: ClusterSettings = config.cluster
        import ray
        from ray import serve

        from .replica import deployment

        started = not ray.is_initialized()
        if started:
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            options: dict[str, Any] = dict(logging_level=logging.WARNING, include_dashboard=False,
                                           log_to_driver=False, configure_logging=False,
                                           runtime_env={"env_vars": {"PYTHONPATH": root}})
            if settings.address != "auto":
                options["address"] = settings.address
            options.update(ray_init or {})
            ray.init(**options)
        handle = serve.run(deployment(config), name=settings.app_name, route_prefix=None)
        log.info("cluster: Ray Serve app %r is up (%s replicas, %g GPUs and %g CPUs each, %d models each)",
                 settings.app_name, settings.min_replicas if not settings.autoscaling
                 else f"{settings.min_replicas}-{settings.max_replicas}",
                 settings.gpus_per_replica, settings.cpus_per_replica, settings.models_per_replica)
        return cls(config, handle, started)

    def shutdown(self) -> None:
        import ray
        from ray import serve

        try:
            serve.delete(self.settings.app_name)
            serve.shutdown()
        finally:
            if self.started_ray:
                ray.shutdown()


class Blobs:
    """Images in Ray's object store by content id: each is put once and passed by reference to
    every job that uses it. Bounded, least recently used dropped first (Ray frees a blob once no
    job holds its reference)."""

    def __init__(self, capacity: int = BLOB_CACHE) -> None:
        self.capacity = capacity
        self._refs: OrderedDict[str, Any] = OrderedDict()
        self.puts = 0

    def ref(self, image: ImagePayload) -> Any:
        import ray

        ref = self._refs.get(image.id)
        if ref is None:
            ref = self._refs[image.id] = ray.put(image)
            self.puts += 1
            while len(self._refs) > self.capacity:
                self._refs.popitem(last=False)
        else:
            self._refs.move_to_end(image.id)
        return ref


class _Out:
    """A job out at the cluster: its call, and whether a replica has started it."""

    __slots__ = ("call", "started", "task", "tries")

    def __init__(self) -> None:
        self.call: Any = None
        self.started = False
        self.task: asyncio.Task | None = None
        self.tries = 0


class ClusterScheduler(Scheduler):
    """A :class:`~backend.jobs.Scheduler` whose device is a Ray Serve deployment: up to
    ``max_replicas`` jobs run at once, one per replica. Same contract as the base class."""

    def __init__(self, engine: Any, listener: JobListener, *, capacity: int, cluster: Cluster) -> None:
        super().__init__(engine, listener, capacity=capacity)
        self.cluster = cluster
        self.slots = cluster.settings.max_replicas
        self.blobs = Blobs()
        self.handle: Any = None
        self.out: dict[Job, _Out] = {}
        #: What each replica reported when it last started a job: pid, model loads, models held.
        self.replicas: dict[str, dict[str, Any]] = {}
        #: (client id, job id, replica) of recent jobs, oldest first.
        self.placements: deque[tuple[str, str, str]] = deque(maxlen=1024)

    def start(self, warm_up: Any = None) -> None:
        """Nothing to start here: the replicas load their models with their first jobs (``warm_up``
        is unused)."""
        self.handle = self.cluster.handle

    @property
    def waiting_at_cluster(self) -> int:
        """Jobs sent to the cluster that no replica has started yet: they run before any queued job."""
        return sum(1 for out in self.out.values() if not out.started)

    def submit(self, job: Job, *, replacing: Job | None = None) -> int:
        return super().submit(job, replacing=replacing) + self.waiting_at_cluster

    def _announce_positions(self, start: int) -> None:
        ahead = self.waiting_at_cluster
        for waiting, position in self.queue.after(start):
            self.listener.job_position(waiting, ahead + position)

    def cancel(self, job: Job, reason: str = "requested") -> None:
        super().cancel(job, reason)
        out = self.out.get(job)
        if out is not None and out.call is not None and job.cancel.is_set():
            out.call.cancel()  # the replica stops at its next step; the call then ends

    def _pump(self) -> None:
        while len(self.out) < self.slots:
            job = self.queue.pop()
            if job is None:
                break
            job.state = "running"
            job.started_at = time.perf_counter()
            out = self.out[job] = _Out()
            out.task = asyncio.get_running_loop().create_task(self._drive(job, out), name=f"easel-cluster-{job.key}")
        self._check_idle()

    def _check_idle(self) -> None:
        if not self.out and not self.queue:
            self._idle.set()

    def _request(self, job: Job) -> dict[str, Any]:
        prepared = job.prepared
        return {"client_id": job.client_id, "job_id": job.job_id, "submit": job.submit,
                "prepared": replace(prepared, images={k: self.blobs.ref(v) for k, v in prepared.images.items()},
                                    control_images={k: self.blobs.ref(v) for k, v in prepared.control_images.items()})}

    async def _drive(self, job: Job, out: _Out) -> None:
        """Send ``job`` and turn its stream into listener events; ends it exactly once."""
        from ray.exceptions import RayError, TaskCancelledError
        from ray.serve.exceptions import RequestCancelledError

        outcome: Any = None
        try:
            request = self._request(job)
            while outcome is None:
                out.tries += 1
                out.call = self.handle.options(
                    stream=True, method_name="run", multiplexed_model_id=job.prepared.model).remote(request)
                if job.cancel.is_set():
                    out.call.cancel()
                try:
                    async for kind, value in out.call:
                        if kind == "started":
                            self._started(job, out, value)
                        elif kind == "preview":
                            self._preview(job, *value)
                        else:
                            outcome = await self._outcome(job, kind, value)
                    if outcome is None:
                        raise RuntimeError("the replica's stream ended without the job's end")
                except (RequestCancelledError, TaskCancelledError, asyncio.CancelledError):
                    if not job.cancel.is_set():
                        raise
                    outcome = JobCancelled()
                except RayError as exc:
                    if job.cancel.is_set():
                        outcome = JobCancelled()
                    elif not out.started and out.tries < 2:
                        log.warning("job %s: its replica went away before starting it (%s); sending it again",
                                    job.key, type(exc).__name__)
                    else:
                        log_id = new_log_id()
                        log.error("job %s: its replica died while running it [log %s]: %s", job.key, log_id, exc)
                        outcome = JobError(ErrorCode.INTERNAL, _LOST.format(log_id=log_id),
                                           {"log_id": log_id, "reason": "worker_lost"})
        except Exception:
            log_id = new_log_id()
            log.error("job %s: the cluster call failed [log %s]", job.key, log_id, exc_info=True)
            outcome = JobError(ErrorCode.INTERNAL, "the server hit an unexpected error while running the job on the "
                                                   f"cluster; it keeps serving. Quote log id {log_id} when reporting it",
                               {"log_id": log_id})
        finally:
            del self.out[job]
            self._done(job, outcome if outcome is not None else JobCancelled())

    def _started(self, job: Job, out: _Out, info: dict[str, Any]) -> None:
        out.started = True
        replica = str(info.get("replica", "?"))
        self.replicas[replica] = info
        self.placements.append((job.client_id, job.job_id, replica))
        log.info("job %s started on replica %s (pid %s; models held %s)", job.key, replica, info.get("pid"),
                 ",".join(info.get("held", ())) or "none")
        job.started_at = time.perf_counter()
        self.listener.job_started(job)
        self._announce_positions(0)

    async def _outcome(self, job: Job, kind: str, value: dict[str, Any]) -> Any:
        if kind == "finished":
            from ..engine import JobOutput

            images = list(value["images"])
            job.run_seconds = float(value["run_seconds"])
            return JobOutput(images, list(value["seeds"]), dict(value["timings"]))
        if kind == "failed":
            return JobError(ErrorCode.parse(value["code"]), value["message"], value.get("details"))
        return JobCancelled(value.get("step", 0), value.get("total", 0))

    async def close(self, *, drain: bool = False, timeout: float | None = 30.0) -> None:
        if not drain:
            for job in list(self.out):
                self.cancel(job, SHUTDOWN)
        await super().close(drain=drain, timeout=timeout)

