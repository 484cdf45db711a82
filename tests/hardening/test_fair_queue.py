"""Fair scheduling: the queue serves clients round-robin, so a client that queued many jobs delays
another by at most one of its own; a client with nothing waiting always gets one job in, however
full the queue; live jobs keep their rule (a newer one takes the pending one's place).

``JobQueue`` on its own (pure logic), then the real server and engine (tiny models) with the
harness's ``GatedEngine``, which holds each job until the test opens its gate (said plainly: the
device finishes when the test says, so the order is the queue's, not timing's).
"""
from __future__ import annotations

import pytest

from backend.jobs import Job, JobQueue, QueueFull
from protocol import ErrorCode, JobAccepted, JobFailed, JobParams, JobResult, JobStarted, SubmitJob
from test_server_harness import Client, GatedEngine, txt2img


def job(client: str, name: str) -> Job:
    return Job(client, name, SubmitJob(name, "txt2img", JobParams()), prepared=name)


def test_clients_are_served_round_robin_and_positions_say_so():
    q = JobQueue(16)
    flood = [job("a", f"a{i}") for i in range(6)]
    for j in flood:
        q.push(j)
    b1, c1, b2 = job("b", "b1"), job("c", "c1"), job("b", "b2")
    assert q.push(b1) == 1  # right behind a's first job, not behind all six
    assert q.push(c1) == 2
    assert q.push(b2) == 4  # a0 b1 c1 a1 b2 a2 ...
    assert [j.job_id for j in q] == ["a0", "b1", "c1", "a1", "b2", "a2", "a3", "a4", "a5"]
    served = [q.pop().job_id for _ in range(len(q))]
    assert served == ["a0", "b1", "c1", "a1", "b2", "a2", "a3", "a4", "a5"] and q.pop() is None


def test_a_newcomer_goes_before_the_client_served_last():
    q = JobQueue(16)
    for i in range(3):
        q.push(job("a", f"a{i}"))
    assert q.pop().job_id == "a0"  # a's job runs; a's others wait
    late = job("b", "b0")
    assert q.push(late) == 0  # b has waited for nothing yet: it goes before a's second job
    assert [q.pop().job_id for _ in range(3)] == ["b0", "a1", "a2"]


def test_remove_and_replace_keep_the_turns():
    q = JobQueue(16)
    a0, a1, b0, b1 = job("a", "a0"), job("a", "a1"), job("b", "b0"), job("b", "b1")
    for j in (a0, a1, b0, b1):
        q.push(j)
    assert q.remove(b0) == 1 and q.position(b1) == 1
    live = job("b", "live")
    assert q.replace(b1, live) == 1 and q.position(b1) is None
    assert q.replace(a0, job("z", "other-client")) is None  # only a job of the same client
    assert q.remove(live) == 1 and [j.job_id for j in q] == ["a0", "a1"] and len(q) == 2


def test_a_full_queue_still_takes_one_job_of_a_client_with_none_waiting():
    q = JobQueue(3)
    for i in range(3):
        q.push(job("a", f"a{i}"))
    with pytest.raises(QueueFull):
        q.push(job("a", "a3"))
    assert q.admits("b") and q.push(job("b", "b0")) == 1
    assert not q.admits("b")
    with pytest.raises(QueueFull):
        q.push(job("b", "b1"))


def test_a_flooding_client_delays_another_by_one_job_on_the_real_server(serve, engine):
    """The probe: three connections filled the queue and every other client got busy; a client
    with 1,000 jobs made the next wait 79 s. Here the flooders fill the queue; the newcomer is
    accepted and runs second."""
    gated = GatedEngine(engine)
    with serve(engine_=gated, queue_size=4, max_client_jobs=4) as server:
        flooders = [Client(server.url, name=f"flood{i}") for i in range(3)]
        try:
            for n, flooder in enumerate(flooders):
                for i in range(4):
                    flooder.submit(txt2img(f"f{n}-{i}", prompt=f"f{n}-{i}", steps=1))
            accepted = []
            for flooder in flooders:
                for _ in range(4):
                    answer = flooder.until(lambda e: isinstance(e, (JobAccepted, JobFailed)))[-1]
                    accepted += [answer.job_id] if isinstance(answer, JobAccepted) else []
            # The queue of 4 is full (the rest were answered busy), each flooder got at least one in.
            assert len(accepted) >= 4 and {a.split("-")[0] for a in accepted} == {"f0", "f1", "f2"}, accepted
            with Client(server.url, name="newcomer") as newcomer:
                limits = newcomer.welcome.limits  # the admission limits, announced
                assert (limits.max_queued_jobs, limits.max_client_jobs) == (4, 4)
                newcomer.submit(txt2img("mine", prompt="mine", steps=1))
                first = newcomer.until(lambda e: isinstance(e, (JobAccepted, JobFailed)))[-1]
                assert isinstance(first, JobAccepted), first  # not busy
                assert first.queue_position <= len(flooders), first  # at most one job of each other client ahead
                for key in ["mine", *(f"f{n}-{i}" for n in range(3) for i in range(4))]:
                    gated.gate(key).set()
                assert isinstance(newcomer.until_done("mine")[-1], JobResult)
                ran_before = gated.started[:gated.started.index("mine")]
                assert len(ran_before) <= 1 + len(flooders), gated.started  # the running one, then one per client

        finally:
            for key in ["mine", *(f"f{n}-{i}" for n in range(3) for i in range(4))]:
                gated.gate(key).set()
            for flooder in flooders:
                flooder.close()
