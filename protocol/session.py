"""Sans-I/O session state machines for both ends of a connection.

A session takes frames in (``receive_frame``) and hands events out; whatever it wants to send
waits in its outbox until the caller drains it with ``data_to_send()`` and writes the frames, in
order, to the socket. No sockets, no event loop: two sessions joined by a list are a whole system.

Connection states: ``CONNECTING → READY → CLOSED``. Job phases, tracked on both ends:
``SUBMITTED → QUEUED → RUNNING → (finished | failed | cancelled)``; a failure or cancel may come
from any open phase. Misuse by the caller raises :class:`LocalProtocolError`; a peer breaking the
rules raises :class:`RemoteProtocolError` from ``receive_frame`` (answer it with
:meth:`ServerSession.error`; the session stays usable).
"""
from __future__ import annotations

import hmac
import math
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Mapping, Sequence, Union

from . import codec
from .errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from .images import ImageFormat, ImagePayload, check_shape, image_hasher
from .messages import (
    MAX_CHUNK_BYTES, PROTOCOL_VERSION, AddonInfo, CancelJob, Capabilities, ErrorEvent, Hello,
    ImageChunk, ImageInfo, ImagesWanted, ImageStored, JobAccepted, JobCancelled, JobFailed,
    JobFinished, JobStarted, Limits, ListModels, Message, ModelInfo, ModelList, OfferImages, Ping,
    Pong, QueuePosition, Refused, Scalar, StepPreview, SubmitJob, Welcome, CLIENT_MESSAGES,
    SERVER_MESSAGES,
)
from .messages import DownloadFailed, DownloadFinished, DownloadInfo, DownloadModel, DownloadProgress

#: Smallest chunk allowed except for an image's last one (keeps chunk counts bounded).
MIN_CHUNK_BYTES = 64 * 1024
#: Longest job or client id.
MAX_ID_LENGTH = 128
#: How many closed job ids a server session remembers, so a cancel that crossed a job's end is ignored.
RECENTLY_CLOSED = 256
#: Room left in a frame for an ``image_chunk``'s fields besides its bytes (they take ~200 bytes).
CHUNK_OVERHEAD = 1024
#: Most job ids a ``hello`` may name in ``open_jobs`` (a client has at most ``max_client_jobs`` open).
MAX_RESUME_JOBS = 256
#: How many dropped uploads a server session remembers, so that the chunks of a dropped image still
#: in flight are ignored instead of each drawing an error (docs/protocol.md, section 6.4).
RECENTLY_DROPPED = 64
_HEX = frozenset("0123456789abcdef")


def is_content_id(value: str) -> bool:
    """Whether ``value`` has the form of a content id: 64 lowercase hex digits (a SHA-256)."""
    return len(value) == 64 and _HEX.issuperset(value)


class ConnectionState(Enum):
    CONNECTING = "connecting"
    READY = "ready"
    CLOSED = "closed"


class JobPhase(Enum):
    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"


@dataclass(frozen=True)
class JobResult:
    """Client-side event for ``job_finished``: the message plus its images, reassembled and verified."""

    finished: JobFinished
    images: tuple[ImagePayload, ...]

    @property
    def job_id(self) -> str:
        return self.finished.job_id


@dataclass(frozen=True)
class ImageUploaded:
    """Server-side event: an offered image arrived whole and matches its id. Store it, then call
    :meth:`ServerSession.image_stored`."""

    image: ImagePayload


Event = Union[Message, JobResult, ImageUploaded]


#: Smallest piece :func:`chunk_image` tapers an image's last chunk down to.
TAPER_MIN_BYTES = 256 * 1024


def chunk_image(image: ImagePayload, chunk_bytes: int = MAX_CHUNK_BYTES, *, taper: bool = False) -> list[ImageChunk]:
    """``image`` as ``image_chunk`` messages of at most ``chunk_bytes`` each (at least one).

    ``taper``: the last chunk is cut into halving pieces of at least :data:`TAPER_MIN_BYTES` (a
    16 MiB layer in 4 MiB chunks goes as 4, 4, 4, 2, 1, ½ and ½ MiB). A receiver hashes each
    chunk when it has arrived whole, so what it still has to do after the last byte is one last
    chunk's SHA-256 and copy: ½ MiB instead of 4. The sessions send this way; any split that
    keeps the rules of docs/protocol.md (section 6.4) is the same image to a receiver.

    Each chunk's ``data`` is a read-only memoryview into ``image.data``, not a copy: ``encode``
    copies it once, into the frame, and ``encode_split`` not at all."""
    if not MIN_CHUNK_BYTES <= chunk_bytes <= MAX_CHUNK_BYTES:
        raise LocalProtocolError(ErrorCode.LIMIT_EXCEEDED, f"chunk size must be {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES} bytes")
    data = memoryview(image.data)
    sizes = _chunk_sizes(len(data), chunk_bytes, taper)
    chunks, start = [], 0
    for i, size in enumerate(sizes):
        chunks.append(ImageChunk(image.id, image.format, image.width, image.height, len(data), i, len(sizes),
                                 data[start:start + size]))
        start += size
    return chunks


