"""Engine.run end to end on tiny real models: every task, seeds, previews, cancellation, OOM."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine import Engine, EngineConfig
from backend.errors import JobCancelledError, JobError
from backend.samplers import SAMPLERS
from protocol import ErrorCode, ImageFormat, Margins
from tiny_models import (  # noqa: F401 - engine and model_dirs are fixtures
    Recorder, depth_payload, engine, grey_payload, model_dirs, pixels, rgba_payload, run,
)

STAGES = {"load", "prepare", "denoise", "decode", "encode"}


def centre_mask(width: int, height: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4: height * 3 // 4, width // 4: width * 3 // 4] = 255
    return mask


@pytest.mark.parametrize("task, model, images, extra, size", [
    ("txt2img", "tiny", {}, {"width": 64, "height": 96}, (64, 96)),
    ("txt2img", "tiny-xl", {}, {"width": 64, "height": 64}, (64, 64)),
    ("img2img", "tiny", {"image": rgba_payload(80, 64)}, {}, (80, 64)),
    ("img2img", "tiny-xl", {"image": rgba_payload(64, 64)}, {}, (64, 64)),
    ("inpaint", "tiny", {"image": rgba_payload(64, 64), "mask": grey_payload(centre_mask(64, 64))}, {}, (64, 64)),
    ("inpaint", "tiny-inpaint", {"image": rgba_payload(64, 64), "mask": grey_payload(centre_mask(64, 64))}, {}, (64, 64)),
    ("outpaint", "tiny", {"image": rgba_payload(64, 64)}, {"margins": Margins(left=16, bottom=8)}, (80, 72)),
    ("depth2img", "tiny-depth", {"depth": depth_payload(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (48, 1)))},
     {}, (64, 48)),
    ("depth2img", "tiny-depth", {"depth": grey_payload(np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))),
                                 "image": rgba_payload(64, 64)}, {"strength": 0.5, "steps": 4}, (64, 64)),
])
def test_every_task_end_to_end(engine, task, model, images, extra, size):
    extra.setdefault("width", 64)
    extra.setdefault("height", 64)
    output, progress = run(engine, task, images, model=model, **extra)
    assert len(output.images) == 1 and output.seeds == [1]
    result = output.images[0]
    assert result.format is ImageFormat.RGBA8 and (result.width, result.height) == size
    assert STAGES <= set(output.timings)
    # A preview after every step that ran, each a JPEG of the result's aspect.
    total = progress.steps[-1][1]
    assert [p[0] for p in progress.previews] == list(range(1, total + 1))
    for step, preview_total, width, height, jpeg in progress.previews:
        assert preview_total == total
        with Image.open(io.BytesIO(jpeg)) as preview:
            assert preview.format == "JPEG" and preview.size == (width, height) == size


def test_same_request_same_pixels(engine):
    first, _ = run(engine, "txt2img", model="tiny", width=64, height=64, seed=42, sampler="euler_a")
    again, _ = run(engine, "txt2img", model="tiny", width=64, height=64, seed=42, sampler="euler_a")
    other, _ = run(engine, "txt2img", model="tiny", width=64, height=64, seed=43, sampler="euler_a")
    assert first.images[0].data == again.images[0].data
    assert first.images[0].data != other.images[0].data


def test_batch_seeds_count_up_and_each_image_is_its_seed(engine):
    batch, progress = run(engine, "txt2img", model="tiny", width=64, height=64, seed=7, batch_size=2)
    assert batch.seeds == [7, 8] and len(batch.images) == 2
    assert batch.images[0].data != batch.images[1].data
    single, _ = run(engine, "txt2img", model="tiny", width=64, height=64, seed=8)
    # The second image of the batch is the image of its seed alone (one CPU generator per image),
    # up to float rounding of a batched UNet.
    difference = np.abs(pixels(batch.images[1]).astype(int) - pixels(single.images[0]).astype(int))
    assert difference.max() <= 2


def test_png_results_are_lossless(engine):
    raw, _ = run(engine, "txt2img", model="tiny", width=64, height=64)
    png, _ = run(engine, "txt2img", model="tiny", width=64, height=64, result_format=ImageFormat.PNG)
    assert png.images[0].format is ImageFormat.PNG
    assert np.array_equal(pixels(png.images[0]), pixels(raw.images[0]))


def test_no_previews_when_not_asked_or_not_wanted(engine):
    _, progress = run(engine, "txt2img", model="tiny", width=64, height=64, previews=False)
    assert progress.previews == [] and len(progress.steps) == 2
    _, progress = run(engine, "txt2img", model="tiny", width=64, height=64, progress=Recorder(wants=False))
    assert progress.previews == [] and len(progress.steps) == 2


def test_previews_are_at_most_512_pixels(engine):
    _, progress = run(engine, "txt2img", model="tiny", width=1024, height=128, steps=1)
    assert [(p[2], p[3]) for p in progress.previews] == [(512, 64)]


def count_calls(monkeypatch, module, name: str) -> list[int]:
    calls: list[int] = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize("task, model, images", [
    ("txt2img", "tiny", {}),
    ("inpaint", "tiny-inpaint", {"image": rgba_payload(64, 64), "mask": grey_payload(centre_mask(64, 64))}),
])
def test_cancel_stops_within_one_step_and_skips_the_decode(engine, monkeypatch, task, model, images):
    loaded, _ = engine.models.get(model)
    decodes = count_calls(monkeypatch, loaded.root.vae, "decode")
    unet_steps = count_calls(monkeypatch, loaded.root.unet, "forward")
    with pytest.raises(JobCancelledError) as caught:
        run(engine, task, images, progress=Recorder(cancel_after=2), model=model, steps=6, width=64, height=64)
    assert (caught.value.step, caught.value.total) == (2, 6)
    assert len(unet_steps) == 2  # CFG runs both halves in one UNet call per step
    assert decodes == []
    # The pipeline is left reusable: the next job runs to the end.
    output, progress = run(engine, task, images, model=model, steps=3, width=64, height=64)
    assert len(progress.previews) == 3 and len(decodes) == 1


def test_cancel_before_the_first_step_runs_nothing(engine, monkeypatch):
    loaded, _ = engine.models.get("tiny")
    unet_steps = count_calls(monkeypatch, loaded.root.unet, "forward")
    with pytest.raises(JobCancelledError):
        run(engine, "txt2img", progress=Recorder(cancel_after=0), model="tiny", width=64, height=64)
    assert unet_steps == []


@pytest.mark.parametrize("error", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)"),
    RuntimeError("MPS backend out of memory (injected by the test)"),
])
def test_out_of_memory_is_a_typed_error_and_the_engine_keeps_working(engine, monkeypatch, error):
    loaded, _ = engine.models.get("tiny")

    def exhausted(*args, **kwargs):
        raise error  # injected: no machine here has a GPU to exhaust

    monkeypatch.setattr(loaded.root.unet, "forward", exhausted)
    with pytest.raises(JobError) as caught:
        run(engine, "txt2img", model="tiny", width=64, height=64)
    assert caught.value.code is ErrorCode.OUT_OF_MEMORY
    assert "smaller size or batch" in caught.value.message and "--offload" in caught.value.message
    monkeypatch.undo()
    output, _ = run(engine, "txt2img", model="tiny", width=64, height=64)
    assert len(output.images) == 1


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs(engine, sampler):
    output, progress = run(engine, "txt2img", model="tiny", width=64, height=64, sampler=sampler, steps=2)
    assert len(output.images) == 1 and progress.previews
    loaded, _ = engine.models.get("tiny")
    scheduler = loaded.scheduler(sampler)
    assert type(scheduler).__name__ == SAMPLERS[sampler][0]
    assert loaded.scheduler(sampler) is scheduler  # one instance per (model, sampler)


def test_the_pipeline_takes_each_jobs_sampler_and_a_repeated_one_gives_the_same_pixels(engine):
    """The scheduler is set on the pipeline only when it changes: switching samplers still switches
    it (the pipeline's config says which), and a sampler used again after another starts afresh."""
    loaded, _ = engine.models.get("tiny")
    pipe = loaded.pipeline("txt2img")
    first, _ = run(engine, "txt2img", model="tiny", width=64, height=64, seed=5, sampler="euler", steps=2)
    assert pipe.scheduler is loaded.scheduler("euler") and pipe.config["scheduler"][1] == SAMPLERS["euler"][0]
    run(engine, "txt2img", model="tiny", width=64, height=64, seed=5, sampler="ddim", steps=3)
    assert pipe.scheduler is loaded.scheduler("ddim") and pipe.config["scheduler"][1] == SAMPLERS["ddim"][0]
    again, _ = run(engine, "txt2img", model="tiny", width=64, height=64, seed=5, sampler="euler", steps=2)
    assert pipe.scheduler is loaded.scheduler("euler") and pipe.config["scheduler"][1] == SAMPLERS["euler"][0]
    assert again.images[0].data == first.images[0].data

def test_karras_and_sde_settings_reach_the_scheduler(engine):
    loaded, _ = engine.models.get("tiny")
    assert loaded.scheduler("dpmpp_2m_karras").config.use_karras_sigmas is True
    assert loaded.scheduler("dpmpp_2m").config.use_karras_sigmas is False
    assert loaded.scheduler("dpmpp_2m_sde_karras").config.algorithm_type == "sde-dpmsolver++"
    assert loaded.scheduler("ddim").config.clip_sample is False
    # The model's own schedule carries over (SD's scaled-linear betas).
    assert loaded.scheduler("euler").config.beta_schedule == "scaled_linear"


def test_demo_model_builds_offline_and_runs(tmp_path):
    demo = Engine(EngineConfig(device="cpu", cache_folder=tmp_path))
    output, progress = run(demo, "txt2img", steps=2, width=64, height=64)
    assert len(output.images) == 1 and len(progress.previews) == 2
    assert (tmp_path / "demo-v1" / "base" / "model_index.json").is_file()
    depth = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    output, _ = run(demo, "depth2img", {"depth": depth_payload(depth)}, steps=2, width=64, height=64)
    assert (output.images[0].width, output.images[0].height) == (64, 64)


# --------------------------------------------------------------------------- announced steps


@pytest.mark.parametrize("task, images, params, expected", [
    ("txt2img", {}, {"steps": 3}, 3),
    ("txt2img", {}, {"steps": 3, "sampler": "heun"}, 5),  # second order: twice per step but the last
    ("img2img", {"image": rgba_payload(64, 64)}, {"steps": 10, "strength": 0.6}, 6),
    ("img2img", {"image": rgba_payload(64, 64)}, {"steps": 4, "strength": 0.3}, 1),
    ("img2img", {"image": rgba_payload(64, 64)}, {"steps": 4, "strength": 0.6, "sampler": "heun"}, 3),
    ("inpaint", {"image": rgba_payload(64, 64), "mask": grey_payload(centre_mask(64, 64))},
     {"steps": 5, "strength": 0.5}, 2),
    # 128x128 in tiles of 64 with an overlap of 16: 3 x 3 tiles, 4 per call, so 3 calls of 2 steps.
    ("upscale", {"image": rgba_payload(64, 64)}, {"steps": 2, "strength": 1.0, "upscale_factor": 2.0}, 6),
    ("preprocess", {"image": rgba_payload(64, 64)}, {"preprocessor": "canny"}, 1),
], ids=["txt2img", "heun", "img2img-10x0.6", "img2img-4x0.3", "img2img-heun", "inpaint", "upscale", "preprocess"])
def test_announced_steps_are_the_steps_that_run(engine, task, images, params, expected):
    """job_started.steps (PreparedJob.steps) equals the total every step report and preview counts to,
    and that many steps run: ``int(steps * strength)`` of the steps asked for (docs/protocol.md 11.2)."""
    from tiny_models import submit

    if task != "preprocess":
        params = {"model": "tiny", "width": 64, "height": 64, **params}
    job, imgs = submit(task, images, **params)
    prepared = engine.prepare(job, imgs)
    progress = Recorder()
    engine.run(prepared, progress)
    assert prepared.steps == expected
    assert progress.steps == [(step, expected) for step in range(1, expected + 1)]
    if task != "preprocess":
        assert {total for _, total, *_ in progress.previews} == {expected}


def test_callback_steps_match_every_schedulers_timesteps():
    """The count the engine announces without a model agrees with diffusers' own schedulers: the
    img2img pipelines keep ``timesteps[t_start * order:]`` with ``t_start = steps - int(steps * strength)``
    and call back once per entry."""
    from backend.samplers import callback_steps, make_scheduler

    config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "steps_offset": 1, "clip_sample": False, "set_alpha_to_one": False, "prediction_type": "epsilon"}
    for sampler in SAMPLERS:
        scheduler = make_scheduler(sampler, config)
        for steps in (1, 2, 3, 7, 10, 25, 50):
            scheduler.set_timesteps(steps)
            for strength in (0.3, 0.6, 1.0):
                run_steps = min(int(steps * strength), steps)
                if run_steps < 1:
                    continue  # refused before it runs
                kept = scheduler.timesteps[(steps - run_steps) * scheduler.order:]
                assert callback_steps(sampler, run_steps) == len(kept), (sampler, steps, strength)
