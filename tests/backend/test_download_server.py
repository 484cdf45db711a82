"""The download a plugin asks for, end to end: a real server (``allow_downloads``, a ComfyUI models
folder) and a real ClientSession over a websocket, the files coming from the hub-shaped loopback
server (``HF_ENDPOINT``). ``model_list.downloads`` offers the presets; ``download_model`` brings
progress events and one ``download_finished``; the checkpoint is then listed as a model. One
download at a time (``busy``), typed failures (``unknown_model``, ``model_unavailable``,
``unsupported`` when the server did not opt in).
"""
from __future__ import annotations

import numpy as np
import pytest

from backend.config import ServerConfig
from backend.engine import Engine
from hub_server import Hub
from protocol import DownloadFailed, DownloadFinished, DownloadProgress, ErrorCode, ModelList
from test_server_harness import Client, ServerThread

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors"
CANNY = "comfyanonymous/ControlNet-v1-1_fp16_safetensors/control_v11p_sd15_canny_fp16.safetensors"


def checkpoint_bytes(tmp_path, keys: dict[str, tuple[int, ...]], pad: int) -> bytes:
    """A small valid .safetensors with the tensor names of the real file (and ``pad`` bytes of data)."""
    from safetensors.numpy import save_file

    path = tmp_path / "made.safetensors"
    tensors = {k: np.zeros(v, np.float16) for k, v in keys.items()}
    tensors["padding"] = np.zeros(pad // 2, np.float16)
    save_file(tensors, str(path))
    return path.read_bytes()


@pytest.fixture
def hub(monkeypatch, tmp_path):
    server = Hub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    server.files[SD15] = checkpoint_bytes(tmp_path, {
        "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}, 2_000_000)
    server.files[CANNY] = checkpoint_bytes(tmp_path, {
        "control_model.input_hint_block.0.weight": (8, 3, 3, 3),
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 768)}, 500_000)
    yield server
    server.close()


def start(tmp_path, allow: bool = True) -> ServerThread:
    (tmp_path / "ComfyUI" / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    config = ServerConfig(port=0, device="cpu", cache_dir=tmp_path / "cache", preload=False,
                          models_dirs=(tmp_path / "ComfyUI",), allow_downloads=allow)
    return ServerThread(config, Engine(config))


def listing(client: Client) -> ModelList:
    client.session.list_models()
    client.flush()
    return client.until(lambda e: isinstance(e, ModelList))[-1]


def ask(client: Client, download_id: str, name: str) -> list:
    client.session.download(download_id, name)
    client.flush()
    return client.until(lambda e: isinstance(e, (DownloadFinished, DownloadFailed)) and e.download_id == download_id)


def test_a_plugin_downloads_a_model_with_progress_and_then_uses_it(hub, tmp_path):
    with start(tmp_path) as server, Client(server.url) as client:
        offers = {d.name: d for d in listing(client).downloads}
        assert {"sd15", "sdxl", "sd15-canny", "annotators", "taesd"} <= set(offers)
        assert offers["sd15"].feature == "base" and not offers["sd15"].have
        events = ask(client, "d1", "sd15")
        progress = [e for e in events if isinstance(e, DownloadProgress)]
        assert isinstance(events[-1], DownloadFinished) and events[-1].name == "sd15"
        assert progress and progress[-1].done == progress[-1].total == len(hub.files[SD15])
        assert progress[-1].file == "v1-5-pruned-emaonly.safetensors" and progress[-1].files == 1
        assert [p.done for p in progress] == sorted(p.done for p in progress)
        placed = tmp_path / "ComfyUI" / "models" / "checkpoints" / "v1-5-pruned-emaonly.safetensors"
        assert placed.read_bytes() == hub.files[SD15]
        after = listing(client)
        model = next(m for m in after.models if m.id == "v1-5-pruned-emaonly")
        assert (model.kind, model.family) == ("base", "sd15")
        assert {d.name: d.have for d in after.downloads}["sd15"]


def test_one_download_at_a_time_and_typed_failures(hub, tmp_path):
    hub.pace = 0.05  # ~1.3 MB/s: the first download is still running when the second is asked for
    with start(tmp_path) as server, Client(server.url) as client:
        client.session.download("slow", "sd15")
        client.flush()
        client.until(lambda e: isinstance(e, DownloadProgress))
        busy = ask(client, "second", "sd15-canny")[-1]
        assert isinstance(busy, DownloadFailed) and busy.code is ErrorCode.BUSY
        assert isinstance(client.until(lambda e: isinstance(e, (DownloadFinished, DownloadFailed)))[-1], DownloadFinished)
        hub.pace = 0.0
        unknown = ask(client, "x", "no-such-preset")[-1]
        assert unknown.code is ErrorCode.UNKNOWN_MODEL and "model_list.downloads" in unknown.message
        missing = ask(client, "y", "sdxl")[-1]  # not on this hub
        assert missing.code is ErrorCode.MODEL_UNAVAILABLE and "does not exist" in missing.message
        assert isinstance(ask(client, "z", "sd15-canny")[-1], DownloadFinished)  # the server keeps serving


def test_a_server_that_did_not_opt_in_refuses(hub, tmp_path):
    with start(tmp_path, allow=False) as server, Client(server.url) as client:
        assert listing(client).downloads == ()
        refused = ask(client, "d", "sd15")[-1]
        assert refused.code is ErrorCode.UNSUPPORTED and "--allow-downloads" in refused.message
    assert hub.requests == []