def _chunk_sizes(total: int, chunk_bytes: int, taper: bool) -> list[int]:
    count = max(1, math.ceil(total / chunk_bytes))
    sizes = [chunk_bytes] * (count - 1)
    rest = total - chunk_bytes * (count - 1)
    while taper and rest > 2 * TAPER_MIN_BYTES:
        sizes.append(rest // 2)
        rest -= rest // 2
    return sizes + [rest]


def image_info(image: ImagePayload) -> ImageInfo:
    return ImageInfo(image.id, image.format, image.width, image.height, len(image.data))


def job_image_ids(job: SubmitJob) -> list[str]:
    """Every image id a job refers to: its role images, then its control images, its reference
    images and its regions' masks and references (no repeats)."""
    params = job.params
    ids = list((job.images or {}).values()) + [unit.image for unit in params.controls]
    ids += [ref.image for ref in params.references]
    for region in params.regions:
        ids.append(region.mask)
        ids += [ref.image for ref in region.references]
    return list(dict.fromkeys(ids))


class _Assembly:
    """One image arriving in chunks: checks order and sizes, holds at most ``size`` bytes."""

    def __init__(self, first: ImageChunk) -> None:
        self.first = first
        # The chunks' bytes, joined once at the end: one copy, where growing a bytearray copied
        # each byte several times (it cost twice the SHA-256 of the image; see benchmarks/). Each
        # part is a view into its frame (decode(borrow=True)), so that join is the only copy.
        self.parts: list[bytes | memoryview] = []
        self.received = 0
        self.next_index = 0
        # Each chunk is hashed as it arrives, while the next ones are still on the wire; the last
        # chunk then costs one chunk's SHA-256, not the whole image's.
        self.digest = image_hasher(first.format, first.width, first.height)

    def add(self, chunk: ImageChunk) -> ImagePayload | None:
        head = self.first
        if (chunk.format, chunk.width, chunk.height, chunk.size, chunk.count) != (
                head.format, head.width, head.height, head.size, head.count):
            raise RemoteProtocolError(ErrorCode.INVALID_IMAGE,
                                      f"chunk {chunk.index} of image {chunk.id[:12]} disagrees with chunk 0 on format, size or count")
        if chunk.index != self.next_index:
            raise RemoteProtocolError(ErrorCode.INVALID_IMAGE,
                                      f"chunk {chunk.index} of image {chunk.id[:12]} arrived, expected chunk {self.next_index}; send chunks in order")
        last = chunk.index == chunk.count - 1
        if len(chunk.data) > MAX_CHUNK_BYTES or (not last and len(chunk.data) < MIN_CHUNK_BYTES):
            raise RemoteProtocolError(ErrorCode.INVALID_IMAGE,
                                      f"chunk {chunk.index} holds {len(chunk.data)} bytes; chunks hold {MIN_CHUNK_BYTES} to {MAX_CHUNK_BYTES} bytes (the last may be smaller)")
        if self.received + len(chunk.data) > chunk.size:
            raise RemoteProtocolError(ErrorCode.INVALID_IMAGE, f"image {chunk.id[:12]} got more bytes than its size {chunk.size}")
        self.parts.append(chunk.data)
        self.digest.update(chunk.data)
        self.received += len(chunk.data)
        self.next_index += 1
        if not last:
            return None
        data = bytes(self.parts[0]) if len(self.parts) == 1 else b"".join(self.parts)
        self.parts = []
        if len(data) != chunk.size:
            raise RemoteProtocolError(ErrorCode.INVALID_IMAGE, f"image {chunk.id[:12]} ended after {len(data)} of {chunk.size} bytes")
        if self.digest.hexdigest() != chunk.id:
            raise RemoteProtocolError(ErrorCode.INVALID_IMAGE,
                                      f"image {chunk.id[:12]} does not match its id; the id is sha256 of '<format> <width> <height>\\n' and the bytes")
        return ImagePayload.hashed(chunk.format, chunk.width, chunk.height, data, chunk.id)  # not hashed again

    @property
    def held(self) -> int:
        return self.received if self.parts else 0


def _check_chunk_header(chunk: ImageChunk, max_pixels: int, max_side: int) -> None:
    check_shape(chunk.format, chunk.width, chunk.height, chunk.size)
    if chunk.width > max_side or chunk.height > max_side or chunk.width * chunk.height > max_pixels:
        raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                  f"image {chunk.width}x{chunk.height} is larger than this server accepts "
                                  f"({max_pixels} pixels, {max_side} px per side); send a smaller image")
    if not 1 <= chunk.count <= chunk.size // MIN_CHUNK_BYTES + 1 or chunk.index != 0:
        raise RemoteProtocolError(ErrorCode.INVALID_IMAGE,
                                  f"image {chunk.id[:12]} announces {chunk.count} chunks for {chunk.size} bytes, starting at chunk {chunk.index}")


class _Outbox:
    """Frames waiting to be written. A newer step preview of a job replaces an older one that has
    not left yet, so a slow peer gets the latest preview instead of a growing backlog.

    Image chunks wait as messages (their ``data`` a view of the image) and are encoded when they
    are taken: a writer that takes one frame at a time sends an image's first chunk while the
    others are not copied into frames yet, and the outbox never holds a second copy of an image."""

    def __init__(self) -> None:
        self.frames: deque[bytes | ImageChunk] = deque()
        #: Per job, the position of its preview still waiting (counted over all frames ever queued).
        self.preview_slot: dict[str, int] = {}
        self.taken = 0  # frames taken so far
        #: Bytes of the waiting frames; an image chunk not encoded yet counts its data plus CHUNK_OVERHEAD.
        self.bytes = 0

    def put(self, message: Message) -> bytes:
        frame = codec.encode(message)
        self.frames.append(frame)
        self.bytes += len(frame)
        return frame

    def put_chunk(self, chunk: ImageChunk) -> None:
        self.frames.append(chunk)
        self.bytes += len(chunk.data) + CHUNK_OVERHEAD

    def put_preview(self, preview: StepPreview) -> None:
        frame = codec.encode(preview)
        slot = self.preview_slot.get(preview.job_id)
        if slot is not None and slot >= self.taken:
            old = self.frames[slot - self.taken]
            self.bytes += len(frame) - len(old)  # type: ignore[arg-type]
            self.frames[slot - self.taken] = frame
        else:
            self.preview_slot[preview.job_id] = self.taken + len(self.frames)
            self.frames.append(frame)
            self.bytes += len(frame)

    def clear(self) -> None:
        self.taken += len(self.frames)
        self.frames.clear()
        self.preview_slot.clear()
        self.bytes = 0

    def take(self, count: int | None = None, split: bool = False) -> list[bytes | codec.SplitFrame]:
        """The first ``count`` waiting frames (all by default), encoding the image chunks among them
        (``split``: as :class:`~.codec.SplitFrame`, their data not copied)."""
        count = len(self.frames) if count is None else min(count, len(self.frames))
        frames = []
        for _ in range(count):
            entry = self.frames.popleft()
            if type(entry) is ImageChunk:
                self.bytes -= len(entry.data) + CHUNK_OVERHEAD
                entry = codec.encode_split(entry) if split else codec.encode(entry)
            else:
                self.bytes -= len(entry)  # type: ignore[arg-type]
            frames.append(entry)
        self.taken += count
        if not self.frames:
            self.preview_slot.clear()
            self.bytes = 0
        return frames  # type: ignore[return-value]


