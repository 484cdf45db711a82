"""Preprocessors from controlnet-aux: the three that need no weights run for real; every other one
answers at once, offline, with a typed error naming the download — with the network blocked, so a
download attempt would fail the test instead of hanging it. One weight-needing preprocessor (HED)
also runs from a Hugging Face cache folder made here with random weights, proving the cache path.
And the preprocess task end to end."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest

from backend.engine import Engine, EngineConfig
from backend.errors import JobError
from backend.preprocessors import ANNOTATORS_REPO, PREPROCESSORS, Preprocessors, missing_files
from protocol import ErrorCode, ImageFormat, ImagePayload, JobParams, SubmitJob
from tiny_guidance import guided_dirs, guided_engine, square_image  # noqa: F401 - fixtures
from tiny_models import Recorder, model_dirs, pixels, rgba_payload  # noqa: F401 - fixture

OFFLINE = [name for name, pre in PREPROCESSORS.items() if pre.offline]
NEEDS_WEIGHTS = [name for name, pre in PREPROCESSORS.items() if not pre.offline]


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache and no network: any attempt to connect raises at once."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def refuse(*args, **kwargs):
        raise AssertionError("a preprocessor tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tmp_path / "hub"


def square(width: int = 96, height: int = 64) -> np.ndarray:
    return pixels(square_image(width, height))[..., :3]


def test_the_offline_three_are_the_documented_three():
    assert OFFLINE == ["canny", "lineart_standard", "shuffle"]
    assert {"depth_midas", "depth_zoe", "openpose", "lineart", "softedge_hed", "normal_bae", "mlsd"} <= set(NEEDS_WEIGHTS)


def test_canny_finds_the_edges_of_a_square(empty_hf_cache):
    image = square()
    edges = Preprocessors().run("canny", image)
    assert edges.shape == image.shape and edges.dtype == np.uint8
    assert not np.array_equal(edges, image)
    grey = edges[..., 0]
    assert set(np.unique(grey)) <= {0, 255} and np.array_equal(edges[..., 0], edges[..., 2])
    border = np.zeros(grey.shape, bool)  # the square spans x 24..72, y 16..48: its outline, ±2 px
    for x0, x1, y0, y1 in ((22, 27, 14, 51), (69, 74, 14, 51), (22, 74, 14, 19), (22, 74, 45, 50)):
        border[y0:y1, x0:x1] = True
    assert grey[border].max() == 255 and grey[~border].max() == 0  # edges exactly on the outline
    assert (grey[border] == 255).sum() > 100


def test_lineart_standard_draws_the_outline(empty_hf_cache):
    image = square()
    lines = Preprocessors().run("lineart_standard", image)
    assert lines.shape == image.shape
    grey = lines[..., 0].astype(int)
    inside, outside = grey[24:40, 36:60], grey[:8, :8]
    ring = np.concatenate([grey[14:18, 24:72].ravel(), grey[46:50, 24:72].ravel()])
    assert ring.mean() > inside.mean() + 20 and ring.mean() > outside.mean() + 20


def test_shuffle_moves_the_content_repeatably(empty_hf_cache):
    image = pixels(rgba_payload(64, 64, seed=4))[..., :3]
    runner = Preprocessors()
    first = runner.run("shuffle", image, seed=5)
    again = Preprocessors().run("shuffle", image, seed=5)
    other = runner.run("shuffle", image, seed=6)
    assert first.shape == image.shape and not np.array_equal(first, image)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    state = np.random.get_state()[1].copy()
    runner.run("shuffle", image, seed=7)
    assert np.array_equal(np.random.get_state()[1], state)  # numpy's global generator is left as it was


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", NEEDS_WEIGHTS)
def test_weights_not_here_is_a_typed_error_at_once(empty_hf_cache, name):
    with pytest.raises(JobError) as caught:
        Preprocessors().run(name, square())
    err = caught.value
    assert err.code is ErrorCode.MODEL_UNAVAILABLE and err.details["preprocessor"] == name
    files = " ".join(PREPROCESSORS[name].files)
    assert f"`hf download {ANNOTATORS_REPO} {files}`" in err.message
    assert "canny, lineart_standard and shuffle work offline" in err.message


def cache_hed(hub: Path, extra: object = None) -> None:
    """A randomly initialised HED network as ControlNetHED.pth in a cache laid out the way
    huggingface_hub writes it (refs/main → snapshot); ``extra`` is pickled into the file beside
    the weights."""
    import torch
    from controlnet_aux.hed import ControlNetHED_Apache2

    snapshot = hub / f"models--{ANNOTATORS_REPO.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(0)
    weights = ControlNetHED_Apache2().state_dict()
    torch.save(weights if extra is None else {**weights, "extra": extra}, snapshot / "ControlNetHED.pth")


class RunsCode:
    """Unpickled in full, this makes the folder ``marker``: what a hostile checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_cached_annotator_runs_without_the_network(empty_hf_cache):
    """softedge_hed from the cache, holding a randomly initialised HED network: controlnet-aux reads
    it as a local folder, with torch's weights-only unpickler."""
    from backend.preprocessors import weights_only_by_default

    cache_hed(empty_hf_cache)
    assert missing_files(PREPROCESSORS["softedge_hed"]) == [] and weights_only_by_default()
    image = square(64, 64)
    soft = Preprocessors().run("softedge_hed", image)
    assert soft.shape == image.shape and soft.dtype == np.uint8


