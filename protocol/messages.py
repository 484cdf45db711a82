"""Every message on the wire: one frozen, slotted dataclass each, with its wire tag in ``TAG``.

Requests (client → server) are verbs; events (server → client) are nouns or past tense.
Nested value types (``ImageInfo``, ``JobParams``, …) have no tag: they travel as maps inside a
message. Every field has a type the codec checks on decode; optional fields have defaults, so a
peer may leave them out, and fields a peer does not know are ignored (forward compatibility).

``docs/protocol.md`` is the human-readable form of this module; keep the two in step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from .errors import ErrorCode
from .images import ImageFormat

#: The protocol version this module speaks. Bumped only for incompatible changes.
PROTOCOL_VERSION = 1

#: Largest chunk of image bytes in one ``image_chunk`` frame (msgpack slows sharply above it).
MAX_CHUNK_BYTES = 4 * 1024 * 1024

#: Websocket close code a server uses when a newer connection of the same client (same
#: ``client_id``) took over: the old connection must not reconnect, or the two would take turns.
CLOSE_TAKEN_OVER = 4409
#: Websocket close code for a connection that sent no ``hello`` in time.
CLOSE_NO_HELLO = 1008

#: A scalar value in a ``details`` map.
Scalar = Union[bool, int, float, str]


class Task:
    """Task names the server may list in ``Capabilities.tasks``. On the wire a task is a string,
    so a newer client asking an older server for a new task gets ``unsupported``, not a decode error."""

    TXT2IMG = "txt2img"
    IMG2IMG = "img2img"
    INPAINT = "inpaint"
    OUTPAINT = "outpaint"
    DEPTH2IMG = "depth2img"
    UPSCALE = "upscale"
    PREPROCESS = "preprocess"
    EDIT = "edit"

    ALL = (TXT2IMG, IMG2IMG, INPAINT, OUTPAINT, DEPTH2IMG, UPSCALE, PREPROCESS, EDIT)


# --------------------------------------------------------------------------- nested value types

@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What an image is, without its bytes: its content id, format, size in pixels and in bytes."""

    id: str
    format: ImageFormat
    width: int
    height: int
    size: int


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds the server enforces. A client that stays inside them never sees ``limit_exceeded``."""

    max_frame_bytes: int
    max_chunk_bytes: int = MAX_CHUNK_BYTES
    max_image_pixels: int = 4096 * 4096
    max_image_side: int = 8192
    max_batch_size: int = 8
    max_images_per_job: int = 16
    #: Jobs the server queues, all clients together; one connection may hold this many plus one open.
    max_queued_jobs: int = 16
    max_upload_bytes: int = 512 * 1024 * 1024
    #: Jobs one client may have open (queued or running) at once; more are answered ``busy``.
    max_client_jobs: int = 8
    #: Largest ``JobParams.steps`` (the reference server's ``backend/params.py`` STEPS_MAX).
    max_steps: int = 150
    #: Most ``JobParams.references`` in one job (a region's own references included).
    max_references: int = 4
    #: Most ``JobParams.regions`` in one job.
    max_regions: int = 8


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model the server can use, named by ``id`` in ``JobParams.model`` and ``ControlUnit.model``.

    ``kind`` is ``base``, ``inpaint``, ``depth``, ``edit`` (an instruction-edit model: Flux Kontext), ``controlnet``
    or ``reference`` (an adapter named by ``ReferenceImage.model``); ``family`` is ``sd15``, ``sd2``,
    ``sdxl``, ``sd3``, ``flux``, ``flux2`` (Flux.2 Klein), ``zimage`` (Z-Image) or ``demo``; ``control_type`` says what a ControlNet expects (``canny``, ``depth``, …)
    or a reference model's variant (``ip_adapter``, ``ip_adapter_plus``, ``ip_adapter_face``, ``redux``).
    ``ignores`` names the ``JobParams`` fields the model does not use (``negative_prompt``,
    ``cfg_scale``: Flux's distilled guidance); ``samplers`` the samplers it takes (empty: every one
    in ``Capabilities.samplers``).
    """

    id: str
    name: str
    kind: str
    family: str
    tasks: tuple[str, ...] = ()
    default_width: int = 512
    default_height: int = 512
    default_steps: int = 25
    default_cfg: float = 7.0
    control_type: str = ""
    demo: bool = False
    ignores: tuple[str, ...] = ()
    samplers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AddonInfo:
    """A LoRA or textual-inversion embedding the server can apply (``kind`` ``lora`` or ``embedding``)."""

    id: str
    name: str
    kind: str
    family: str
    trigger: str = ""