def _name(value: str) -> str:
    """``value`` quoted for an error sentence, cut short: ids come from the peer and may be huge."""
    return repr(value if len(value) <= 40 else value[:37] + "...")


def _check_id(value: str, what: str, error: type) -> None:
    if not value or len(value) > MAX_ID_LENGTH:
        raise error(ErrorCode.INVALID_MESSAGE, f"{what} must be 1 to {MAX_ID_LENGTH} characters, got {len(value)}")


_NEXT_PHASE: dict[type, tuple[JobPhase, ...]] = {
    # event type -> the phases it may follow
    JobAccepted: (JobPhase.SUBMITTED,),
    QueuePosition: (JobPhase.QUEUED,),
    JobStarted: (JobPhase.QUEUED,),
    StepPreview: (JobPhase.RUNNING,),
    JobFinished: (JobPhase.RUNNING,),
    JobFailed: (JobPhase.SUBMITTED, JobPhase.QUEUED, JobPhase.RUNNING),
    JobCancelled: (JobPhase.SUBMITTED, JobPhase.QUEUED, JobPhase.RUNNING),
}
_PHASE_AFTER: dict[type, JobPhase | None] = {
    JobAccepted: JobPhase.QUEUED, QueuePosition: JobPhase.QUEUED, JobStarted: JobPhase.RUNNING,
    StepPreview: JobPhase.RUNNING, JobFinished: None, JobFailed: None, JobCancelled: None,
}


def _check_event(jobs: dict[str, JobPhase | None], event: Message, error: type, resumed: set[str]) -> None:
    """Raise ``error`` unless ``event`` fits its job's phase. Changes nothing."""
    job_id = event.job_id  # type: ignore[attr-defined]
    if job_id not in jobs:
        raise error(ErrorCode.UNKNOWN_JOB, f"{event.TAG} names job {_name(job_id)}, which is not open on this connection", job_id[:MAX_ID_LENGTH])
    phase = jobs[job_id]
    if job_id not in resumed and phase not in _NEXT_PHASE[type(event)]:
        raise error(ErrorCode.UNEXPECTED_MESSAGE,
                    f"{event.TAG} cannot follow phase {phase.value if phase else '?'} of job {_name(job_id)}", job_id[:MAX_ID_LENGTH])


def _advance(jobs: dict[str, JobPhase | None], event: Message, error: type, resumed: set[str]) -> None:
    """Move ``event.job_id`` to its next phase, or raise ``error`` if the event does not fit.

    Jobs in ``resumed`` (taken over after a reconnect) accept any event once, then are tracked normally.
    """
    _check_event(jobs, event, error, resumed)
    job_id = event.job_id  # type: ignore[attr-defined]
    resumed.discard(job_id)
    after = _PHASE_AFTER[type(event)]
    if after is None:
        del jobs[job_id]
    else:
        jobs[job_id] = after


def _from_server(cls: type[Message]) -> None:
    if cls not in SERVER_MESSAGES:
        raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{cls.TAG} is a client message; a server must not send it")


# ============================================================================ client


@dataclass
class _PendingSubmit:
    job: SubmitJob
    images: dict[str, ImagePayload]
    awaiting_offer: bool
    wanted: tuple[str, ...] = ()
    cancel_after: bool = False