def test_an_annotator_file_that_runs_code_is_refused(empty_hf_cache, tmp_path):
    marker = tmp_path / "the-file-ran-code"
    cache_hed(empty_hf_cache, RunsCode(marker))
    with pytest.raises(JobError) as caught:
        Preprocessors().run("softedge_hed", square(64, 64))
    err = caught.value
    assert err.code is ErrorCode.MODEL_UNAVAILABLE and err.details["preprocessor"] == "softedge_hed"
    assert "hold more than tensors" in err.message and "weights-only unpickler" in err.message
    assert not marker.exists()


def test_an_annotator_linked_out_of_the_cache_is_not_read(empty_hf_cache, tmp_path):
    """A cached annotator swapped for a link to a file outside the cache's folder for the
    Annotators repo (after the scan, before the open) is refused by its real path, never loaded."""
    cache_hed(empty_hf_cache)
    snapshot = next((empty_hf_cache / f"models--{ANNOTATORS_REPO.replace('/', '--')}" / "snapshots").iterdir())
    outside = tmp_path / "elsewhere.pth"
    (snapshot / "ControlNetHED.pth").rename(outside)  # a good weights file, but outside the folder
    (snapshot / "ControlNetHED.pth").symlink_to(outside)
    with pytest.raises(JobError) as caught:
        Preprocessors().run("softedge_hed", square(64, 64))
    err = caught.value
    assert err.code is ErrorCode.MODEL_UNAVAILABLE and err.details["preprocessor"] == "softedge_hed"
    assert "points outside its folder" in err.message and "ControlNetHED.pth" in err.message


def test_an_annotator_is_recognised_by_its_content(empty_hf_cache):
    """A .pth that holds no weights (text, here) is refused by what it holds, before any loader
    reads it; the cache's own links into its blobs (how huggingface_hub stores files) are fine."""
    cache_hed(empty_hf_cache)
    repo = empty_hf_cache / f"models--{ANNOTATORS_REPO.replace('/', '--')}"
    snapshot = next((repo / "snapshots").iterdir())
    (repo / "blobs").mkdir()
    (snapshot / "ControlNetHED.pth").rename(repo / "blobs" / "abc")
    (snapshot / "ControlNetHED.pth").symlink_to(Path("..", "..", "blobs", "abc"))
    assert Preprocessors().run("softedge_hed", square(64, 64)).shape == (64, 64, 3)
    (repo / "blobs" / "abc").write_text("not weights at all")
    with pytest.raises(JobError) as caught:
        Preprocessors().run("softedge_hed", square(64, 64))
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE and "holds no weights" in caught.value.message