@dataclass(frozen=True, slots=True)
class DownloadInfo:
    """A download the server offers a client (``ModelList.downloads``; only from a server started
    with downloads allowed). ``name`` is what ``DownloadModel.name`` asks for; ``feature`` what it
    is for (``base``, ``controlnet-canny``, ``preprocessors``, ``previews``, …); ``size`` about how
    many bytes it is; ``have``: it is on the server already."""

    name: str
    feature: str
    family: str
    description: str
    size: int
    have: bool = False


@dataclass(frozen=True, slots=True)
class Capabilities:
    tasks: tuple[str, ...]
    samplers: tuple[str, ...]
    models: tuple[ModelInfo, ...]
    preprocessors: tuple[str, ...] = ()
    device: str = "cpu"


@dataclass(frozen=True, slots=True)
class Margins:
    """Outpaint margins in pixels, added on each side of the image."""

    left: int = 0
    top: int = 0
    right: int = 0
    bottom: int = 0


@dataclass(frozen=True, slots=True)
class ControlUnit:
    """One ControlNet input: a model id, an uploaded image id, and how strongly and when it guides.

    ``preprocessor`` (optional) names a server-side preprocessor to run on the image first.
    """

    model: str
    image: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocessor: str = ""


@dataclass(frozen=True, slots=True)
class LoraWeight:
    id: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class ReferenceImage:
    """A reference image ("in the style of this", "this face"): an uploaded image id, the adapter
    that reads it (``model``: the id of a listed model of kind ``reference`` of the base model's
    family; empty = the server's default adapter for that family), how strongly (``weight`` 0 … 2;
    0 = as if absent) and over which fraction of the steps (``start`` < ``end``) it guides."""

    image: str
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    model: str = ""


@dataclass(frozen=True, slots=True)
class Region:
    """A part of the picture with its own prompt: ``mask`` is an uploaded image id (``grey8`` or
    ``png`` luminance, 255 = this region, covering the result like a control image); ``prompt``
    conditions only where the mask is, the job's prompt covers the rest; ``references`` apply
    only inside the region."""

    mask: str
    prompt: str
    references: tuple[ReferenceImage, ...] = ()


@dataclass(frozen=True, slots=True)
class JobParams:
    """Everything that shapes a generation. ``None`` (or an empty string) means the model's default.

    The codec checks types only; the server checks ranges before any model work and answers a bad
    value with ``invalid_parameter`` and a sentence that says which value to use.
    """

    prompt: str = ""
    negative_prompt: str = ""
    model: str = ""
    seed: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    strength: float | None = None
    sampler: str = ""
    width: int | None = None
    height: int | None = None
    batch_size: int = 1
    margins: Margins | None = None
    context: int | None = None
    feather: int | None = None
    controls: tuple[ControlUnit, ...] = ()
    loras: tuple[LoraWeight, ...] = ()
    preprocessor: str = ""
    upscale_factor: float | None = None
    live: bool = False
    previews: bool = True
    result_format: ImageFormat = ImageFormat.RGBA8
    references: tuple[ReferenceImage, ...] = ()
    regions: tuple[Region, ...] = ()
    region_mode: str = "separate"


# --------------------------------------------------------------------------- messages

class Message:
    """Marker base of every wire message. ``TAG`` is its ``type`` on the wire."""

    __slots__ = ()
    TAG: ClassVar[str] = ""


