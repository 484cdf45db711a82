"""Regions and references inside the engine: the region weights, the masked cross-attention of a
real (tiny, random) UNet observed layer by layer, Flux's joint-attention mask, and SDXL with a
region and a reference. The end-to-end figures through the server: test_references_server.py."""
from __future__ import annotations

import math

import numpy as np
import pytest

from backend.engine import Engine, EngineConfig
from backend.guides import Guidance, RefTokens, region_weights
from protocol import JobParams, SubmitJob
from protocol.messages import ReferenceImage, Region
from tiny_models import (  # noqa: F401
    Recorder, cancelled_inside, engine, grey_payload, model_dirs, pixels, rgba_payload, specs,
)


def test_region_weights_feather_share_overlaps_and_leave_the_rest_to_the_base_prompt():
    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    middle = np.zeros((64, 64), np.uint8)
    middle[:, 16:48] = 255
    weights = region_weights([left, middle], (64, 64))
    assert weights.shape == (3, 64, 64)
    assert np.allclose(weights.sum(axis=0), 1.0, atol=1e-5)
    assert weights[1, 10, 2] == pytest.approx(1.0, abs=1e-3) and weights[0, 10, 2] == pytest.approx(0.0, abs=1e-3)
    assert weights[1, 10, 24] == pytest.approx(0.5, abs=1e-3) == weights[2, 10, 24]  # overlap: shared
    assert weights[0, 10, 62] == pytest.approx(1.0, abs=1e-3)  # no region: the base prompt
    edge = weights[2, 10, 44:52]  # the middle region's right border fades over a few pixels
    assert edge[0] > 0.9 and edge[-1] < 0.1 and np.all(np.diff(edge) <= 0) and 0.2 < edge[4] < 0.8


def _first_cross_attention(engine: Engine, size: int, **params) -> np.ndarray:
    """|output| of the first cross-attention layer of the UNet at its first call (the conditional
    half), as (tokens,) per channel-summed magnitude, for a txt2img job."""
    model, _ = engine.models.get("tiny")
    layer = next(m for n, m in model.root.unet.named_modules() if n.endswith("attn2"))
    seen = []
    handle = layer.register_forward_hook(lambda module, args, out: seen.append(out.detach().clone()))
    masks = {p.id: p for p in params.pop("payloads", ())}
    try:
        submit = SubmitJob("j", "txt2img", JobParams(model="tiny", width=size, height=size, steps=2, seed=3, **params))
        engine.run(engine.prepare(submit, masks), Recorder())
    finally:
        handle.remove()
    return seen[0][-1]  # (tokens, channels): the positive prompt's row


def test_a_region_prompt_changes_the_cross_attention_only_inside_its_mask(engine):
    """``region_mode`` "attention": the first cross-attention layer sees the same latents in both
    jobs; changing the left region's prompt changes its output at 98 % inside the left half (by feathered weight) — the
    rest is the feathered border; changing the same words unmasked changes it everywhere (~50 %)."""
    size = 128
    left = np.zeros((size, size), np.uint8)
    left[:, : size // 2] = 255
    masks = [grey_payload(left), grey_payload(255 - left)]

    def regions(first: str):
        return (Region(masks[0].id, first), Region(masks[1].id, "a blue sky"))

    def inside(a, b) -> float:
        change = (a - b).abs().sum(-1)
        side = int(math.isqrt(change.numel()))
        weight = region_weights([left, 255 - left], (size, size))[1]
        import torch

        pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(weight)[None, None], (side, side))[0, 0]
        return float((change.reshape(side, side) * pooled).sum() / change.sum())

    masked = inside(_first_cross_attention(engine, size, prompt="a field", regions=regions("a red dog"), payloads=masks,
                                           region_mode="attention"),
                    _first_cross_attention(engine, size, prompt="a field", regions=regions("a green house"),
                                           payloads=masks, region_mode="attention"))
    unmasked = inside(_first_cross_attention(engine, size, prompt="a red dog"),
                      _first_cross_attention(engine, size, prompt="a green house"))
    assert masked >= 0.95, masked
    assert unmasked < 0.7, unmasked


