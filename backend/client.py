"""A small client library for scripts and ``easel generate``: image files in, a job over the real
protocol, result images out.

Built on :class:`protocol.transport.AsyncClient` (the same transport the plugins use), the plugins'
job book (:mod:`clientkit.book`: how a job ends) and Pillow;
it imports no model code, so ``easel generate`` starts fast. Typical use::

    image = load_image("canvas.png")
    job = SubmitJob("cli-1", Task.IMG2IMG, JobParams(prompt="a lighthouse", strength=0.6),
                    images={"image": image.id})
    result = asyncio.run(generate("ws://127.0.0.1:9797", job, [image], on_event=print))
    save_image(result.images[0], "out.png")
"""
from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any, Callable, Iterable

from clientkit.book import Ended, Finished, JobBook
from protocol import (
    ErrorCode, ErrorEvent, ImageFormat, ImagePayload, JobCancelled, JobFailed, JobResult, ModelList,
    Refused, SubmitJob, Welcome,
)
from protocol.transport import AsyncClient, Disconnected

#: The server's address when none is given (``easel serve``'s default).
DEFAULT_URL = "ws://127.0.0.1:9797"
#: Seconds to wait for the server to confirm a cancel before giving up on it.
CANCEL_WAIT_S = 5.0


class ClientError(Exception):
    """The job did not produce a result. ``message`` is the server's (or the connection's) plain
    sentence; ``code`` its wire code; ``log_id`` ties it to the server's log."""

    def __init__(self, code: ErrorCode | str, message: str, log_id: str = "") -> None:
        super().__init__(message)
        self.code = ErrorCode.parse(code) if isinstance(code, str) else code
        self.message = message
        self.log_id = log_id

    def __str__(self) -> str:
        suffix = f" (log id {self.log_id})" if self.log_id and self.log_id not in self.message else ""
        return f"{self.message}{suffix}"


class JobWasCancelled(ClientError):
    def __init__(self, reason: str) -> None:
        super().__init__("cancelled", f"the job was cancelled ({reason})")
        self.reason = reason


# --------------------------------------------------------------------------- image files


def load_image(path: str | Path) -> ImagePayload:
    """A PNG/JPEG (anything Pillow reads) as an ``rgba8`` payload. Raises ``ValueError`` with the
    file name when it cannot be read."""
    img = _open(path)
    rgba = img.convert("RGBA")
    return ImagePayload.build(ImageFormat.RGBA8, rgba.width, rgba.height, rgba.tobytes())


