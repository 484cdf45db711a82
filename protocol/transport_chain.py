"""Receiving an image's chunk frames back to back on one thread.

A receiver hands each ``image_chunk`` frame to a thread: decoding it, hashing its data (SHA-256,
which releases the GIL) and, for the last one, joining the image must not stall the event loop
(the host's UI thread on a client). Handing each frame over on its own and awaiting it cost a loop
round trip per chunk: the thread sat idle while its result went back to the loop, the reader woke
and took the next frame, already waiting in websockets' queue, and handed that over in turn
(~0.25 ms per chunk, six per 2048² layer and direction, on a loaded two-core machine).

A :class:`ChunkChain` is one connection's queue of chunk frames. The reader ``put``\\ s a frame and
goes on reading; while frames wait, one thread takes them one after the other, in order, and
posts each frame's outcome (its events, or the exception it raised) to the loop, where
``deliver`` handles it, in the same order (a frame with nothing to deliver and more behind it is
only counted: the loop is not woken for it). Only that thread touches the session's upload or
result assembly while the chain runs, with ``receive`` (a session's ``receive_frame``), as it did
one frame at a time before; ``deliver`` runs on the loop and may write the session's outbox,
which ``receive`` of a chunk does not touch.

What keeps the old guarantees:

* Order. Before any frame that is not a chunk, the reader awaits :meth:`ChunkChain.settle`: every
  chunk put before it has been received and its outcome delivered. A ``submit_job`` sent after an
  upload's last chunk therefore finds the image stored, and a ``job_finished`` its result's chunks
  joined.
* Errors, one frame at a time. After a frame that raised, or whose events are not ``plain``
  (those ``deliver`` handles at once, without awaiting), the thread stops and takes the next
  frame only once ``deliver`` (and the awaitable it returned, if any) has finished: the error is
  answered with the session as it was right after that frame, as before.
* A bound. At most ``depth`` frames are in the chain (waiting or being received); ``put`` waits
  for room, so the reader stops taking frames from websockets, whose own queue then pauses reading
  from the socket.
* The end. :meth:`ChunkChain.close` drops the waiting frames and waits until the thread has put
  down the frame in hand, so the caller may then close the session; outcomes that arrive after
  that are not delivered.
* One thread per run. A run is one submission to ``executor`` (at most :data:`RUN_FRAMES`
  frames, then it queues itself again, behind other work on a shared pool); for a client's own
  one-thread executor that is always the same thread.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from concurrent.futures import Executor, Future
from typing import Any, Awaitable, Callable

#: How an ``image_chunk`` frame from our own codec starts: a map whose first key is "type".
CHUNK_MARK = b"\xa4type\xabimage_chunk"
#: Frames one run receives before it queues the rest as a new run on the executor (~32 MiB in
#: 4 MiB chunks): an upload of many images does not hold a thread of a shared pool for its length.
RUN_FRAMES = 8
#: Frames in one connection's chain at most: one being received and up to three waiting, what
#: arrives while a 4 MiB chunk is hashed on a busy machine (with fewer, the reader waits for room,
#: and the room comes back through the loop: the gap this chain exists to close).
CHAIN_DEPTH = 4


def is_chunk_frame(frame: Any) -> bool:
    """Whether ``frame`` looks like an ``image_chunk`` (the codec decides what it is)."""
    return isinstance(frame, (bytes, bytearray)) and CHUNK_MARK in frame[:32]


class ChunkChain:
    """One connection's chunk frames, received in order on one thread (see the module docstring).

    ``receive(frame)`` runs on ``executor``'s thread and returns the frame's events or raises;
    ``deliver(events, error)`` runs on the loop, in order, for every frame put (``error`` is the
    exception ``receive`` raised, else ``None``) but those with no events and no error that had
    frames waiting behind them (nothing to deliver: the loop is not woken for them). It returns
    ``None`` or, only for an outcome that is not ``plain(events)`` or has an error, an awaitable
    that finishes its handling. An exception from ``deliver`` or its awaitable ends the chain and
    is raised by the next ``put`` or ``settle``.
    Use from the loop that created it, one reader at a time.
    """

    def __init__(self, receive: Callable[[Any], list[Any]], deliver: Callable[[list[Any], BaseException | None], Awaitable[Any] | None],
                 executor: Executor, *, plain: Callable[[list[Any]], bool] = lambda events: True,
                 depth: int = CHAIN_DEPTH) -> None:
        self._receive = receive
        self._deliver = deliver
        self._executor = executor
        self._plain = plain
        self.depth = depth
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        # Guarded by _lock (the thread reads and writes them):
        self._waiting: deque[Any] = deque()  # frames the thread has not taken yet
        self._running = False  # a run is submitted and has not returned
        self._paused = False  # the thread stopped after an outcome the loop has not finished with
        self._closed = False
        self._in_chain = 0  # frames put whose outcome has not reached the loop (or was not sent there)
        self._undelivered = 0  # frames put whose outcome has not been delivered to the end
        self._room_wanted = False  # put() waits for room: post every outcome
        # The loop's alone:
        self._progress = asyncio.Event()  # set whenever an outcome was delivered
        self._run: Future | None = None
        self._finishing: asyncio.Task | None = None
        self._failure: BaseException | None = None
        #: Submissions to the executor so far: one per run of frames received back to back.
        self.runs = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or ``deliver`` failed): frames put now are dropped."""
        return self._closed

    @property
    def waiting(self) -> int:
        """Frames put that the thread has not taken yet."""
        with self._lock:
            return len(self._waiting)

    @property
    def busy(self) -> bool:
        """Whether frames put have not been delivered yet."""
        return self._undelivered > 0

    async def put(self, frame: Any) -> None:
        """Queue ``frame`` (waits while ``depth`` frames are in the chain). Does not wait for it."""
        while self._failure is None and not self._closed:
            with self._lock:
                full = self._room_wanted = self._in_chain >= self.depth  # then every outcome is posted
            if not full:
                break
            self._progress.clear()
            await self._progress.wait()
        self._raise_failure()
        if self._closed:
            return
        with self._lock:
            self._in_chain += 1
            self._undelivered += 1
            self._waiting.append(frame)
            start = not self._running and not self._paused
            self._running = self._running or start
        if start:
            self._start()

    async def settle(self) -> None:
        """Wait until every frame put so far has been received and delivered."""
        while self._undelivered and self._failure is None and not self._closed:
            self._progress.clear()
            await self._progress.wait()
        self._raise_failure()

    async def close(self) -> None:
        """Drop the frames not taken yet; wait for the one in hand and an outcome being finished.
        Safe to call twice."""
        with self._lock:
            self._closed = True
            self._waiting.clear()
        self._progress.set()
        while self._run is not None and not self._run.done():  # a run hands on to the next before it ends
            await asyncio.wrap_future(self._run)
        if self._finishing is not None:
            await asyncio.gather(self._finishing, return_exceptions=True)

    # -- internals

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self._closed = True
            raise failure

    def _start(self) -> None:
        self.runs += 1
        try:
            self._run = self._executor.submit(self._run_frames)
        except RuntimeError:  # the executor was shut down (the client or server is closing)
            with self._lock:
                self._running = False
            raise

    def _run_frames(self) -> None:
        """On the executor's thread: receive the waiting frames one after the other; after
        :data:`RUN_FRAMES` of them, go on in a new submission, behind what other connections
        (or the server's other work on a shared pool) queued meanwhile."""
        for _ in range(RUN_FRAMES):
            with self._lock:
                if self._closed or not self._waiting:
                    self._running = False
                    return
                frame = self._waiting.popleft()
            try:
                events, error = self._receive(frame), None
            except Exception as exc:
                events, error = [], exc
            del frame
            pause = error is not None or not self._plain(events)
            if not pause and not events:
                with self._lock:
                    # Nothing to deliver (a chunk before an image's last) and frames wait behind it:
                    # no need to wake the loop; the last frame of the run posts, and settle() sees it.
                    silent = bool(self._waiting) and not self._room_wanted
                    if silent:
                        self._in_chain -= 1
                        self._undelivered -= 1
                if silent:
                    continue
            if pause:
                with self._lock:
                    self._running, self._paused = False, True
            try:
                self._loop.call_soon_threadsafe(self._arrived, events, error, pause)
            except RuntimeError:  # the loop is closed: nobody is left to deliver to
                with self._lock:
                    self._running = False
                return
            if pause:
                return
        self.runs += 1
        try:
            self._run = self._executor.submit(self._run_frames)  # set before this run's future is done
        except RuntimeError as exc:  # the executor was shut down under a live chain
            with self._lock:
                self._running = False
            self._loop.call_soon_threadsafe(self._failed, exc)

    def _arrived(self, events: list[Any], error: BaseException | None, pause: bool) -> None:
        """On the loop: deliver one frame's outcome."""
        with self._lock:
            self._in_chain -= 1
            self._room_wanted = False
        if self._closed:
            self._progress.set()
            return
        try:
            pending = self._deliver(events, error)
        except Exception as exc:
            self._failed(exc)
            return
        if pending is not None:
            if not pause:
                self._failed(RuntimeError("ChunkChain: deliver returned an awaitable for a plain outcome"))
                return
            self._finishing = self._loop.create_task(self._finish(pending))
            return
        self._delivered(pause)

    async def _finish(self, pending: Awaitable[Any]) -> None:
        try:
            await pending
        except BaseException as exc:  # cancelled too: the reader must not wait for it forever
            self._failed(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._delivered(True)

    def _delivered(self, resume: bool) -> None:
        with self._lock:
            self._undelivered -= 1
        self._progress.set()
        if not resume:
            return
        with self._lock:
            self._paused = False
            start = bool(self._waiting) and not self._running and not self._closed
            self._running = self._running or start
        if start:
            self._start()

    def _failed(self, exc: BaseException) -> None:
        self._failure = exc
        with self._lock:
            self._closed = True
            self._waiting.clear()
        self._progress.set()