def test_the_unet_self_attention_is_biased_toward_each_token_s_region_while_the_layout_forms(engine):
    """The tiny UNet's first self-attention layer (8×8 tokens for a 128² image), wrapped as a job with
    a left and a right region wraps it: the right half's tokens change; the left half's outputs change
    through attention only, and the bias (+2 within a region) cuts that change to under half of the
    unbiased layer's (measured: 26 %). Past the first 30 % of the steps the layer runs as it was."""
    import torch

    from backend import guides

    model, _ = engine.models.get("tiny")
    attn = next(m for n, m in model.root.unet.named_modules() if n.endswith("attn1"))
    left = np.zeros((128, 128), np.uint8)
    left[:, :64] = 255
    guidance = Guidance(pipe=None, denoiser="unet", weights=region_weights([left, 255 - left], (128, 128)),
                        region_embeds=[torch.zeros(1, 2, 32)] * 2, references=[], images=1)
    layer = guides.RegionalSelfAttention(attn.processor, guidance)
    bias = guidance.self_bias(64, torch.zeros(1))
    assert bias.shape == (64, 64) and bias.stride(0) % 16 == 0
    assert bias[0, 1].item() == pytest.approx(guides.SELF_ATTENTION_BIAS, abs=1e-3) and bias[0, 7].item() < 1e-3
    generator = torch.Generator().manual_seed(0)
    before = torch.randn(1, 64, attn.to_q.in_features, generator=generator)
    after = before.clone().reshape(1, 8, 8, -1)
    after[:, :, 4:] += torch.randn(after[:, :, 4:].shape, generator=generator)
    after = after.reshape(1, 64, -1)

    def left_change(processor) -> float:
        with torch.no_grad():
            change = (processor(attn, after) - processor(attn, before)).abs().sum(-1).reshape(8, 8)
        return float(change[:, :3].sum())

    biased, plain = left_change(layer), left_change(attn.processor)
    assert 0 < biased < 0.5 * plain, (biased, plain)
    guidance.step = 1  # of 1 (no pipeline: one step): past SELF_ATTENTION_END
    with torch.no_grad():
        assert torch.equal(layer(attn, after), attn.processor(attn, after))


def test_flux_joint_attention_mask_keeps_each_prompt_to_its_region():
    """One region on the left half of a 64² Flux image (4×4 image tokens), prompts of 3 tokens, a
    Redux reference of 2 tokens at weight 2 guiding the first half of the steps."""
    import torch

    left = np.zeros((64, 64), np.uint8)
    left[:, :32] = 255
    weights = region_weights([left], (64, 64))
    ref = RefTokens(torch.zeros(1, 2, 8), None, 2.0, 0.0, 0.5)
    guidance = Guidance(pipe=None, denoiser="transformer", weights=weights, region_embeds=[torch.zeros(1, 3, 8)],
                        references=[ref], images=1)
    guidance._groups = [3, 3, 2]
    bias = guidance._flux_bias([2.0])
    text = 8
    assert bias.shape == (text + 16, text + 16)
    image = bias[text:]  # image tokens' rows; token k is at row k // 4, column k % 4
    left_token, right_token = 4 * 1 + 0, 4 * 1 + 3
    assert torch.isinf(image[right_token, 3:6]).all() and image[right_token, 0:3].abs().max() < 1e-3
    assert image[left_token, 3:6].abs().max() < 1e-3 and torch.isinf(image[left_token, 0:3]).all()
    assert torch.allclose(image[:, 6:8], torch.full((16, 2), math.log(2.0)))  # the reference: weight 2 everywhere
    assert torch.isinf(bias[0:3, 3:8]).all() and torch.isinf(bias[3:6, 0:3]).all()  # prompts stay apart
    assert torch.isinf(bias[3:6, text + right_token]).all() and bias[3:6, text + left_token].abs().max() < 1e-3
    assert torch.isinf(guidance._flux_bias([0.0])[text:, 6:8]).all()  # outside its range: not attended to
    assert ref.scale(0, 4) == 2.0 and ref.scale(1, 4) == 2.0 and ref.scale(2, 4) == 0.0