# -- handshake


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First message of every connection (client → server).

    ``client_id`` is empty on a first connection; a client that reconnects sends the id the
    server gave it in ``Welcome`` to resume its jobs, and in ``open_jobs`` the jobs it still waits
    for, so that the server sends again the end of any that ended while it was away.
    """

    TAG: ClassVar[str] = "hello"
    protocol_version: int
    client_name: str
    client_version: str
    token: str = ""
    client_id: str = ""
    open_jobs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Welcome(Message):
    TAG: ClassVar[str] = "welcome"
    protocol_version: int
    server_name: str
    server_version: str
    client_id: str
    capabilities: Capabilities
    limits: Limits
    demo: bool = False
    notice: str = ""
    open_jobs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Refused(Message):
    """The handshake failed (``version_mismatch``, ``unauthorized``, ``shutting_down``); the server closes."""

    TAG: ClassVar[str] = "refused"
    code: ErrorCode
    message: str


# -- models


@dataclass(frozen=True, slots=True)
class ListModels(Message):
    TAG: ClassVar[str] = "list_models"


@dataclass(frozen=True, slots=True)
class ModelList(Message):
    TAG: ClassVar[str] = "model_list"
    models: tuple[ModelInfo, ...]
    loras: tuple[AddonInfo, ...] = ()
    embeddings: tuple[AddonInfo, ...] = ()
    downloads: tuple[DownloadInfo, ...] = ()


# -- content-addressed images


@dataclass(frozen=True, slots=True)
class OfferImages(Message):
    """Client → server: images the next jobs will use. The server answers ``ImagesWanted``."""

    TAG: ClassVar[str] = "offer_images"
    images: tuple[ImageInfo, ...]


@dataclass(frozen=True, slots=True)
class ImagesWanted(Message):
    """Server → client: the offered ids it does not hold. Only these are sent, as ``ImageChunk``s."""

    TAG: ClassVar[str] = "images_wanted"
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ImageChunk(Message):
    """Part ``index`` of ``count`` of an image's bytes; both directions (uploads and results).

    Chunks of one image arrive in order, each with at most ``MAX_CHUNK_BYTES``; their bytes
    joined are ``size`` bytes whose content id is ``id``.
    """

    TAG: ClassVar[str] = "image_chunk"
    id: str
    format: ImageFormat
    width: int
    height: int
    size: int
    index: int
    count: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ImageStored(Message):
    """Server → client: an uploaded image arrived whole and matched its id."""

    TAG: ClassVar[str] = "image_stored"
    id: str


# -- jobs


@dataclass(frozen=True, slots=True)
class SubmitJob(Message):
    """Client → server. ``job_id`` is the client's own (unique among its open jobs).

    ``images`` maps a role (``image``, ``mask``, ``depth``) to an image id the server holds.
    """

    TAG: ClassVar[str] = "submit_job"
    job_id: str
    task: str
    params: JobParams = JobParams()
    images: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class CancelJob(Message):
    TAG: ClassVar[str] = "cancel_job"
    job_id: str


@dataclass(frozen=True, slots=True)
class JobAccepted(Message):
    """The job passed validation and is queued; ``queue_position`` 0 means it runs next."""

    TAG: ClassVar[str] = "job_accepted"
    job_id: str
    queue_position: int


@dataclass(frozen=True, slots=True)
class QueuePosition(Message):
    TAG: ClassVar[str] = "queue_position"
    job_id: str
    queue_position: int


@dataclass(frozen=True, slots=True)
class JobStarted(Message):
    """The job runs now. ``memory``: the measures its memory plan switched on to fit the device
    (``vae_slicing``, ``vae_tiling``, ``attention_slicing``, ``model_offload``, ``sequential_offload``);
    ``memory_estimate``: the plan's estimated peak in bytes (0: no plan, the model's size was not known)."""

    TAG: ClassVar[str] = "job_started"
    job_id: str
    model: str
    seed: int
    steps: int
    width: int
    height: int
    memory: tuple[str, ...] = ()
    memory_estimate: int = 0


@dataclass(frozen=True, slots=True)
class StepPreview(Message):
    """A small JPEG of the image after ``step`` of ``total`` denoising steps (at most 512 px long side).

    ``width``/``height`` are the JPEG's; it covers the same area as the final result.
    """

    TAG: ClassVar[str] = "step_preview"
    job_id: str
    step: int
    total: int
    width: int
    height: int
    jpeg: bytes


@dataclass(frozen=True, slots=True)
class JobFinished(Message):
    """The job's lossless results, sent as ``ImageChunk``s right before this message.

    ``seeds`` holds the seed of each image (``seed`` is the first); ``timings`` are seconds by stage.
    """

    TAG: ClassVar[str] = "job_finished"
    job_id: str
    images: tuple[ImageInfo, ...]
    seed: int
    seeds: tuple[int, ...] = ()
    timings: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class JobFailed(Message):
    TAG: ClassVar[str] = "job_failed"
    job_id: str
    code: ErrorCode
    message: str
    log_id: str = ""
    details: dict[str, Scalar] | None = None


@dataclass(frozen=True, slots=True)
class JobCancelled(Message):
    """``reason`` is ``requested`` (the client cancelled), ``superseded`` (a newer live job
    replaced it), ``disconnected`` or ``shutdown``."""

    TAG: ClassVar[str] = "job_cancelled"
    job_id: str
    reason: str = "requested"


# -- connection-level


@dataclass(frozen=True, slots=True)
class ErrorEvent(Message):
    """An error that belongs to no job: a bad frame, a bad upload, a request in the wrong state.

    ``ref`` says what it is about: a job id (a ``submit_job`` or ``cancel_job`` that was refused),
    an image id (a failed upload), ``offer_images`` (the oldest unanswered offer was refused) or
    the unknown message type of an ``unknown_message``.
    """

    TAG: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    log_id: str = ""
    ref: str = ""
    details: dict[str, Scalar] | None = None


@dataclass(frozen=True, slots=True)
class Ping(Message):
    TAG: ClassVar[str] = "ping"
    nonce: int = 0


@dataclass(frozen=True, slots=True)
class Pong(Message):
    TAG: ClassVar[str] = "pong"
    nonce: int = 0


# -- downloads a client asks the server for (opt-in on the server; one at a time)


@dataclass(frozen=True, slots=True)
class DownloadModel(Message):
    """Client → server: download the offer ``name`` (``ModelList.downloads``). Answered by
    ``download_progress`` events and exactly one ``download_finished`` or ``download_failed``."""

    TAG: ClassVar[str] = "download_model"
    download_id: str
    name: str


@dataclass(frozen=True, slots=True)
class DownloadProgress(Message):
    """Bytes of file ``file_index`` (0-based) of ``files`` that have arrived: ``done`` of ``total``."""

    TAG: ClassVar[str] = "download_progress"
    download_id: str
    file: str
    done: int
    total: int
    file_index: int = 0
    files: int = 1


@dataclass(frozen=True, slots=True)
class DownloadFinished(Message):
    """Every file of the download is in place and checked; ``list_models`` now shows what it added."""

    TAG: ClassVar[str] = "download_finished"
    download_id: str
    name: str


@dataclass(frozen=True, slots=True)
class DownloadFailed(Message):
    TAG: ClassVar[str] = "download_failed"
    download_id: str
    code: ErrorCode
    message: str
    log_id: str = ""


CLIENT_MESSAGES: tuple[type[Message], ...] = (
    Hello, ListModels, OfferImages, ImageChunk, SubmitJob, CancelJob, Ping,
    DownloadModel,
)
SERVER_MESSAGES: tuple[type[Message], ...] = (
    Welcome, Refused, ModelList, ImagesWanted, ImageChunk, ImageStored, JobAccepted, QueuePosition,
    JobStarted, StepPreview, JobFinished, JobFailed, JobCancelled, ErrorEvent, Pong,
    DownloadProgress, DownloadFinished, DownloadFailed,
)
#: Every message class by its wire tag.
MESSAGES: dict[str, type[Message]] = {cls.TAG: cls for cls in CLIENT_MESSAGES + SERVER_MESSAGES}

#: Events that belong to one job (they carry ``job_id``).
JOB_EVENTS: tuple[type[Message], ...] = (
    JobAccepted, QueuePosition, JobStarted, StepPreview, JobFinished, JobFailed, JobCancelled,
)
TERMINAL_EVENTS: tuple[type[Message], ...] = (JobFinished, JobFailed, JobCancelled)
