"""Step previews: the per-family latent→RGB map, preview sizes and placement, TAESD when configured."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from backend import demo
from backend.engine import Engine, EngineConfig, ModelSpec
from backend.previews import LATENT_RGB, LatentDecoder, PreviewFrame, PreviewPump, preview_size
from tiny_models import Recorder, engine, grey_payload, model_dirs, rgba_payload, run  # noqa: F401 - fixtures


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_linear_map_uses_the_family_factors(family):
    factors, bias = (np.asarray(v, np.float32) for v in LATENT_RGB[family])
    latents = torch.zeros(2, 4, 3, 5)
    latents[0, 2] = 1.0  # only channel 2 lit, in the first batch image
    rgb = LatentDecoder(family).rgb(latents)
    assert rgb.shape == (3, 5, 3) and rgb.dtype == np.uint8
    expected = np.clip(np.rint((factors[2] + bias + 1.0) * 127.5), 0, 255)
    assert np.abs(rgb[1, 1].astype(int) - expected.astype(int)).max() <= 1


def test_sd_and_sdxl_previews_differ():
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert not np.array_equal(LatentDecoder("sd15").rgb(latents), LatentDecoder("sdxl").rgb(latents))


def test_preview_size_never_grows_and_caps_the_long_side():
    assert preview_size(256, 128) == (256, 128)
    assert preview_size(2048, 1024) == (512, 256)
    assert preview_size(600, 4000) == (77, 512)


def jpeg_pixels(jpeg: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(jpeg)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


def test_a_region_preview_shows_the_rest_of_the_image():
    background = np.zeros((100, 200, 4), np.uint8)
    background[..., 1] = 200  # green everywhere
    alpha = np.zeros((100, 200), np.float32)
    alpha[20:60, 100:180] = 1.0
    frame = PreviewFrame((200, 100), box=(100, 20, 180, 60), background=background, alpha=alpha)
    jpeg, width, height = frame.render(np.full((5, 10, 3), (250, 0, 0), np.uint8))
    assert (width, height) == (200, 100)
    shown = jpeg_pixels(jpeg)
    assert shown[80, 20, 1] > 150 and shown[80, 20, 0] < 60  # outside the region: the image
    assert shown[40, 140, 0] > 190 and shown[40, 140, 1] < 60  # inside: the generated pixels


def test_inpaint_previews_cover_the_whole_image(engine):
    mask = np.zeros((64, 128), np.uint8)
    mask[16:48, 80:112] = 255
    _, progress = run(engine, "inpaint", {"image": rgba_payload(128, 64), "mask": grey_payload(mask)}, model="tiny",
                      width=64, height=64, steps=2)
    assert [(p[2], p[3]) for p in progress.previews] == [(128, 64), (128, 64)]


def test_taesd_makes_the_previews_when_configured(model_dirs, tmp_path, monkeypatch):
    taesd = demo.build_tiny_taesd(tmp_path / "taesd")
    fresh = Engine(EngineConfig(models=(ModelSpec("tiny", str(model_dirs["base"])),), device="cpu",
                                cache_folder=tmp_path, taesd={"sd15": str(taesd)}))
    _, progress = run(fresh, "txt2img", model="tiny", width=64, height=64, steps=2)
    assert fresh._taesd["sd15"] is not None
    decoder = fresh._latent_decoder(fresh.models.get("tiny")[0])
    assert decoder.taesd is fresh._taesd["sd15"]
    calls = []
    original = decoder.taesd.decode
    monkeypatch.setattr(decoder.taesd, "decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    _, progress = run(fresh, "txt2img", model="tiny", width=64, height=64, steps=3)
    assert len(calls) == 3 and len(progress.previews) == 3


def test_missing_taesd_falls_back_to_the_linear_map(model_dirs, tmp_path):
    fresh = Engine(EngineConfig(models=(ModelSpec("tiny", str(model_dirs["base"])),), device="cpu",
                                cache_folder=tmp_path, taesd={"sd15": str(tmp_path / "no-taesd-here")}))
    _, progress = run(fresh, "txt2img", model="tiny", width=64, height=64, steps=2)
    assert len(progress.previews) == 2 and fresh._taesd["sd15"] is None


def test_a_pickle_only_taesd_is_never_unpickled_without_the_unsafe_flag(model_dirs, tmp_path, caplog):
    """A TAESD folder holding only diffusion_pytorch_model.bin: previews fall back to the linear map
    with the reason in the log; --allow-unsafe-checkpoints loads it."""
    folder = demo.build_tiny_taesd(tmp_path / "taesd")
    state = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    spec = ModelSpec("tiny", str(model_dirs["base"]))
    fresh = Engine(EngineConfig(models=(spec,), device="cpu", cache_folder=tmp_path, taesd={"sd15": str(folder)}))
    with caplog.at_level("WARNING", logger="backend.engine"):
        _, progress = run(fresh, "txt2img", model="tiny", width=64, height=64, steps=2)
    assert len(progress.previews) == 2 and fresh._taesd["sd15"] is None
    assert "diffusion_pytorch_model.bin, a pickle-based file" in caplog.text and "--allow-unsafe-checkpoints" in caplog.text
    trusting = Engine(EngineConfig(models=(spec,), device="cpu", cache_folder=tmp_path, taesd={"sd15": str(folder)},
                                   allow_unsafe_checkpoints=True))
    run(trusting, "txt2img", model="tiny", width=64, height=64, steps=2)
    assert trusting._taesd["sd15"] is not None


def test_pump_keeps_order_drops_nothing_and_drain_waits():
    pump = PreviewPump()
    done: list[int] = []
    for index in range(20):
        pump.submit(lambda index=index: (time.sleep(0.001), done.append(index)))
    pump.drain()
    assert done == list(range(20))
    pump.close()


def test_pump_survives_a_failing_item(caplog):
    pump = PreviewPump()
    done: list[int] = []
    pump.submit(lambda: 1 / 0)
    pump.submit(lambda: done.append(1))
    pump.drain()
    assert done == [1] and "a step preview failed" in caplog.text
    pump.close()


def test_previews_are_made_off_the_worker_thread_and_all_arrive_before_run_returns(engine):
    threads: list[str] = []

    class Where(Recorder):
        def preview(self, *args):
            threads.append(threading.current_thread().name)
            super().preview(*args)

    _, progress = run(engine, "txt2img", model="tiny", width=64, height=64, steps=3, progress=Where())
    assert [p[0] for p in progress.previews] == [1, 2, 3]
    assert set(threads) == {"easel-previews"} and threading.current_thread().name not in threads