def test_sdxl_takes_a_region_and_a_reference(model_dirs, tmp_path):
    import torch

    from backend.demo_references import build_tiny_ip_adapter

    build_tiny_ip_adapter(model_dirs["sdxl"], tmp_path / "models" / "ipadapter" / "xl-ip.safetensors")
    engine = Engine(EngineConfig(models=specs(model_dirs)[3:4], device="cpu", cache_folder=tmp_path / "cache",
                                 models_dirs=(tmp_path,)))
    assert [(m.id, m.family) for m in engine.model_infos() if m.kind == "reference"] == [("xl-ip", "sdxl")]
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    mask, ref = grey_payload(half), rgba_payload(32, 32, seed=4)

    def run(**params) -> np.ndarray:
        submit = SubmitJob("x", "txt2img", JobParams(model="tiny-xl", prompt="a boat", width=64, height=64, steps=2,
                                                     seed=2, **params))
        return pixels(engine.run(engine.prepare(submit, {mask.id: mask, ref.id: ref}), Recorder()).images[0])

    plain = run()
    unet = engine.models.get("tiny-xl")[0].root.unet
    added: list = []  # what the UNet's added-conditioning embedding sees: [pooled text, time ids] per row
    handle = unet.add_embedding.register_forward_pre_hook(lambda module, args: added.append(args[0].clone()))
    try:
        region = run(regions=(Region(mask.id, "a red kite"),))
    finally:
        handle.remove()
    both = run(regions=(Region(mask.id, "a red kite", (ReferenceImage(ref.id, 0.8),)),))
    one_pass = run(regions=(Region(mask.id, "a red kite"),), region_mode="attention")
    assert not np.array_equal(plain, region) and not np.array_equal(region, both)
    assert not np.array_equal(region, one_pass)
    assert np.array_equal(run(), plain)
    # "separate": the first step runs widened (negative, base, region); the region's row has its own
    # pooled prompt, the time ids repeated; the second step is one pass of 2 rows.
    assert [len(rows) for rows in added] == [3, 2]
    width = engine.models.get("tiny-xl")[0].root.text_encoder_2.config.projection_dim
    pooled, times = added[0][:, :width], added[0][:, width:]
    assert not torch.equal(pooled[1], pooled[2]) and torch.equal(times[1], times[2])


def test_an_ip_adapter_is_served_only_with_a_fitting_image_encoder(model_dirs, tmp_path):
    import shutil

    from backend.catalog import scan
    from backend.demo_references import build_tiny_ip_adapter

    file = build_tiny_ip_adapter(model_dirs["base"], tmp_path / "models" / "ipadapter" / "ip.safetensors")
    found = {f.path: f for f in scan([tmp_path]).found}
    assert (found[file].status, found[file].id, found[file].family) == ("served", "ip", "")
    assert found[file.parent / "image_encoder"].kind == "clip_vision"
    shutil.rmtree(file.parent / "image_encoder")
    alone = {f.path: f for f in scan([tmp_path]).found}[file]
    assert alone.status == "listed" and not alone.id
    assert "no CLIP vision image encoder 16 wide was found beside it" in alone.reason


