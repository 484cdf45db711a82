"""SD 3.5 through the family registry, on a tiny random SD-3.5-shaped model built offline:
detection (folder; single files in both tensor layouts, headers only), its tasks through the
engine (previews, seeds, the negative prompt that CFG uses), cancel inside a transformer block,
and what it refuses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.engine import Engine, EngineConfig
from backend.errors import JobCancelledError, JobError
from backend.models import ModelSpec, family, inspect
from protocol import JobParams, Margins, SubmitJob
from protocol.errors import ErrorCode
from tiny_models import Recorder, cancelled_inside, grey_payload, pixels, rgba_payload


@pytest.fixture(scope="module")
def sd3_engine(tmp_path_factory):
    from backend.demo import build_tiny_sd3

    root = tmp_path_factory.mktemp("sd3")
    folder = build_tiny_sd3(root / "sd3")
    single = root / "sd3-transformer.safetensors"
    single.write_bytes((folder / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes())
    return Engine(EngineConfig(models=(ModelSpec("sd3", str(folder)), ModelSpec("sd3-file", str(single),
                                                                                config=str(folder))),
                               device="cpu", cache_folder=root, cache_size=2))


def run(engine, task, images=None, progress=None, **params):
    params = {"model": "sd3", "steps": 2, "seed": 4, **params}
    images = images or {}
    submit = SubmitJob("s", task, JobParams(**params), images={role: p.id for role, p in images.items()} or None)
    return engine.run(engine.prepare(submit, images), progress or Recorder())


def test_detection_and_declaration(sd3_engine):
    info = {i.id: i for i in sd3_engine.model_infos()}
    assert (info["sd3"].family, info["sd3"].default_width, info["sd3"].default_cfg) == ("sd3", 1024, 4.5)
    assert (info["sd3"].ignores, info["sd3"].samplers) == ((), ("euler",))  # CFG with a negative prompt
    assert info["sd3-file"].family == "sd3" and sd3_engine.models.facts("sd3-file").origin == "single_file"
    sd3 = family("sd3")
    assert (sd3.latent_channels, len(sd3.latent_rgb[0]), sd3.size_multiple, sd3.guidance) == (16, 16, 16, "cfg")


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("keys", [("joint_blocks.0.x_block.attn.qkv.weight", "x_embedder.proj.weight"),
                                  ("transformer_blocks.0.attn.to_q.weight", "pos_embed.proj.weight")])
def test_single_files_are_detected_from_their_tensor_names(tmp_path, prefix, keys):
    tensors = {prefix + key: torch.zeros(2, 2) for key in keys}
    save_file({**tensors, prefix + "context_embedder.weight": torch.zeros(8, 4096)}, str(tmp_path / "m.safetensors"))
    facts = inspect(ModelSpec("x", str(tmp_path / "m.safetensors")))
    assert (facts.family, facts.kind, facts.context_dim) == ("sd3", "base", 4096)


def test_txt2img_previews_seeds_and_the_negative_prompt(sd3_engine):
    progress = Recorder()
    output = run(sd3_engine, "txt2img", progress=progress, width=96, height=64, negative_prompt="blurry")
    image = pixels(output.images[0])
    assert image.shape == (64, 96, 4) and image[..., :3].std() > 1
    assert [p[:4] for p in progress.previews] == [(1, 2, 96, 64), (2, 2, 96, 64)]
    assert np.array_equal(pixels(run(sd3_engine, "txt2img", width=96, height=64, negative_prompt="blurry").images[0]),
                          image)
    other = pixels(run(sd3_engine, "txt2img", width=96, height=64, negative_prompt="sharp").images[0])
    assert not np.array_equal(other, image)  # the negative prompt is used (classifier-free guidance)


def test_a_single_transformer_file_makes_the_same_image(sd3_engine):
    folder = run(sd3_engine, "txt2img", width=64, height=64)
    single = run(sd3_engine, "txt2img", model="sd3-file", width=64, height=64)
    assert np.array_equal(pixels(folder.images[0]), pixels(single.images[0]))


def test_image_tasks(sd3_engine):
    assert pixels(run(sd3_engine, "img2img", {"image": rgba_payload(80, 56)}, width=64, height=64,
                      strength=0.5, steps=4).images[0]).shape == (56, 80, 4)
    image = rgba_payload(96, 64, seed=3, alpha=None)
    mask = np.zeros((64, 96), np.uint8)
    mask[16:48, 24:72] = 255
    result = pixels(run(sd3_engine, "inpaint", {"image": image, "mask": grey_payload(mask)}, width=64, height=64,
                        batch_size=2).images[1])
    assert np.array_equal(result[mask == 0], pixels(image)[mask == 0])
    assert pixels(run(sd3_engine, "outpaint", {"image": rgba_payload(64, 64)}, margins=Margins(left=16), width=64,
                      height=64).images[0]).shape == (64, 80, 4)


def test_a_cancel_stops_inside_a_transformer_block(sd3_engine):
    loaded, _ = sd3_engine.models.get("sd3")
    with cancelled_inside(loaded.root.transformer.transformer_blocks[0]) as progress:
        with pytest.raises(JobCancelledError):
            run(sd3_engine, "txt2img", progress=progress, width=64, height=64, steps=3)
    assert progress.steps == []  # stopped inside step 1, before the second block


def test_depth2img_is_refused_with_what_would_do_it(sd3_engine):
    with pytest.raises(JobError) as refused:
        sd3_engine.prepare(SubmitJob("d", "depth2img", JobParams(model="sd3"), images={"image": "x"}),
                           {"image": rgba_payload(64, 64)})
    assert refused.value.code is ErrorCode.UNSUPPORTED
    assert "an SD 3.5 model and cannot run depth2img" in refused.value.message and "SD 2.x depth" in refused.value.message
