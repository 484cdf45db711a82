"""Reference images (IP-Adapter, Flux.1 Redux) and regional prompts end to end: a real ``EaselServer``
on loopback with the real engine over tiny random models, and tiny random adapters written in the
released file layouts into a ComfyUI-style models folder (``ipadapter/`` with h94's
``image_encoder/`` beside the file, ``style_models/`` + a SigLIP folder in ``clip_vision/``), found
by the folder scan and loaded through the same code as real ones; driven by a real ``ClientSession``.
HF_HUB_OFFLINE=1; waits are bounded, never timed."""
from __future__ import annotations

import numpy as np
import pytest

from backend.config import ModelEntry
from protocol import ControlUnit, ErrorCode, JobFailed, JobParams, JobResult, Margins, ModelList, SubmitJob
from protocol.messages import ReferenceImage, Region
from test_server_harness import Client, ServerThread, grey_mask, make_engine, rgba, tiny_config, tiny_models  # noqa: F401

SIZE = 64
#: Region tests work at 256² so that a half-picture region spans many attention tokens.
REGION_SIZE = 256


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    from backend import demo
    from backend.demo_references import build_tiny_ip_adapter, build_tiny_redux

    root = tmp_path_factory.mktemp("refs")
    folder = root / "comfy" / "models"
    for name, variant in (("tiny-ip", "ip_adapter"), ("tiny-ip-plus", "ip_adapter_plus"),
                          ("tiny-ip-face", "ip_adapter_face")):
        build_tiny_ip_adapter(tiny_models["base"], folder / "ipadapter" / f"{name}.safetensors", variant=variant)
    build_tiny_redux(folder / "style_models" / "tiny-redux.safetensors", folder / "clip_vision" / "tiny-siglip")
    return {"dirs": root / "comfy", "flux": demo.build_tiny_flux(root / "flux"),
            "flux-fill": demo.build_tiny_flux(root / "flux-fill", fill=True),
            "depth": demo.build_tiny_model(root / "depth", "depth"), "sd3": demo.build_tiny_sd3(root / "sd3"),
            "canny": demo.build_tiny_controlnet(root / "canny", tiny_models["base"])}


def config(tiny_models, setup, tmp_path):
    base = tiny_config(tiny_models, tmp_path)
    models = base.models + (ModelEntry("tiny-depth", str(setup["depth"])), ModelEntry("flux", str(setup["flux"])),
                            ModelEntry("flux-fill", str(setup["flux-fill"])),
                            ModelEntry("sd3", str(setup["sd3"])),
                            ModelEntry("canny", str(setup["canny"]), kind="controlnet"))
    return tiny_config(tiny_models, tmp_path, models=models, models_dirs=(setup["dirs"],), model_cache_size=4)


@pytest.fixture(scope="module")
def engine(tiny_models, setup, tmp_path_factory):
    return make_engine(config(tiny_models, setup, tmp_path_factory.mktemp("engine")))


@pytest.fixture
def server(engine, tiny_models, setup, tmp_path):
    with ServerThread(config(tiny_models, setup, tmp_path), engine) as running:
        yield running


def pixels(events) -> np.ndarray:
    assert isinstance(events[-1], JobResult), f"the job did not finish: {events[-1]!r}"
    image = events[-1].images[0]
    return np.frombuffer(image.data, np.uint8).reshape(image.height, image.width, 4)


def failure(events) -> JobFailed:
    assert isinstance(events[-1], JobFailed), f"the job did not fail: {events[-1]!r}"
    return events[-1]


def job(job_id: str, task: str = "txt2img", images: dict | None = None, **params) -> SubmitJob:
    settings = dict(model="tiny", prompt="a lighthouse", width=SIZE, height=SIZE, steps=2, seed=5)
    settings.update(params)
    return SubmitJob(job_id, task, JobParams(**settings), images=images or {})


def test_model_list_shows_the_reference_adapters_with_their_family_and_variant(server):
    with Client(server.url) as client:
        client.session.list_models()
        client.flush()
        listing = client.until(lambda e: isinstance(e, ModelList))[-1]
        refs = sorted((m.id, m.kind, m.family, m.control_type, m.tasks) for m in listing.models if m.kind == "reference")
        assert refs == [("tiny-ip", "reference", "sd15", "ip_adapter", ()),
                        ("tiny-ip-face", "reference", "sd15", "ip_adapter_face", ()),
                        ("tiny-ip-plus", "reference", "sd15", "ip_adapter_plus", ()),
                        ("tiny-redux", "reference", "flux", "redux", ())]