def test_adapter_variants_are_read_from_the_header():
    from backend.references import adapter_needs

    def header(**shapes):
        return {name.replace("__", "."): {"shape": shape} for name, shape in shapes.items()}

    plain = header(image_proj__proj__weight=[3072, 1024], image_proj__norm__weight=[768],
                   ip_adapter__1__to_k_ip__weight=[320, 768])
    plus = header(image_proj__latents=[1, 16, 768], image_proj__proj_in__weight=[768, 1280],
                  ip_adapter__1__to_k_ip__weight=[320, 768])
    full_face = header(**{"image_proj__proj__0__weight": [1280, 1280], "image_proj__proj__3__weight": [2048]},
                       ip_adapter__1__to_k_ip__weight=[640, 2048])
    redux = header(redux_up__weight=[12288, 1152], redux_down__weight=[4096, 12288])
    assert adapter_needs(plain, "ip-adapter_sd15.safetensors") == ("ip_adapter", 768, "clip", 1024)
    assert adapter_needs(plus, "ip-adapter-plus_sd15.safetensors") == ("ip_adapter_plus", 768, "clip", 1280)
    assert adapter_needs(plus, "ip-adapter-plus-face_sd15.safetensors")[0] == "ip_adapter_face"
    assert adapter_needs(full_face, "ip-adapter-full-face.safetensors") == ("ip_adapter_face", 2048, "clip", 1280)
    assert adapter_needs(redux, "flux1-redux-dev.safetensors") == ("redux", 4096, "siglip", 1152)
    face_id = dict(plain, **header(ip_adapter__1__to_k_lora__down__weight=[4, 768]))
    assert "FaceID" in adapter_needs(face_id, "ip-adapter-faceid_sd15.safetensors")


def test_the_demo_server_offers_reference_adapters_built_on_first_use(tmp_path):
    engine = Engine(EngineConfig(device="cpu", cache_folder=tmp_path))
    refs = [(m.id, m.family, m.control_type, m.demo) for m in engine.model_infos() if m.kind == "reference"]
    assert refs == [("demo-ip-adapter", "demo", "ip_adapter", True), ("demo-redux", "flux", "redux", True)]
    assert not any(tmp_path.rglob("*.safetensors"))  # listed before anything is built
    ref = rgba_payload(32, 32, seed=4)
    for model in ("demo", "demo-flux"):
        def run(**params) -> np.ndarray:
            submit = SubmitJob("d", "txt2img", JobParams(model=model, width=64, height=64, steps=2, seed=2, **params))
            return pixels(engine.run(engine.prepare(submit, {ref.id: ref}), Recorder()).images[0])

        assert not np.array_equal(run(), run(references=(ReferenceImage(ref.id),)))


