"""The download messages between two sessions joined by a fake link (no sockets): a client asks,
the server reports progress and one end; ids are checked on both sides; offers travel in
``model_list.downloads``."""
from __future__ import annotations

import msgpack
import pytest

from protocol import (
    ClientSession, DownloadFailed, DownloadFinished, DownloadInfo, DownloadModel, DownloadProgress, ErrorCode,
    LocalProtocolError, ModelList, RemoteProtocolError,
)
from protocol_support import connect


def test_a_download_round_trip():
    link = connect()
    link.client.download("dl-1", "sd15-canny")
    assert link.to_server() == [DownloadModel("dl-1", "sd15-canny")]
    link.server.download_progress("dl-1", "control.safetensors", 10, 100, 0, 1)
    link.server.download_progress("dl-1", "control.safetensors", 100, 100, 0, 1)
    link.server.download_finished("dl-1", "sd15-canny")
    events = link.to_client()
    assert events == [DownloadProgress("dl-1", "control.safetensors", 10, 100, 0, 1),
                      DownloadProgress("dl-1", "control.safetensors", 100, 100, 0, 1),
                      DownloadFinished("dl-1", "sd15-canny")]
    link.server.download_failed("dl-2", ErrorCode.BUSY, "one at a time")
    assert link.to_client() == [DownloadFailed("dl-2", ErrorCode.BUSY, "one at a time")]


def test_offers_travel_in_the_model_list():
    link = connect()
    offer = DownloadInfo("sd15", "base", "sd15", "Stable Diffusion 1.5", 4_265_000_000, have=True)
    link.server.model_list([], downloads=[offer])
    (listing,) = link.to_client()
    assert isinstance(listing, ModelList) and listing.downloads == (offer,)


def test_download_ids_are_checked_on_both_sides():
    link = connect()
    with pytest.raises(LocalProtocolError):
        link.client.download("", "sd15")
    with pytest.raises(LocalProtocolError):
        link.client.download("x" * 129, "sd15")
    frame = msgpack.packb({"type": "download_model", "download_id": "", "name": "sd15"})
    with pytest.raises(RemoteProtocolError) as caught:
        link.server.receive_frame(frame)
    assert caught.value.code is ErrorCode.INVALID_MESSAGE


def test_no_download_before_the_handshake():
    with pytest.raises(LocalProtocolError):
        ClientSession("c", "1").download("dl", "sd15")