class ClientSession:
    """The client's end. Construction queues ``hello``; read ``data_to_send()`` right away.

    Call order: feed every received frame to :meth:`receive_frame`, act on the events it returns,
    and after every call write out :meth:`data_to_send`. Jobs are submitted with :meth:`submit`,
    which offers the job's images and uploads only those the server lacks before the job itself.

    Two events are made here rather than received: a ``JobFailed`` when the server answers a job's
    image offer (``ref`` ``offer_images``) or its ``submit_job`` (``ref`` the job id) with an
    ``error`` — the job never reached the queue — and a ``JobCancelled`` for a job cancelled
    while it still waited for its offer's answer (it is then never sent).
    """

    def __init__(self, client_name: str, client_version: str, *, token: str = "", client_id: str = "",
                 chunk_bytes: int = MAX_CHUNK_BYTES, max_result_bytes: int = 2 * 1024 ** 3,
                 resume: Sequence[str] = ()) -> None:
        """``client_id`` and ``resume`` are for a reconnect: the id from the last ``welcome``, and
        the jobs that were open when the connection dropped (``connection_lost()``'s list). The
        server lists in ``welcome.open_jobs`` those it still has — running, queued, or ended while
        the client was away — and sends their events next; the others are lost."""
        self.state = ConnectionState.CONNECTING
        self.welcome: Welcome | None = None
        self.chunk_bytes = chunk_bytes
        self.max_result_bytes = max_result_bytes
        self.bytes_uploaded = 0
        self._outbox = _Outbox()
        self._jobs: dict[str, JobPhase | None] = {}
        self._resumed: set[str] = set()
        self._pending: deque[_PendingSubmit] = deque()
        self._incoming: dict[str, _Assembly] = {}
        self._results: dict[str, ImagePayload] = {}
        self._outbox.put(Hello(PROTOCOL_VERSION, client_name, client_version, token, client_id,
                               tuple(dict.fromkeys(resume))[:MAX_RESUME_JOBS]))

    # -- reading state

    @property
    def open_jobs(self) -> dict[str, JobPhase | None]:
        """Open jobs by id, with their phase (``None`` for a job resumed after a reconnect)."""
        return dict(self._jobs)

    @property
    def client_id(self) -> str:
        return self.welcome.client_id if self.welcome else ""

    def data_to_send(self, max_frames: int | None = None, *, split: bool = False) -> list[bytes | codec.SplitFrame]:
        """Frames to write, in order: all of them (emptying the outbox), or at most ``max_frames``.

        An image's chunks are encoded as they are taken, so a writer that takes one frame at a
        time (``data_to_send(1)`` until it returns ``[]``) has the first chunk on the wire before
        the others are copied into frames. With ``split`` an image chunk comes as a
        :class:`~.codec.SplitFrame` (its head, and its data as a view of the image): for a writer
        that puts the pieces on the wire without joining them (``transport_send.send_frames``)."""
        return self._outbox.take(max_frames, split)

    @property
    def bytes_to_send(self) -> int:
        """Bytes of the frames waiting in the outbox (what ``data_to_send()`` would return; an
        image chunk not encoded yet counts its data plus ``CHUNK_OVERHEAD``, a little more)."""
        return self._outbox.bytes

    @property
    def upload_chunk_bytes(self) -> int:
        """Bytes per uploaded chunk: ``chunk_bytes``, lowered to fit the server's announced limits."""
        size = self.chunk_bytes
        if self.welcome is not None:
            limits = self.welcome.limits
            size = min(size, limits.max_chunk_bytes, limits.max_frame_bytes - CHUNK_OVERHEAD)
        return max(MIN_CHUNK_BYTES, min(size, MAX_CHUNK_BYTES))

    # -- requests

    def _require_ready(self, what: str) -> None:
        if self.state is not ConnectionState.READY:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                     f"cannot {what} while the connection is {self.state.value}; wait for welcome")

    def list_models(self) -> None:
        self._require_ready("list models")
        self._outbox.put(ListModels())

    def ping(self, nonce: int = 0) -> None:
        self._require_ready("ping")
        self._outbox.put(Ping(nonce))

    def download(self, download_id: str, name: str) -> None:
        """Ask the server to download the offer ``name`` (``ModelList.downloads``); its
        ``download_progress`` events and one ``download_finished``/``download_failed`` follow."""
        self._require_ready("ask for a download")
        _check_id(download_id, "download_id", LocalProtocolError)
        self._outbox.put(DownloadModel(download_id, name))

    def submit(self, job: SubmitJob, images: Iterable[ImagePayload] = ()) -> None:
        """Queue ``job``. ``images`` must hold every image the job refers to by id.

        The job goes out after the server has said which of its images it lacks and those were
        sent; jobs leave in the order they were submitted.
        """
        self._require_ready("submit a job")
        _check_id(job.job_id, "job_id", LocalProtocolError)
        if job.job_id in self._jobs:
            raise LocalProtocolError(ErrorCode.DUPLICATE_JOB, f"job {_name(job.job_id)} is already open; use a new job id")
        by_id = {image.id: image for image in images}
        needed = job_image_ids(job)
        missing = [i for i in needed if i not in by_id]
        if missing:
            raise LocalProtocolError(ErrorCode.UNKNOWN_IMAGE, f"job {_name(job.job_id)} refers to image {missing[0][:12]} but it was not passed to submit()")
        self._check_limits(job, [by_id[i] for i in needed])
        entry = _PendingSubmit(job, {i: by_id[i] for i in needed}, awaiting_offer=bool(needed))
        if needed:
            self._outbox.put(OfferImages(tuple(image_info(by_id[i]) for i in needed)))
        self._jobs[job.job_id] = JobPhase.SUBMITTED
        self._pending.append(entry)
        # Nothing can be cancelled here: a cancelled entry only waits behind an unanswered offer.
        self._flush_pending()

    def _check_limits(self, job: SubmitJob, images: Sequence[ImagePayload]) -> None:
        """Refuse here what the server would refuse after the upload (its limits came in welcome)."""
        limits = self.welcome.limits  # type: ignore[union-attr]
        if len(images) > limits.max_images_per_job:
            raise LocalProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                     f"job {_name(job.job_id)} uses {len(images)} images; this server takes at most {limits.max_images_per_job}")
        for image in images:
            if image.width > limits.max_image_side or image.height > limits.max_image_side \
                    or image.width * image.height > limits.max_image_pixels:
                raise LocalProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                         f"image {image.width}x{image.height} is larger than this server accepts "
                                         f"({limits.max_image_pixels} pixels, {limits.max_image_side} px per side); scale it down")

    def cancel(self, job_id: str) -> None:
        """Ask the server to cancel. The job stays open until ``job_cancelled`` (or its end) arrives.

        A job still waiting for the answer to its image offer is never sent: when that answer
        comes, ``receive_frame`` hands out a ``JobCancelled`` (reason ``requested``) for it.
        """
        self._require_ready("cancel a job")
        if job_id not in self._jobs:
            raise LocalProtocolError(ErrorCode.UNKNOWN_JOB, f"job {_name(job_id)} is not open")
        for entry in self._pending:
            if entry.job.job_id == job_id:
                entry.cancel_after = True
                return
        self._outbox.put(CancelJob(job_id))

    def _flush_pending(self) -> list[Event]:
        """Send every job at the head of the queue whose offer is answered. Returns the
        ``JobCancelled`` events of the jobs cancelled before they could leave."""
        events: list[Event] = []
        while self._pending and not self._pending[0].awaiting_offer:
            entry = self._pending.popleft()
            if entry.cancel_after:
                # The server never saw the job; sending it only to cancel it would upload its images
                # for nothing (and a server checking images first would fail it instead).
                del self._jobs[entry.job.job_id]
                events.append(JobCancelled(entry.job.job_id, "requested"))
                continue
            for wanted in entry.wanted:
                for chunk in chunk_image(entry.images[wanted], self.upload_chunk_bytes, taper=True):
                    self._outbox.put_chunk(chunk)
                    self.bytes_uploaded += len(chunk.data)
            self._outbox.put(entry.job)
        return events

    # -- receiving

    def receive_frame(self, frame: bytes | bytearray) -> list[Event]:
        """Events for one received frame. Raises ``RemoteProtocolError`` if the server broke the rules.
        A ``bytearray`` frame must not change afterwards: a result chunk's bytes are borrowed from it."""
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "the session is closed; start a new one to reconnect")
        message = codec.decode(frame, check_type=_from_server, borrow=True)
        if self.state is ConnectionState.CONNECTING:
            if isinstance(message, Welcome):
                self.state = ConnectionState.READY
                self.welcome = message
                for job_id in message.open_jobs:
                    self._jobs[job_id] = None
                    self._resumed.add(job_id)
                return [message]
            if isinstance(message, Refused):
                self.state = ConnectionState.CLOSED
                return [message]
            if isinstance(message, ErrorEvent):
                return [message]
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{message.TAG} arrived before welcome")
        if isinstance(message, (Welcome, Refused)):
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{message.TAG} arrived after the handshake")
        if isinstance(message, ImagesWanted):
            return self._on_images_wanted(message)
        if isinstance(message, ImageChunk):
            self._on_result_chunk(message)
            return []
        if isinstance(message, (JobAccepted, QueuePosition, JobStarted, StepPreview, JobFailed, JobCancelled)):
            if any(entry.job.job_id == message.job_id for entry in self._pending):
                raise RemoteProtocolError(ErrorCode.UNKNOWN_JOB, f"{message.TAG} names job {_name(message.job_id)}, which was not sent yet")
            _advance(self._jobs, message, RemoteProtocolError, self._resumed)
            return [message]
        if isinstance(message, JobFinished):
            _check_event(self._jobs, message, RemoteProtocolError, self._resumed)
            images = self._claim_results(message)
            _advance(self._jobs, message, RemoteProtocolError, self._resumed)
            return [JobResult(message, images)]
        if isinstance(message, ErrorEvent):
            return self._on_error(message)
        return [message]  # ModelList, ImageStored, Pong

    def _on_error(self, error: ErrorEvent) -> list[Event]:
        """An ``error`` that refused a job before it was queued closes that job with a ``JobFailed``."""
        if error.ref == OfferImages.TAG:
            # Offers are answered in order, so the error answers the oldest one outstanding.
            entry = next((e for e in self._pending if e.awaiting_offer), None)
            if entry is not None:
                self._pending.remove(entry)
                del self._jobs[entry.job.job_id]
                failed = JobFailed(entry.job.job_id, error.code, error.message, error.log_id, error.details)
                return [failed, *self._flush_pending()]
        elif (self._jobs.get(error.ref, False) is JobPhase.SUBMITTED and error.code is not ErrorCode.DUPLICATE_JOB
              and not any(e.job.job_id == error.ref for e in self._pending)):
            # The server refused the submit_job itself (it never opened the job): it is over.
            del self._jobs[error.ref]
            return [JobFailed(error.ref, error.code, error.message, error.log_id, error.details)]
        return [error]

    def _on_images_wanted(self, message: ImagesWanted) -> list[Event]:
        entry = next((e for e in self._pending if e.awaiting_offer), None)
        if entry is None:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "images_wanted arrived with no offer outstanding")
        strange = [i for i in message.ids if i not in entry.images]
        if strange:
            raise RemoteProtocolError(ErrorCode.UNKNOWN_IMAGE, f"images_wanted asks for {strange[0][:12]}, which was not offered")
        entry.awaiting_offer = False
        entry.wanted = tuple(dict.fromkeys(message.ids))
        return [message, *self._flush_pending()]

    def _on_result_chunk(self, chunk: ImageChunk) -> None:
        assembly = self._incoming.get(chunk.id)
        if assembly is None:
            _check_chunk_header(chunk, max_pixels=2 ** 31, max_side=2 ** 16)
            held = sum(a.first.size for a in self._incoming.values()) + sum(len(r.data) for r in self._results.values())
            if held + chunk.size > self.max_result_bytes:
                raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED, "the server sent more result bytes than this client holds")
            assembly = self._incoming[chunk.id] = _Assembly(chunk)
        try:
            image = assembly.add(chunk)
        except RemoteProtocolError:
            del self._incoming[chunk.id]
            raise
        if image is not None:
            del self._incoming[chunk.id]
            self._results[image.id] = image

    def _claim_results(self, message: JobFinished) -> tuple[ImagePayload, ...]:
        missing = [info.id for info in message.images if info.id not in self._results]
        if missing:
            raise RemoteProtocolError(ErrorCode.UNKNOWN_IMAGE, f"job_finished names image {missing[0][:12]}, which was not sent before it")
        # The same image may appear twice in one result (identical batch items): pop at the end.
        images = tuple(self._results[info.id] for info in message.images)
        for info in message.images:
            self._results.pop(info.id, None)
        return images

    def connection_lost(self) -> list[str]:
        """Mark the session closed. Returns the ids of jobs still open (resume them by reconnecting
        with the same ``client_id``)."""
        self.state = ConnectionState.CLOSED
        self._pending.clear()
        self._incoming.clear()
        self._results.clear()
        return list(self._jobs)


