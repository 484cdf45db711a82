"""``easel serve --cluster`` end to end: real websocket clients → the real server → Ray Serve →
2 CPU replicas running the real engine on tiny random models (one Ray instance for the module).

The tests run in file order on the same two replicas: the first needs them fresh (nothing loaded),
the last kills one.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

from test_server_harness import WAIT_S, Client, txt2img

from protocol import ErrorCode, JobCancelled, JobFailed, JobResult, JobStarted, StepPreview


def scheduler(server: Any) -> Any:
    return server.server.scheduler


def placements(server: Any) -> dict[str, str]:
    """job id → the replica that ran it."""
    return server.call(lambda: {job: replica for _, job, replica in scheduler(server).placements})


def replicas(server: Any) -> dict[str, dict[str, Any]]:
    """replica → what it reported when it last started a job (pid, loads, models held, last end)."""
    return server.call(lambda: dict(scheduler(server).replicas))


def wait_all(client: Client, job_ids: set[str]) -> None:
    """Read ``client``'s events until every job in ``job_ids`` has ended, in whatever order."""
    ended: set[str] = set()

    def done(event: Any) -> bool:
        if isinstance(event, (JobResult, JobFailed, JobCancelled)):
            ended.add(event.job_id)
        return job_ids <= ended
    client.until(done)


def check_result(events: list[Any]) -> None:
    """The job started, sent previews in strictly rising step order, and ended with its image."""
    assert isinstance(events[-1], JobResult), events[-1]
    assert events[-1].images and events[-1].images[0].width == 64
    assert any(isinstance(e, JobStarted) for e in events)
    steps = [e.step for e in events if isinstance(e, StepPreview)]
    assert steps and all(a < b for a, b in zip(steps, steps[1:])), steps


def test_two_models_each_load_once_and_stay_put(cluster_server):
    """Two clients take turns, one on model a, one on model b: the first a job loads a on one
    replica, the first b job loads b on the other, and every later job goes where its model is."""
    with Client(cluster_server.url, "x") as x, Client(cluster_server.url, "y") as y:
        for i in range(3):
            check_result(x.run(txt2img(f"a{i}", model="a", steps=3, seed=i)))
            check_result(y.run(txt2img(f"b{i}", model="b", steps=3, seed=i)))
    where = placements(cluster_server)
    on_a = {where[f"a{i}"] for i in range(3)}
    on_b = {where[f"b{i}"] for i in range(3)}
    assert len(on_a) == 1 and len(on_b) == 1 and on_a != on_b, where
    loads = {replica: info["loads"] for replica, info in replicas(cluster_server).items()}
    assert loads == {on_a.pop(): {"a": 1}, on_b.pop(): {"b": 1}}, loads


def test_three_clients_spread_over_both_replicas(cluster_server):
    """Three clients submit two jobs each at once: all finish, previews in order, and both
    replicas ran some of them (one job per replica at a time: the rest wait in the server's queue)."""
    events: dict[str, list[Any]] = {}
    clients = [Client(cluster_server.url, f"c{n}") for n in range(3)]
    try:
        for n, client in enumerate(clients):
            for i in range(2):
                client.submit(txt2img(f"c{n}-{i}", model="a", steps=4, seed=i))

        def collect(n: int, client: Client) -> None:
            wait_all(client, {f"c{n}-0", f"c{n}-1"})
            for i in range(2):  # the client's events, whichever wait read them
                events[f"c{n}-{i}"] = [e for e in client.log if getattr(e, "job_id", None) == f"c{n}-{i}"]
        threads = [threading.Thread(target=collect, args=(n, c)) for n, c in enumerate(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S * 3)
    finally:
        for client in clients:
            client.close()
    assert len(events) == 6
    for seen in events.values():
        check_result(seen)
    where = placements(cluster_server)
    assert len({where[job] for job in events}) == 2, where


def test_cancel_mid_job_frees_the_replica(cluster_server):
    """A cancel after the first preview ends the job as cancelled; its replica reports it stopped
    long before its last step, and both replicas then run new jobs."""
    with Client(cluster_server.url, "canceller") as client:
        client.submit(txt2img("long", model="a", steps=150))
        client.until(lambda e: isinstance(e, StepPreview) and e.job_id == "long")
        client.cancel("long")
        end = client.until_done("long")[-1]
        assert isinstance(end, JobCancelled) and end.reason == "requested"
        ran_on = placements(cluster_server)["long"]
        # Two jobs at once: one runs on each replica, so the cancelled job's replica starts one,
        # reporting how the cancelled job ended on it.
        client.submit(txt2img("after1", model="a", steps=2))
        client.submit(txt2img("after2", model="a", steps=2))
        wait_all(client, {"after1", "after2"})
        for job_id in ("after1", "after2"):
            check_result([e for e in client.log if getattr(e, "job_id", None) == job_id])
    last = replicas(cluster_server)[ran_on]["last_end"]
    assert last["job"].endswith("/long") and last["end"] == "cancelled", last
    assert 1 <= last["step"] < 150 and last["total"] == 150, last


def test_live_jobs_supersede_on_the_cluster(cluster_server):
    """A newer live job cancels the running one (``superseded``) and is the one that finishes."""
    with Client(cluster_server.url, "live") as client:
        client.submit(txt2img("live1", model="a", steps=150, live=True))
        client.until(lambda e: isinstance(e, StepPreview) and e.job_id == "live1")
        client.submit(txt2img("live2", model="a", steps=3, live=True))
        wait_all(client, {"live1", "live2"})
        ends = {e.job_id: e for e in client.log if isinstance(e, (JobResult, JobFailed, JobCancelled))}
    assert isinstance(ends["live1"], JobCancelled) and ends["live1"].reason == "superseded"
    assert isinstance(ends["live2"], JobResult)


def test_a_replica_killed_mid_job_fails_that_job_and_the_rest_are_served(cluster_server):
    """SIGKILL of the replica process running a job: that job fails with a typed error
    (``internal``, reason ``worker_lost``) and the next jobs are served."""
    with Client(cluster_server.url, "victim") as client:
        client.submit(txt2img("doomed", model="a", steps=150))
        client.until(lambda e: isinstance(e, StepPreview) and e.job_id == "doomed")
        pid = replicas(cluster_server)[placements(cluster_server)["doomed"]]["pid"]
        os.kill(pid, signal.SIGKILL)
        end = client.until_done("doomed")[-1]
        assert isinstance(end, JobFailed) and end.code == ErrorCode.INTERNAL, end
        assert end.details and end.details.get("reason") == "worker_lost" and end.log_id, end
        for i in range(2):
            check_result(client.run(txt2img(f"survivor{i}", model="a", steps=2)))