@pytest.mark.parametrize("model, adapter", [("tiny", "tiny-ip"), ("tiny", "tiny-ip-plus"), ("tiny", "tiny-ip-face"),
                                            ("flux", "")])
def test_weight_zero_is_no_reference_and_another_image_gives_other_pixels(server, model, adapter):
    """IP-Adapter (plain, plus, full-face): the adapter loads and its layers run at weight 0, adding
    nothing; Redux (flux, its adapter by default): a weight-0 reference is left out. Either way the
    bytes equal the plain job's."""
    one, two = rgba(40, 48, seed=1), rgba(40, 48, seed=90)

    def refs(image, **values):
        return (ReferenceImage(image.id, model=adapter, **values),)

    with Client(server.url) as client:
        plain = pixels(client.run(job("plain", model=model)))
        zero = pixels(client.run(job("zero", model=model, references=refs(one, weight=0.0)), [one]))
        first = pixels(client.run(job("one", model=model, references=refs(one)), [one]))
        second = pixels(client.run(job("two", model=model, references=refs(two)), [two]))
        late = pixels(client.run(job("late", model=model, references=refs(one, start=0.5)), [one]))
        after = pixels(client.run(job("after", model=model)))
    assert np.array_equal(zero, plain)
    assert not np.array_equal(first, plain) and not np.array_equal(second, first)
    assert not np.array_equal(late, first) and not np.array_equal(late, plain)  # guides the second step only
    assert np.array_equal(after, plain)  # nothing stays installed after a guided job