# ============================================================================ server


class ServerSession:
    """The server's end of one connection.

    ``receive_frame`` returns the client's requests (and :class:`ImageUploaded` once an upload is
    whole); the server answers through the methods below, which check that each answer fits the
    job's phase. Pings are answered here. After a ``hello`` with the wrong version or token, or one
    whose fields are missing or of the wrong type, the session queues ``refused`` and closes: write
    out ``data_to_send()`` and close the socket.

    When ``receive_frame`` raises :class:`RemoteProtocolError`, answer it with :meth:`error`; its
    ``ref`` (the job, image or ``offer_images`` the error is about) travels along, which is how the
    client learns that an offer or a submit was refused.
    """

    def __init__(self, *, limits: Limits, token: str = "", max_upload_bytes: int | None = None) -> None:
        self.state = ConnectionState.CONNECTING
        self.limits = limits
        self.hello: Hello | None = None
        self._token = token
        self._max_upload_bytes = limits.max_upload_bytes if max_upload_bytes is None else max_upload_bytes
        self._outbox = _Outbox()
        self._jobs: dict[str, JobPhase | None] = {}
        self._resumed: set[str] = set()
        self._recently_closed: deque[str] = deque(maxlen=RECENTLY_CLOSED)
        self._offered: dict[str, ImageInfo] = {}
        self._uploads: dict[str, _Assembly] = {}
        #: Ids of uploads dropped for a broken chunk (oldest first, at most RECENTLY_DROPPED): their
        #: remaining chunks are ignored until the image is offered and asked for again.
        self._dropped: dict[str, None] = {}
        self._answer_ref = ""  # ref of the RemoteProtocolError receive_frame raised last
        self._answer_details: dict[str, Scalar] | None = None  # and its details
        #: The ``refused`` this session sent, if it refused the handshake (for the server's log).
        self.refusal: Refused | None = None

    @property
    def open_jobs(self) -> dict[str, JobPhase | None]:
        return dict(self._jobs)

    @property
    def upload_bytes_held(self) -> int:
        """Bytes of uploads still arriving on this connection."""
        # A snapshot (one C call under the GIL): a connection's chunk chain may add or end an upload
        # on its thread meanwhile (protocol/transport_chain.py).
        return sum(a.held for a in tuple(self._uploads.values()))

    @property
    def bytes_to_send(self) -> int:
        """Bytes of the frames waiting in the outbox (what ``data_to_send()`` would return; an
        image chunk not encoded yet counts its data plus ``CHUNK_OVERHEAD``, a little more)."""
        return self._outbox.bytes

    @property
    def max_open_jobs(self) -> int:
        """Jobs this connection may hold open at once; a ``submit_job`` beyond is answered ``busy``."""
        return min(self.limits.max_queued_jobs + 1, self.limits.max_client_jobs)

    def data_to_send(self, max_frames: int | None = None, *, split: bool = False) -> list[bytes | codec.SplitFrame]:
        """Frames to write, in order, as :meth:`ClientSession.data_to_send`: all, or at most
        ``max_frames`` (a result's chunks are encoded as they are taken; ``split`` as there)."""
        return self._outbox.take(max_frames, split)

    def drop_unsent(self) -> None:
        """Forget every frame still waiting (a connection being cut), without encoding the chunks."""
        self._outbox.clear()

    # -- receiving

    def receive_frame(self, frame: bytes | bytearray) -> list[Event]:
        """Requests in one frame. Raises ``RemoteProtocolError`` for anything the client got wrong
        (answer it with :meth:`error`); the session stays usable. A ``bytearray`` frame must not
        change afterwards: an image chunk's bytes are borrowed from it."""
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "the session is closed")
        self._answer_ref, self._answer_details = "", None
        try:
            return self._receive(frame)
        except RemoteProtocolError as exc:
            self._answer_ref, self._answer_details = exc.ref, exc.details
            raise

    def _receive(self, frame: bytes | bytearray) -> list[Event]:
        if len(frame) > self.limits.max_frame_bytes:
            raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                      f"a frame of {len(frame)} bytes is over the limit of {self.limits.max_frame_bytes}; send images in chunks")
        seen: list[type[Message]] = []

        def check_type(cls: type[Message]) -> None:
            # By tag, before any field is read: a message from the wrong side, or anything but a
            # hello before the handshake, is unexpected_message whatever its fields hold.
            seen.append(cls)
            if cls not in CLIENT_MESSAGES:
                raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"{cls.TAG} is a server message; a client must not send it")
            if cls is not Hello and self.state is not ConnectionState.READY:
                raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE,
                                          f"{cls.TAG} arrived before the handshake finished; send hello and wait for welcome")

        try:
            message = codec.decode(frame, check_type=check_type, borrow=True)
        except RemoteProtocolError as exc:
            if seen == [Hello] and self.state is ConnectionState.CONNECTING and exc.code is not ErrorCode.UNEXPECTED_MESSAGE:
                # A broken first hello ends the connection: there is no session to go on with.
                self.refuse(ErrorCode.INVALID_MESSAGE,
                            f"{exc.message}; the first frame must be a hello with protocol_version, client_name "
                            f"and client_version (docs/protocol.md, section 5.1)")
                return []
            raise
        if isinstance(message, Hello):
            return self._on_hello(message)
        if isinstance(message, Ping):
            self._outbox.put(Pong(message.nonce))
            return []
        if isinstance(message, OfferImages):
            try:
                return self._on_offer(message)
            except RemoteProtocolError as exc:
                exc.ref = OfferImages.TAG
                raise
        if isinstance(message, ImageChunk):
            try:
                return self._on_chunk(message)
            except RemoteProtocolError as exc:
                exc.ref = message.id[:MAX_ID_LENGTH]
                raise
        if isinstance(message, SubmitJob):
            ref = message.job_id[:MAX_ID_LENGTH]
            if not message.job_id or len(message.job_id) > MAX_ID_LENGTH:
                raise RemoteProtocolError(ErrorCode.INVALID_MESSAGE,
                                          f"job_id must be 1 to {MAX_ID_LENGTH} characters, got {len(message.job_id)}", ref)
            if message.job_id in self._jobs:
                raise RemoteProtocolError(ErrorCode.DUPLICATE_JOB, f"job {_name(message.job_id)} is already open on this connection; use a new job id", ref)
            images = len(job_image_ids(message))
            if images > self.limits.max_images_per_job:
                raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                          f"the job names {images} images; a job may use at most {self.limits.max_images_per_job}", ref)
            if len(self._jobs) >= self.max_open_jobs:
                raise RemoteProtocolError(ErrorCode.BUSY,
                                          f"this connection has {len(self._jobs)} jobs open, the most it may; wait for one to end", ref,
                                          {"client_jobs": len(self._jobs), "max_client_jobs": self.max_open_jobs})
            self._jobs[message.job_id] = JobPhase.SUBMITTED
            return [message]
        if isinstance(message, CancelJob):
            if message.job_id in self._jobs:
                return [message]
            if message.job_id in self._recently_closed:
                return []  # the cancel crossed the job's end on the wire: nothing to do
            raise RemoteProtocolError(ErrorCode.UNKNOWN_JOB, f"cannot cancel job {_name(message.job_id)}: no such job is open",
                                      message.job_id[:MAX_ID_LENGTH])
        if isinstance(message, DownloadModel):
            _check_id(message.download_id, "download_id", RemoteProtocolError)
        return [message]  # ListModels, DownloadModel

    def _on_hello(self, hello: Hello) -> list[Event]:
        if self.state is not ConnectionState.CONNECTING or self.hello is not None:
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "hello was already received on this connection")
        self.hello = hello
        if hello.protocol_version != PROTOCOL_VERSION:
            self.refuse(ErrorCode.VERSION_MISMATCH,
                        f"this server speaks protocol version {PROTOCOL_VERSION}, the client {hello.protocol_version}; update the older side")
            return []
        if self._token and not hmac.compare_digest(hello.token.encode("utf-8"), self._token.encode("utf-8")):
            self.refuse(ErrorCode.UNAUTHORIZED, "the token is missing or wrong; copy the token the server printed at start")
            return []
        if len(hello.client_id) > MAX_ID_LENGTH:
            self.refuse(ErrorCode.INVALID_MESSAGE, f"client_id must be at most {MAX_ID_LENGTH} characters")
            return []
        if len(hello.open_jobs) > MAX_RESUME_JOBS or any(not 1 <= len(j) <= MAX_ID_LENGTH for j in hello.open_jobs):
            self.refuse(ErrorCode.INVALID_MESSAGE,
                        f"open_jobs must name at most {MAX_RESUME_JOBS} job ids of 1 to {MAX_ID_LENGTH} characters")
            return []
        return [hello]

    def _on_offer(self, offer: OfferImages) -> list[Event]:
        if len(offer.images) > self.limits.max_images_per_job:
            raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                      f"{len(offer.images)} images offered at once; offer at most {self.limits.max_images_per_job}")
        for info in offer.images:
            if not is_content_id(info.id):
                raise RemoteProtocolError(ErrorCode.INVALID_IMAGE,
                                          f"image id {_name(info.id)} is not a content id: 64 lowercase hex digits, the sha256 "
                                          f"of '<format> <width> <height>\\n' and the bytes (docs/protocol.md, section 6.1)")
            check_shape(info.format, info.width, info.height, info.size)
            if info.width > self.limits.max_image_side or info.height > self.limits.max_image_side \
                    or info.width * info.height > self.limits.max_image_pixels:
                raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                          f"image {info.width}x{info.height} is larger than this server accepts "
                                          f"({self.limits.max_image_pixels} pixels, {self.limits.max_image_side} px per side)")
        return [offer]

    def _on_chunk(self, chunk: ImageChunk) -> list[Event]:
        """One upload chunk. A chunk that breaks a rule drops its image: the error is raised once,
        the image is no longer wanted, and its later chunks are ignored until it is offered again."""
        assembly = self._uploads.get(chunk.id)
        if assembly is None:
            if chunk.id not in self._offered:
                if chunk.id in self._dropped:
                    return []  # the rest of a dropped upload: its error was sent with the broken chunk
                raise RemoteProtocolError(ErrorCode.UNKNOWN_IMAGE,
                                          f"image {chunk.id[:12]} was not asked for; offer images first and send only those in images_wanted")
            try:
                assembly = self._start_upload(chunk)
            except RemoteProtocolError:
                self._drop(chunk.id)
                raise
        try:
            image = assembly.add(chunk)
        except RemoteProtocolError:
            del self._uploads[chunk.id]
            self._drop(chunk.id)
            raise
        if image is None:
            return []
        del self._uploads[chunk.id]
        self._offered.pop(chunk.id, None)
        return [ImageUploaded(image)]

    def _start_upload(self, chunk: ImageChunk) -> _Assembly:
        _check_chunk_header(chunk, self.limits.max_image_pixels, self.limits.max_image_side)
        offered = self._offered[chunk.id]
        if (chunk.format, chunk.width, chunk.height, chunk.size) != (offered.format, offered.width, offered.height, offered.size):
            raise RemoteProtocolError(ErrorCode.INVALID_IMAGE,
                                      f"chunk 0 of image {chunk.id[:12]} says {chunk.format.value} {chunk.width}x{chunk.height}, "
                                      f"{chunk.size} bytes, but the offer said {offered.format.value} {offered.width}x{offered.height}, "
                                      f"{offered.size} bytes; send the image as offered")
        pending = sum(a.first.size for a in self._uploads.values())
        if pending + chunk.size > self._max_upload_bytes:
            raise RemoteProtocolError(ErrorCode.LIMIT_EXCEEDED,
                                      f"uploads in flight would hold {pending + chunk.size} bytes, over {self._max_upload_bytes}; send fewer images at once")
        assembly = self._uploads[chunk.id] = _Assembly(chunk)
        return assembly

    def _drop(self, image_id_: str) -> None:
        """Forget that ``image_id_`` was wanted, and ignore the rest of its upload."""
        self._offered.pop(image_id_, None)
        self._dropped.pop(image_id_, None)
        self._dropped[image_id_] = None
        while len(self._dropped) > RECENTLY_DROPPED:
            del self._dropped[next(iter(self._dropped))]

    # -- answering

    def _require(self, state: ConnectionState, what: str) -> None:
        if self.state is not state:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, f"cannot {what} while the connection is {self.state.value}")

    def welcome(self, *, server_name: str, server_version: str, client_id: str, capabilities: Capabilities,
                demo: bool = False, notice: str = "", resumed: Mapping[str, JobPhase] | None = None,
                limits: Limits | None = None) -> None:
        """Finish the handshake. ``resumed`` lists the client's jobs taken over from an earlier
        connection; their events may follow on this one. ``limits``: this connection's bounds,
        announced and enforced from now on (default: those the session was made with)."""
        self._require(ConnectionState.CONNECTING, "welcome")
        if self.hello is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "cannot welcome before hello arrived")
        if limits is not None:
            self.limits, self._max_upload_bytes = limits, limits.max_upload_bytes
        resumed = dict(resumed or {})
        self._jobs.update(resumed)
        self._resumed.update(resumed)
        self._outbox.put(Welcome(PROTOCOL_VERSION, server_name, server_version, client_id, capabilities,
                                 self.limits, demo, notice, tuple(resumed)))
        self.state = ConnectionState.READY

    def refuse(self, code: ErrorCode, message: str) -> None:
        """Refuse the handshake; the caller then writes out the frames and closes the socket."""
        self.refusal = Refused(code, message)
        self._outbox.put(self.refusal)
        self.state = ConnectionState.CLOSED

    def model_list(self, models: Sequence[ModelInfo], loras: Sequence[AddonInfo] = (),
                   embeddings: Sequence[AddonInfo] = (), downloads: Sequence[DownloadInfo] = ()) -> None:
        self._require(ConnectionState.READY, "list models")
        self._outbox.put(ModelList(tuple(models), tuple(loras), tuple(embeddings), tuple(downloads)))

    def download_progress(self, download_id: str, file: str, done: int, total: int, file_index: int = 0,
                          files: int = 1) -> None:
        self._require(ConnectionState.READY, "report a download")
        self._outbox.put(DownloadProgress(download_id, file, done, total, file_index, files))

    def download_finished(self, download_id: str, name: str) -> None:
        self._require(ConnectionState.READY, "report a download")
        self._outbox.put(DownloadFinished(download_id, name))

    def download_failed(self, download_id: str, code: ErrorCode, message: str, log_id: str = "") -> None:
        self._require(ConnectionState.READY, "report a download")
        self._outbox.put(DownloadFailed(download_id, code, message, log_id))

    def images_wanted(self, offer: OfferImages, have: Iterable[str]) -> tuple[str, ...]:
        """Answer ``offer``: every offered id not in ``have`` is asked for. Returns those ids."""
        self._require(ConnectionState.READY, "ask for images")
        held = set(have)
        wanted = tuple(dict.fromkeys(info.id for info in offer.images if info.id not in held))
        for info in offer.images:
            if info.id in wanted:
                self._offered[info.id] = info
                self._dropped.pop(info.id, None)  # asked for again: its chunks count from now on
        while len(self._offered) > 4 * self.limits.max_images_per_job:  # offers never followed up
            oldest = next(iter(self._offered))
            if oldest in self._uploads:
                break
            del self._offered[oldest]
        self._outbox.put(ImagesWanted(wanted))
        return wanted

    def refuse_offer(self, code: ErrorCode, message: str, *, log_id: str = "") -> None:
        """Answer the oldest unanswered offer with an ``error`` instead of ``images_wanted`` (the
        store is full, say). The client fails the job that made the offer."""
        self._require(ConnectionState.READY, "refuse an offer")
        self._outbox.put(ErrorEvent(code, message, log_id, OfferImages.TAG))

    def image_stored(self, image_id_: str) -> None:
        self._require(ConnectionState.READY, "confirm an image")
        self._outbox.put(ImageStored(image_id_))

    def _job_event(self, event: Message) -> None:
        self._require(ConnectionState.READY, f"send {event.TAG}")
        _advance(self._jobs, event, LocalProtocolError, self._resumed)
        if event.job_id not in self._jobs:  # type: ignore[attr-defined]
            self._recently_closed.append(event.job_id)  # type: ignore[attr-defined]

    def job_accepted(self, job_id: str, queue_position: int) -> None:
        event = JobAccepted(job_id, queue_position)
        self._job_event(event)
        self._outbox.put(event)

    def queue_position(self, job_id: str, queue_position: int) -> None:
        event = QueuePosition(job_id, queue_position)
        self._job_event(event)
        self._outbox.put(event)

    def job_started(self, job_id: str, *, model: str, seed: int, steps: int, width: int, height: int,
                    memory: tuple[str, ...] = (), memory_estimate: int = 0) -> None:
        event = JobStarted(job_id, model, seed, steps, width, height, tuple(memory), int(memory_estimate))
        self._job_event(event)
        self._outbox.put(event)

    def step_preview(self, job_id: str, step: int, total: int, width: int, height: int, jpeg: bytes) -> None:
        """Queue a preview; it replaces this job's previous preview if that one has not left yet."""
        event = StepPreview(job_id, step, total, width, height, jpeg)
        self._job_event(event)
        self._outbox.put_preview(event)

    def job_finished(self, job_id: str, images: Sequence[ImagePayload], seed: int, seeds: Sequence[int] = (),
                     timings: Mapping[str, float] | None = None) -> bytes:
        """Queue the result images as chunks, then ``job_finished``. Returns the ``job_finished``
        frame (the same object ``data_to_send()`` will hand out), so the caller can tell when the
        job's end has been written to the socket."""
        event = JobFinished(job_id, tuple(image_info(image) for image in images), seed, tuple(seeds) or (seed,),
                            dict(timings) if timings is not None else None)
        self._job_event(event)
        for image in dict.fromkeys(images):
            for chunk in chunk_image(image, self.limits.max_chunk_bytes, taper=True):
                self._outbox.put_chunk(chunk)
        return self._outbox.put(event)

    def job_failed(self, job_id: str, code: ErrorCode, message: str, log_id: str = "",
                   details: Mapping[str, Scalar] | None = None) -> bytes:
        """Queue ``job_failed``; returns its frame (see :meth:`job_finished`)."""
        event = JobFailed(job_id, code, message, log_id, dict(details) if details else None)
        self._job_event(event)
        return self._outbox.put(event)

    def job_cancelled(self, job_id: str, reason: str = "requested") -> bytes:
        """Queue ``job_cancelled``; returns its frame (see :meth:`job_finished`)."""
        event = JobCancelled(job_id, reason)
        self._job_event(event)
        return self._outbox.put(event)

    def error(self, code: ErrorCode, message: str, *, log_id: str = "", ref: str = "",
              details: Mapping[str, Scalar] | None = None) -> None:
        """A connection-level error (answer to a ``RemoteProtocolError``, a failed upload, …).

        ``ref`` and ``details`` default to those of the ``RemoteProtocolError`` that ``receive_frame``
        raised last, so ``session.error(exc.code, exc.message)`` tells the client what was refused.
        """
        if self.state is ConnectionState.CLOSED:
            return
        ref, self._answer_ref = ref or self._answer_ref, ""
        details, self._answer_details = details if details is not None else self._answer_details, None
        self._outbox.put(ErrorEvent(code, message, log_id, ref, dict(details) if details else None))

    def connection_lost(self) -> list[str]:
        """Mark the session closed; returns the ids of jobs still open, for the server to cancel or
        keep for a reconnect."""
        self.state = ConnectionState.CLOSED
        self._uploads.clear()
        self._offered.clear()
        self._dropped.clear()
        return list(self._jobs)