def test_separate_passes_take_batches_cancel_inside_a_step_and_leave_the_unet_as_it_was(engine):
    """Two images per prompt, two regions, "separate" on the inpainting UNet (9 channels: the mask
    and masked image repeat with the sample): the first half of the steps runs 2 + 3 × 2 = 8 rows.
    A cancel inside the widened call stops the job; the UNet's forward and processors are restored
    exactly, and the same job then gives the bytes it gave before."""
    from backend.errors import JobCancelledError

    size = 64
    left = np.zeros((size, size), np.uint8)
    left[:, : size // 2] = 255
    masks = [grey_payload(left), grey_payload(255 - left)]
    image, inpaint = rgba_payload(size, size, seed=1), grey_payload(np.full((size, size), 255, np.uint8))
    payloads = {"image": image, "mask": inpaint, **{p.id: p for p in masks}}
    model, _ = engine.models.get("tiny-inpaint")
    unet = model.root.unet
    processors = dict(unet.attn_processors)

    def submit() -> SubmitJob:
        regions = (Region(masks[0].id, "a red dog"), Region(masks[1].id, "a blue sky"))
        return SubmitJob("c", "inpaint", JobParams(model="tiny-inpaint", width=size, height=size, steps=4, seed=8,
                                                   batch_size=2, regions=regions),
                         images={"image": image.id, "mask": inpaint.id})

    rows: list[int] = []
    handle = unet.conv_in.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        first = engine.run(engine.prepare(submit(), payloads), Recorder())
        assert rows == [8, 8, 4, 4] and len(first.images) == 2
        assert not np.array_equal(pixels(first.images[0]), pixels(first.images[1]))
        rows.clear()
        with cancelled_inside(unet.down_blocks[0]) as progress, pytest.raises(JobCancelledError):
            engine.run(engine.prepare(submit(), payloads), progress)
        assert rows == [8] and progress.steps == []  # stopped inside the first, widened call
    finally:
        handle.remove()
    assert "forward" not in unet.__dict__ and dict(unet.attn_processors) == processors
    again = engine.run(engine.prepare(submit(), payloads), Recorder())
    assert [i.data for i in again.images] == [i.data for i in first.images]


def test_a_region_prompt_longer_than_the_base_prompt_runs_in_a_call_of_its_own(engine):
    """Embeddings of another length cannot share a batch: a region prompt over 75 tokens (two chunks)
    runs in a second UNet call per step (its rows only); the picture is still the blend."""
    size = 64
    left = np.zeros((size, size), np.uint8)
    left[:, : size // 2] = 255
    masks = [grey_payload(left), grey_payload(255 - left)]
    model, _ = engine.models.get("tiny")
    rows: list[int] = []
    handle = model.root.unet.conv_in.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    long_prompt = " ".join(["a red dog"] * 40)
    try:
        def run(first: str) -> np.ndarray:
            regions = (Region(masks[0].id, first), Region(masks[1].id, "a blue sky"))
            submit = SubmitJob("l", "txt2img", JobParams(model="tiny", width=size, height=size, steps=2, seed=4,
                                                         regions=regions))
            return pixels(engine.run(engine.prepare(submit, {m.id: m for m in masks}), Recorder()).images[0])

        long_one = run(long_prompt)
        assert rows == [3, 1, 2]  # step 1: negative + base + region 2, then region 1; step 2: one pass
        assert not np.array_equal(long_one, run("a red dog"))
    finally:
        handle.remove()


def test_separate_passes_never_run_more_rows_in_one_call_than_the_memory_plan_lets_it(engine, model_dirs, tmp_path):
    """The memory plan counts the pipeline's own rows (negative + base); regions kept apart widen the
    call. On a budget with room for 3 rows per call, 2 regions (4 rows) run as 3 + 1 in the
    separate steps, and the picture is the one the unlimited engine makes (within float noise)."""
    size = 64
    left = np.zeros((size, size), np.uint8)
    left[:, : size // 2] = 255
    masks = [grey_payload(left), grey_payload(255 - left)]
    payloads = {m.id: m for m in masks}
    submit = SubmitJob("m", "txt2img", JobParams(model="tiny", width=size, height=size, steps=2, seed=4,
                                                 regions=(Region(masks[0].id, "a red dog"),
                                                          Region(masks[1].id, "a blue sky"))))
    plan = engine.prepare(submit, payloads).memory
    assert plan.passes == 2 and plan.rows_fitting() > 4  # this machine's memory: no limit in practice
    parts = plan.parts
    budget = parts["weights"] + max(parts["decode"], parts["text"], parts["denoise"] * 3 // 2)
    tight = Engine(EngineConfig(models=specs(model_dirs)[:1], device="cpu", cache_folder=tmp_path / "cache",
                                device_memory=budget))
    prepared = tight.prepare(submit, payloads)
    assert prepared.memory.rows_fitting() == 3

    def rows_of(eng: Engine, job) -> tuple[list[int], np.ndarray]:
        rows: list[int] = []
        unet = eng.models.get("tiny")[0].root.unet
        handle = unet.conv_in.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
        try:
            return rows, pixels(eng.run(job, Recorder()).images[0])
        finally:
            handle.remove()

    split_rows, split = rows_of(tight, prepared)
    whole_rows, whole = rows_of(engine, engine.prepare(submit, payloads))
    assert split_rows == [3, 1, 2] and whole_rows == [4, 2]
    assert np.abs(split.astype(int) - whole.astype(int)).max() <= 1