def test_every_image_task_runs_with_a_reference_and_with_a_region(server):
    """txt2img, img2img, inpaint (an inpainting model), outpaint (the region's mask of the original
    image's aspect, placed over it), depth2img and a ControlNet job, each once with a reference
    (IP-Adapter) and once with a region (the left half, its own prompt), each different from the same
    job without; Flux img2img, inpaint and outpaint (a Fill model) likewise (Redux), and a batch of two
    of each family."""
    ref, image = rgba(32, 32, seed=7), rgba(SIZE, SIZE, seed=2)
    mask = grey_mask(SIZE, SIZE, (16, 16, 48, 48))
    depth = grey_mask(SIZE, SIZE, (0, 0, 32, SIZE))
    half = grey_mask(SIZE, SIZE, (0, 0, SIZE // 2, SIZE))
    cases = [
        ("txt2img", "tiny", {}, {}),
        ("img2img", "tiny", {"image": image}, {}),
        ("inpaint", "tiny-inpaint", {"image": image, "mask": mask}, {}),
        ("outpaint", "tiny", {"image": image}, {"margins": Margins(left=16, top=0, right=0, bottom=8)}),
        ("depth2img", "tiny-depth", {"depth": depth}, {}),
        ("txt2img", "tiny", {}, {"controls": (ControlUnit("canny", image.id),)}),
        ("txt2img", "tiny", {}, {"batch_size": 2}),
        ("img2img", "flux", {"image": image}, {}),
        ("inpaint", "flux", {"image": image, "mask": mask}, {}),
        ("outpaint", "flux-fill", {"image": image}, {"margins": Margins(left=16, top=0, right=0, bottom=8)}),
        ("txt2img", "flux", {}, {"batch_size": 2}),
    ]
    with Client(server.url) as client:
        for number, (task, model, images, extra) in enumerate(cases):
            roles = {role: payload.id for role, payload in images.items()}
            sent = [*images.values(), image, ref, half]
            plain = client.run(job(f"p{number}", task, roles, model=model, **extra), sent)
            guided = client.run(job(f"g{number}", task, roles, model=model, **extra,
                                    references=(ReferenceImage(ref.id, weight=1.5),)), sent)
            regional = client.run(job(f"r{number}", task, roles, model=model, **extra,
                                      regions=(Region(half.id, "a red barn at night"),)), sent)
            for kind, events in (("reference", guided), ("region", regional)):
                assert pixels(plain).shape == pixels(events).shape
                assert len(events[-1].images) == len(plain[-1].images) == extra.get("batch_size", 1)
                for index, (one, other) in enumerate(zip(plain[-1].images, events[-1].images)):
                    assert one.data != other.data, f"{task} on {model}: the {kind} changed nothing in image {index}"


def test_reference_errors_are_typed_and_the_server_goes_on(server):
    ref = rgba(32, 32, seed=7)
    with Client(server.url) as client:
        unknown = failure(client.run(job("u", references=(ReferenceImage(ref.id, model="nope"),)), [ref]))
        assert unknown.code is ErrorCode.UNKNOWN_MODEL and "tiny-ip" in unknown.message
        other = failure(client.run(job("m", references=(ReferenceImage(ref.id, model="tiny-redux"),)), [ref]))
        assert other.code is ErrorCode.MODEL_MISMATCH and other.details.get("field") == "references"
        flux = failure(client.run(job("f", model="flux", references=(ReferenceImage(ref.id, model="tiny-ip"),)), [ref]))
        assert flux.code is ErrorCode.MODEL_MISMATCH
        sd3 = failure(client.run(job("s", model="sd3", references=(ReferenceImage(ref.id),)), [ref]))
        assert sd3.code is ErrorCode.UNSUPPORTED and "Flux.1 models (Redux)" in sd3.message
        many = failure(client.run(job("n", references=(ReferenceImage(ref.id),) * 3, regions=(
            Region(grey_mask(SIZE, SIZE, (0, 0, 8, 8)).id, "a", (ReferenceImage(ref.id),) * 2),)),
            [ref, grey_mask(SIZE, SIZE, (0, 0, 8, 8))]))
        assert many.code is ErrorCode.INVALID_PARAMETER and "at most 4 reference images" in many.message
        assert client.welcome.limits.max_references == 4 and client.welcome.limits.max_regions == 8
        span = failure(client.run(job("r", references=(ReferenceImage(ref.id, start=0.8, end=0.2),)), [ref]))
        assert span.code is ErrorCode.INVALID_PARAMETER and "start (0.8) must be less than end (0.2)" in span.message
        upscale = failure(client.run(job("up", "upscale", {"image": ref.id}, steps=4, references=(ReferenceImage(ref.id),)),
                                     [ref]))
        assert upscale.code is ErrorCode.UNSUPPORTED
        assert isinstance(client.run(job("ok"))[-1], JobResult)


def test_region_errors_are_typed(server):
    half = grey_mask(SIZE, SIZE, (0, 0, 32, SIZE))
    wide = grey_mask(SIZE * 2, SIZE, (0, 0, 32, SIZE))
    with Client(server.url) as client:
        sd3 = failure(client.run(job("s", model="sd3", regions=(Region(half.id, "a cat"),)), [half]))
        assert sd3.code is ErrorCode.UNSUPPORTED and "SD 1.x, SD 2.x, SDXL and Flux.1 models do" in sd3.message
        aspect = failure(client.run(job("a", regions=(Region(wide.id, "a cat"),)), [wide]))
        assert aspect.code is ErrorCode.INVALID_PARAMETER and "region 1's mask is 128x64" in aspect.message
        empty = failure(client.run(job("e", regions=(Region(half.id, " "),)), [half]))
        assert empty.code is ErrorCode.INVALID_PARAMETER and "region 1 needs a prompt" in empty.message
        many = failure(client.run(job("m", regions=(Region(half.id, "x"),) * 9), [half]))
        assert many.code is ErrorCode.INVALID_PARAMETER and "at most 8 regions" in many.message
        for regions in ((Region(half.id, "a cat"),), ()):
            mode = failure(client.run(job("k", regions=regions, region_mode="apart"), [half]))
            assert mode.code is ErrorCode.INVALID_PARAMETER and mode.details.get("field") == "region_mode"
            assert 'region_mode must be "separate"' in mode.message and "got 'apart'" in mode.message


def _inside_fraction(a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> float:
    """The share of the summed absolute pixel change between ``a`` and ``b`` that falls inside the
    region, each pixel counted by the region's feathered weight there."""
    change = np.abs(a[..., :3].astype(np.int64) - b[..., :3].astype(np.int64)).sum(axis=2)
    return float((change * weight).sum() / change.sum())


def _left_weight() -> np.ndarray:
    """The left region's feathered weight per pixel when the left and right halves of a
    REGION_SIZE² picture are regions."""
    from backend.guides import region_weights

    left = np.zeros((REGION_SIZE, REGION_SIZE), np.uint8)
    left[:, : REGION_SIZE // 2] = 255
    return region_weights([left, 255 - left], (REGION_SIZE, REGION_SIZE))[1]


def _runner(client, model: str, mode: str = "separate"):
    """The function that runs a REGION_SIZE² job with ``prompt`` and the left half's region prompt
    ``first`` (None: without regions), the right half's "a blue sky", and gives its pixels."""
    size = REGION_SIZE
    masks = [grey_mask(size, size, (0, 0, size // 2, size)), grey_mask(size, size, (size // 2, 0, size, size))]

    def run(name: str, prompt: str, first: str | None) -> np.ndarray:
        regions = (Region(masks[0].id, first), Region(masks[1].id, "a blue sky")) if first else ()
        return pixels(client.run(job(name, model=model, prompt=prompt, width=size, height=size, regions=regions,
                                     region_mode=mode), masks))

    return run


def _regional_runs(client, model: str, mode: str = "separate"):
    """(fraction of the change inside the left region when only its prompt changes, the same figure
    when the prompts are not masked: the base prompt changed, no regions; a plain job's pixels, and
    the :func:`_runner`)."""
    run = _runner(client, model, mode)
    weight = _left_weight()
    masked = _inside_fraction(run("r1", "a field", "a red dog"), run("r2", "a field", "a green house"), weight)
    unmasked = _inside_fraction(run("u1", "a red dog", None), run("u2", "a green house", None), weight)
    plain_again = run("u3", "a red dog", None)
    return masked, unmasked, plain_again, run


def test_regions_change_the_picture_mostly_inside_their_mask_flux(server):
    """Flux (joint attention masked), tiny random Flux at 256², 2 steps, seed 5: 87.4 % of the change
    falls inside the changed region's feathered mask (seeds 1 and 9: 87.1 %, 86.3 %); changing the same
    words unmasked (the base prompt, no regions) puts 51.8 % there, about the region's share of the
    picture. The rest spreads through the image tokens' attention to each other and the VAE.
    ``region_mode`` changes nothing for Flux."""
    with Client(server.url) as client:
        masked, unmasked, _, run = _regional_runs(client, "flux")
        separate = run("s", "a field", "a red dog")
        assert np.array_equal(separate, _runner(client, "flux", "attention")("a", "a field", "a red dog"))
    assert masked >= 0.80, f"only {masked:.1%} of the change is inside the region"
    assert masked > unmasked + 0.2


def test_regions_change_the_picture_mostly_inside_their_mask_sd(server):
    """SD 1.x-shaped UNet, ``region_mode`` "separate" (the default: over the first half of the steps
    one conditional pass per prompt, blended by the region weights at latent resolution), tiny random
    UNet at 256², 2 steps, seed 5: 89.7 % of the pixel change falls inside the changed region's
    feathered mask (seeds 1 and 9: 90.3, 90.1 %); at 512²: 90.2, 89.6, 89.4 % (seeds 5, 1, 9);
    against 46.2 % for the same change unmasked (benchmarks/RESULTS.md, "Regions: separate passes")."""
    with Client(server.url) as client:
        masked, unmasked, plain, run = _regional_runs(client, "tiny")
        assert np.array_equal(plain, run("u4", "a red dog", None))  # no regions: the plain path, byte for byte
        again = run("r1", "a field", "a red dog")
        assert np.array_equal(again, run("r1b", "a field", "a red dog"))  # a seed gives the same picture
    assert masked >= 0.80, f"only {masked:.1%} of the change is inside the region (unmasked: {unmasked:.1%})"


def test_attention_mode_keeps_one_pass_with_masked_attention_sd(server, monkeypatch):
    """``region_mode`` "attention" on the SD 1.x-shaped UNet (cross-attention masked, self-attention
    biased toward each token's region over the first 30 % of the steps), tiny random UNet at 256²,
    2 steps, seed 5: 55.0 % of the pixel change falls inside the region (54.0 % without the
    self-attention bias), against 46.2 % for the same change unmasked; seeds 1 and 9: 56.8 % (56.0
    without the bias) vs 49.1 %, 59.0 % (57.5) vs 49.8 %. At 512²: 60.1, 59.0, 58.2 % (seeds 5, 1,
    9). The masked cross-attention layer's own change is 98 % inside the region
    (tests/backend/test_engine_guides.py), but the very next GroupNorm spreads it: its mean and
    variance per channel group cover the whole picture, and the 3×3 convolutions carry the rest
    across the border — what "separate" mode's per-prompt passes avoid. The pixels are those of
    the one-pass code before "separate" existed (checked against main at f02f586): a "separate"
    job whose per-prompt passes cover no step gives the same bytes, the wrapped forward passing
    every call through."""
    from backend import guides

    with Client(server.url) as client:
        masked, unmasked, _, run = _regional_runs(client, "tiny", "attention")
        one_pass = run("o1", "a field", "a red dog")
        monkeypatch.setattr(guides, "SEPARATE_END", 0.0)
        assert np.array_equal(one_pass, _runner(client, "tiny")("o2", "a field", "a red dog"))
        monkeypatch.setattr(guides, "SELF_ATTENTION_BIAS", 0.0)
        unbiased = _inside_fraction(run("b1", "a field", "a red dog"), run("b2", "a field", "a green house"),
                                    _left_weight())
    assert 0.53 <= masked < 0.70 and masked >= unmasked + 0.05, f"masked {masked:.1%}, unmasked {unmasked:.1%}"
    assert masked > unbiased + 0.005, f"with the self-attention bias {masked:.1%}, without {unbiased:.1%}"


def test_separate_passes_run_with_a_controlnet_unit_and_a_region_reference(server, engine):
    """A txt2img job with a ControlNet unit, two regions and a reference image of the left region's
    own, in "separate" mode: the UNet runs widened (negative + base + 2 regions = 4 rows) over the
    first half of the steps and as one pass (2 rows) after; the same seed gives the same bytes, and
    the reference changes the picture mostly inside its region: 77.0 % of the change (the same job in
    "attention" mode: 54.7 %; without the ControlNet, 2–4 steps: 79–81 vs 57 % at 128², 83–86 vs 58–59 % at
    256²)."""
    size = 128
    left, right = grey_mask(size, size, (0, 0, size // 2, size)), grey_mask(size, size, (size // 2, 0, size, size))
    control, ref = rgba(size, size, seed=3), rgba(32, 32, seed=7)
    sent = [left, right, control, ref]
    model, _ = engine.models.get("tiny")
    rows: list[int] = []
    handle = model.root.unet.conv_in.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))

    def run(name: str, mode: str, refs: tuple = ()) -> np.ndarray:
        regions = (Region(left.id, "a red dog", refs), Region(right.id, "a blue sky"))
        return pixels(client.run(job(name, width=size, height=size, steps=4, regions=regions, region_mode=mode,
                                     controls=(ControlUnit("canny", control.id),)), sent))

    try:
        with Client(server.url) as client:
            guided = run("s1", "separate", (ReferenceImage(ref.id, weight=1.5),))
            assert rows == [4, 4, 2, 2]
            assert np.array_equal(guided, run("s2", "separate", (ReferenceImage(ref.id, weight=1.5),)))
            plain = run("s3", "separate")
            one_pass = run("a1", "attention", (ReferenceImage(ref.id, weight=1.5),))
            one_pass_plain = run("a2", "attention")
    finally:
        handle.remove()
    assert "forward" not in model.root.unet.__dict__  # the wrapped forward is gone after the job
    assert not np.array_equal(guided, one_pass)
    from backend.guides import region_weights

    weight = region_weights([np.asarray(bytearray(left.data), np.uint8).reshape(size, size),
                             np.asarray(bytearray(right.data), np.uint8).reshape(size, size)], (size, size))[1]
    share, one_pass_share = _inside_fraction(guided, plain, weight), _inside_fraction(one_pass, one_pass_plain, weight)
    print(f"region reference: {share:.1%} inside, attention {one_pass_share:.1%}")
    assert share >= 0.7 and share > one_pass_share + 0.1, f"the region's reference changed the picture {share:.1%} " \
                                                          f"inside the region (attention mode: {one_pass_share:.1%})"