def load_mask(path: str | Path) -> ImagePayload:
    """A mask file as a ``grey8`` payload: white (255) marks what to repaint, black keeps.

    A file whose colour is uniform but has transparency (a selection exported as a layer) uses its
    alpha instead: opaque means repaint.
    """
    img = _open(path)
    grey = img.convert("L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        low, high = grey.getextrema()
        if low == high:
            grey = img.convert("RGBA").getchannel("A")
    return ImagePayload.build(ImageFormat.GREY8, grey.width, grey.height, grey.tobytes())


def load_depth(path: str | Path) -> ImagePayload:
    """A depth map file, larger (whiter) = nearer; the server min-max normalises it.

    16-bit and 32-bit grey files (PNG ``I;16``, TIFF ``I``/``F``) become ``depth32f`` so that no
    precision is lost; 8-bit files (grey or colour, read as luminance) become ``grey8``.
    """
    img = _open(path)
    if img.mode.startswith("I") or img.mode == "F":
        depth = img if img.mode == "F" else img.convert("I").convert("F")
        return ImagePayload.build(ImageFormat.DEPTH32F, depth.width, depth.height, depth.tobytes("raw", "F;32F"))
    grey = img.convert("L")
    return ImagePayload.build(ImageFormat.GREY8, grey.width, grey.height, grey.tobytes())


def _open(path: str | Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not an image Pillow can read ({exc})") from None


def image_to_pil(image: ImagePayload) -> Any:
    from PIL import Image

    if image.format is ImageFormat.RGBA8:
        return Image.frombytes("RGBA", (image.width, image.height), image.data)
    if image.format is ImageFormat.GREY8:
        return Image.frombytes("L", (image.width, image.height), image.data)
    if image.format in (ImageFormat.PNG, ImageFormat.JPEG):
        return Image.open(io.BytesIO(image.data))
    raise ValueError(f"cannot turn a {image.format.value} image into a picture")


def save_image(image: ImagePayload, path: str | Path) -> None:
    """Write a result as PNG (raw formats are encoded; a PNG payload is written as is)."""
    if image.format is ImageFormat.PNG:
        Path(path).write_bytes(image.data)
    else:
        image_to_pil(image).save(path, format="PNG")


# --------------------------------------------------------------------------- talking to the server


async def connect(url: str, *, token: str = "", client_name: str = "easel-cli", open_timeout: float = 10.0) -> AsyncClient:
    """A connected client (no reconnects: a script wants a clear failure). Raises :class:`ClientError`."""
    from .server import server_version

    client = AsyncClient(url, client_name=client_name, client_version=server_version(), token=token,
                         reconnect=False, open_timeout=open_timeout)
    try:
        await client.start()
    except ConnectionError as exc:
        refused = [e for e in client.pending_events() if isinstance(e, Refused)]
        await client.close()
        if refused:
            raise ClientError(refused[0].code, f"the server refused the connection: {refused[0].message}") from None
        raise ClientError(ErrorCode.INTERNAL, f"{exc}; is `easel serve` running there?") from None
    return client


async def generate(url: str, job: SubmitJob, images: Iterable[ImagePayload] = (), *, token: str = "",
                   on_event: Callable[[Any], None] | None = None, client: AsyncClient | None = None) -> JobResult:
    """Run ``job`` on the server at ``url`` and return its result.

    ``on_event`` sees every event of the job as it arrives (``Welcome`` first, then
    ``JobAccepted``, ``QueuePosition``, ``JobStarted``, ``StepPreview`` …). Raises
    :class:`ClientError` when the job fails or the connection drops, :class:`JobWasCancelled` when
    the server cancelled it. If this coroutine is itself cancelled (Ctrl-C), it asks the server to
    cancel the job, waits briefly for the confirmation, and re-raises the cancellation.
    """
    own = client is None
    if client is None:
        client = await connect(url, token=token)
    try:
        if on_event is not None and client.welcome is not None:
            on_event(client.welcome)
        await client.submit_hashed(job, images)
        try:
            return await _follow(client, job.job_id, on_event)
        except asyncio.CancelledError:
            await _cancel_quietly(client, job.job_id)
            raise
    finally:
        if own:
            await client.close()


async def _follow(client: AsyncClient, job_id: str, on_event: Callable[[Any], None] | None) -> JobResult:
    """Events until the job's single end, through the same job book the plugins use."""
    book: JobBook[None] = JobBook()
    book.open(job_id, None)
    book.sent(job_id)
    while True:
        event = await client.next_event()
        if isinstance(event, Refused):
            raise ClientError(event.code, event.message)
        if isinstance(event, ErrorEvent) and event.ref not in book:
            # Connection-level: a refused upload or a frame the server could not read; this job cannot go on.
            raise ClientError(event.code, event.message, event.log_id)
        if isinstance(event, Disconnected):
            raise ClientError(ErrorCode.INTERNAL, f"lost the connection to the server before the job finished: {event.reason}")
        for outcome in book.handle(event):
            if isinstance(outcome, Finished):
                return outcome.result
            if isinstance(outcome, Ended):
                if isinstance(event, JobCancelled):  # by the user, or by the server (shutdown)
                    raise JobWasCancelled(event.reason)
                raise ClientError(outcome.code or ErrorCode.INTERNAL, outcome.reason, outcome.log_id)
        if on_event is not None and getattr(event, "job_id", job_id) == job_id:
            on_event(event)


async def _cancel_quietly(client: AsyncClient, job_id: str) -> None:
    if not client.connected or job_id not in (client.session.open_jobs if client.session else {}):
        return
    try:
        client.cancel(job_id)
        deadline = asyncio.get_running_loop().time() + CANCEL_WAIT_S
        while True:
            event = await client.next_event(timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
            if getattr(event, "job_id", None) == job_id and isinstance(event, (JobCancelled, JobFailed, JobResult)):
                return
            if isinstance(event, Disconnected):
                return
    except Exception:  # best effort (timeout, connection gone): the caller's own cancellation matters more
        pass


async def list_models(url: str, *, token: str = "") -> tuple[Welcome, ModelList]:
    """The server's welcome and model list. Raises :class:`ClientError`."""
    client = await connect(url, token=token)
    try:
        client.list_models()
        while True:
            event = await client.next_event(timeout=30)
            if isinstance(event, ModelList):
                assert client.welcome is not None
                return client.welcome, event
            if isinstance(event, ErrorEvent):
                raise ClientError(event.code, event.message, event.log_id)
            if isinstance(event, Disconnected):
                raise ClientError(ErrorCode.INTERNAL, f"lost the connection to the server: {event.reason}")
    finally:
        await client.close()
