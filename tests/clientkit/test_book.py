"""clientkit.book: every way a job ends becomes exactly one outcome, from the book alone. Pure logic:
wire events are built by hand (the sessions that make them are tested in tests/protocol)."""
from __future__ import annotations

import pytest

from clientkit.book import BusyError, EndKind, Ended, Finished, JobBook, Phase, Previewed, Progressed
from clientkit.events import JobLeftBehind, SubmitFailed
from protocol import (
    ErrorCode, ErrorEvent, JobAccepted, JobCancelled, JobFailed, JobFinished, JobResult, JobStarted,
    QueuePosition, StepPreview, SubmitJob, JobParams,
)
from protocol.transport import Disconnected, JobLost


def opened(book: JobBook, job_id: str = "j1", sent: bool = True):
    job = book.open(job_id, {"host": job_id})
    if sent:
        book.sent(job_id, SubmitJob(job_id, "txt2img", JobParams(prompt="p")))
    return job


def result(job_id: str, seed: int = 5) -> JobResult:
    return JobResult(JobFinished(job_id, (), seed, (seed, seed + 1)), ())


def test_a_job_moves_through_its_phases_to_one_finished_outcome():
    book: JobBook[dict] = JobBook()
    job = opened(book)
    assert job.phase is Phase.SENDING and job.submitted.job_id == "j1"
    assert [type(o) for o in book.handle(JobAccepted("j1", 2))] == [Progressed] and job.queue_position == 2
    book.handle(QueuePosition("j1", 1))
    assert job.phase is Phase.QUEUED and job.queue_position == 1
    book.handle(JobStarted("j1", "m", 7, 4, 64, 64))
    assert (job.phase, job.total, job.seed) == (Phase.RUNNING, 4, 7)
    preview = StepPreview("j1", 2, 4, 8, 8, b"jpeg")
    assert book.handle(preview) == [Previewed(job, preview)] and job.fraction == 0.5
    done = book.handle(result("j1"))
    assert isinstance(done[0], Finished) and done[0].seeds == (5, 6) and job.phase is Phase.APPLYING
    assert book.handle(result("j1")) == []  # resent after a reconnect: the first copy is being placed
    assert book.handle(Disconnected("gone", will_retry=False)) == []  # a result being placed is not lost
    assert book.release("j1") is job and "j1" not in book


@pytest.mark.parametrize("event, kind, reason, code", [
    (JobFailed("j1", ErrorCode.OUT_OF_MEMORY, "out of memory", "L1"), EndKind.FAILED, "out of memory", ErrorCode.OUT_OF_MEMORY),
    (ErrorEvent(ErrorCode.BUSY, "too many jobs", ref="j1"), EndKind.FAILED, "too many jobs", ErrorCode.BUSY),
    (JobCancelled("j1", "requested"), EndKind.CANCELLED, "requested", None),
    (JobCancelled("j1", "shutdown"), EndKind.LOST, "the server cancelled it (shutdown)", None),
    (JobLost("j1"), EndKind.LOST, "the server restarted while it ran", None),
    (JobLeftBehind("j1", "ws://other"), EndKind.LOST, "Easel switched to the server at ws://other while it ran", None),
    (SubmitFailed("j1", "not connected"), EndKind.FAILED, "not connected", None),
    (Disconnected("closed", will_retry=False), EndKind.LOST, "the connection to the server closed", None),
])
def test_every_way_a_job_ends_is_one_ended_outcome(event, kind, reason, code):
    book: JobBook[dict] = JobBook()
    job = opened(book)
    ended = book.handle(event)
    assert ended == [Ended(job, kind, reason, code, getattr(event, "log_id", ""))]
    assert "j1" not in book
    assert book.handle(event) == [] and book.handle(result("j1")) == []  # a single end: later events are ignored


def test_the_ended_sentences_name_the_action():
    book: JobBook[dict] = JobBook()
    opened(book, "a"), opened(book, "b"), opened(book, "c"), opened(book, "d")
    failed = book.handle(JobFailed("a", ErrorCode.OUT_OF_MEMORY, "out of memory", "L1"))[0]
    assert failed.sentence("Fill") == ("Fill failed: Out of memory. Try a smaller selection, fewer images per batch, "
                                       "or fewer steps. (Server log id L1.)")
    assert book.handle(JobCancelled("b", "superseded"))[0].sentence("Live") == "Live replaced by a newer request."
    lost = book.handle(JobLost("c"))[0]
    assert lost.sentence("Generate") == "Generate was lost: the server restarted while it ran. Nothing changed; run it again."
    assert book.handle(SubmitFailed("d", "not connected"))[0].sentence("Expand") == "Expand was not sent: not connected"


def test_a_drop_that_will_be_retried_keeps_jobs_and_a_final_drop_spares_unsent_ones():
    book: JobBook[dict] = JobBook()
    sent, preparing = opened(book, "sent"), opened(book, "preparing", sent=False)
    assert book.handle(Disconnected("dropped", will_retry=True)) == [] and len(book) == 2
    ended = book.handle(Disconnected("closed", will_retry=False))
    assert [o.job for o in ended] == [sent] and "preparing" in book and preparing.phase is Phase.PREPARING


def test_host_side_ends_and_events_of_other_jobs():
    book: JobBook[dict] = JobBook()
    job = opened(book)
    assert book.handle(JobFailed("other", ErrorCode.INTERNAL, "x")) == []
    assert book.handle(ErrorEvent(ErrorCode.INTERNAL, "bad frame", ref="offer_images")) == []
    assert book.end("j1", EndKind.CANCELLED, "requested") == [Ended(job, EndKind.CANCELLED, "requested")]
    assert book.end("j1", EndKind.CANCELLED, "requested") == []
    opened(book, "x"), opened(book, "y")
    book.handle(result("y"))
    assert [o.job.job_id for o in book.lose_all("closing")] == ["x"] and "y" in book  # y's result is being placed


def test_open_jobs_are_bounded_by_the_host_or_the_servers_welcome():
    book: JobBook[None] = JobBook()
    book.learn_limits(2)
    book.open("a", None), book.open("b", None)
    with pytest.raises(BusyError, match="2 Easel jobs are already running"):
        book.open("c", None)
    with pytest.raises(ValueError, match="already open"):
        book.open("a", None)
    own = JobBook(max_open=1)
    own.learn_limits(8)
    assert own.max_open == 1
