"""Easel's wire protocol: messages, msgpack codec, image payloads and session state machines.

Sans-I/O: nothing here touches a socket except :mod:`.transport`, the small websocket client both
plugins share, and :mod:`.transport_send`, its and the server's frame writer. Standard library and
``msgpack`` only, relative imports only, so a plugin can vendor this folder as a subpackage. The
specification is ``docs/protocol.md``.
"""
from .codec import decode, encode
from .errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from .images import ImageFormat, ImagePayload, image_id
from .messages import *  # noqa: F401,F403 - the message classes are this package's vocabulary
from .messages import CLOSE_NO_HELLO, CLOSE_TAKEN_OVER, MAX_CHUNK_BYTES, MESSAGES, PROTOCOL_VERSION, Task
from .session import (
    ClientSession, ConnectionState, Event, ImageUploaded, JobPhase, JobResult, ServerSession,
    chunk_image, image_info, job_image_ids,
)

__all__ = [
    "decode", "encode", "ErrorCode", "LocalProtocolError", "ProtocolError", "RemoteProtocolError",
    "ImageFormat", "ImagePayload", "image_id", "CLOSE_NO_HELLO", "CLOSE_TAKEN_OVER", "MAX_CHUNK_BYTES", "MESSAGES", "PROTOCOL_VERSION", "Task",
    "ClientSession", "ConnectionState", "Event", "ImageUploaded", "JobPhase", "JobResult", "ServerSession",
    "chunk_image", "image_info", "job_image_ids",
    *(cls.__name__ for cls in MESSAGES.values()),
    "ImageInfo", "Limits", "ModelInfo", "AddonInfo", "DownloadInfo", "Capabilities", "Margins", "ControlUnit",
    "LoraWeight", "ReferenceImage", "Region", "JobParams", "Message",
]