def test_annotators_are_refused_where_torch_load_unpickles_in_full(empty_hf_cache, tmp_path, monkeypatch):
    """The environment can turn torch's weights-only default off; then no annotator loads without
    --allow-unsafe-checkpoints, and with it the file loads as the environment says."""
    from backend.preprocessors import weights_only_by_default

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    assert not weights_only_by_default()
    marker = tmp_path / "the-file-ran-code"
    cache_hed(empty_hf_cache, RunsCode(marker))
    with pytest.raises(JobError) as caught:
        Preprocessors().run("softedge_hed", square(64, 64))
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in caught.value.message and "--allow-unsafe-checkpoints" in caught.value.message
    assert not marker.exists()
    # The server's flag reaches the preprocessors: unpickled in full, the code ran, then HED refused the
    # extra key, which is a typed error too.
    trusting = Engine(EngineConfig(device="cpu", cache_folder=tmp_path / "cache", allow_unsafe_checkpoints=True))
    with pytest.raises(JobError) as caught:
        trusting.run(preprocess_job(trusting, square_image(64, 64), preprocessor="softedge_hed"), Recorder())
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE and "Error(s) in loading state_dict" in caught.value.message
    assert "hf download" in caught.value.message
    assert marker.is_dir()


# --------------------------------------------------------------------------- the preprocess task


def preprocess_job(engine: Engine, payload: ImagePayload, **params):
    submit = SubmitJob("pre", "preprocess", JobParams(**params), images={"image": payload.id})
    return engine.prepare(submit, {"image": payload})


def test_preprocess_task_returns_the_control_image(guided_engine):
    payload = square_image(96, 64)
    progress = Recorder()
    prepared = preprocess_job(guided_engine, payload, preprocessor="canny")
    assert prepared.steps == 1  # what JobStarted announces, as the progress reports
    output = guided_engine.run(prepared, progress)
    result = pixels(output.images[0])
    expected = Preprocessors().run("canny", pixels(payload)[..., :3])
    assert result.shape == (64, 96, 4) and (result[..., 3] == 255).all()
    assert np.array_equal(result[..., :3], expected)
    assert progress.steps == [(1, 1)] and output.timings["preprocess"] > 0
    assert "preprocess" in guided_engine.capabilities().tasks
    assert guided_engine.capabilities().preprocessors == tuple(PREPROCESSORS)


def test_preprocess_reads_transparency_as_white_paper(guided_engine):
    lines = np.zeros((64, 64, 4), np.uint8)  # black strokes on an empty (transparent) layer
    lines[30:34, 8:56] = (0, 0, 0, 255)
    payload = ImagePayload(ImageFormat.RGBA8, 64, 64, lines.tobytes())
    output = guided_engine.run(preprocess_job(guided_engine, payload, preprocessor="canny"), Recorder())
    edges = pixels(output.images[0])[..., 0]
    assert edges[26:38, 8:56].max() == 255 and edges[:20].max() == 0


@pytest.mark.parametrize("params, message", [
    ({}, "a preprocess job needs params.preprocessor"),
    ({"preprocessor": "sobel"}, "unknown preprocessor 'sobel'; use one of: canny, lineart_standard, shuffle, depth_midas"),
    ({"preprocessor": "canny", "batch_size": 2}, "preprocess makes one image; send batch_size 1, got 2"),
])
def test_bad_preprocess_jobs(guided_engine, params, message):
    with pytest.raises(JobError) as caught:
        preprocess_job(guided_engine, square_image(64, 64), **params)
    assert caught.value.code is ErrorCode.INVALID_PARAMETER and caught.value.message.startswith(message)


def test_preprocessor_on_another_task_is_refused(guided_engine):
    with pytest.raises(JobError, match="params.preprocessor is for the preprocess task; to preprocess a control image in a "
                                       "txt2img job, set the control unit's preprocessor"):
        guided_engine.prepare(SubmitJob("j", "txt2img", JobParams(model="tiny", preprocessor="canny")), {})


@pytest.mark.timeout(60)
def test_preprocess_task_offline_error_needs_no_model(empty_hf_cache, tmp_path):
    demo = Engine(EngineConfig(device="cpu", cache_folder=tmp_path / "cache"))
    with pytest.raises(JobError) as caught:
        demo.run(preprocess_job(demo, square_image(64, 64), preprocessor="depth_midas"), Recorder())
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE
    assert demo.models.loaded_ids() == () and not (tmp_path / "cache").exists()
