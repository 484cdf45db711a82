"""clientkit.controls (ControlNet/LoRA picking for a model's family), clientkit.limits (from welcome)
and clientkit.vendoring (how the plugin builds copy clientkit next to their protocol)."""
from __future__ import annotations

import pytest

from clientkit import vendoring
from clientkit.controls import PickError, check_own_control, job_models, loras_for, pick_control, pick_controlnet, unfit_loras
from clientkit.limits import UNKNOWN, ServerLimits
from protocol import AddonInfo, Limits, ModelInfo

BASE = ModelInfo("sd15", "SD", "base", "sd15", ("txt2img",))
CANNY = ModelInfo("canny15", "Canny", "controlnet", "sd15", control_type="canny")
DEPTH_XL = ModelInfo("depth-xl", "Depth XL", "controlnet", "sdxl", control_type="depth")
MODELS = (BASE, CANNY, DEPTH_XL)


def test_a_controlnet_is_picked_for_the_family_or_the_sentence_says_what_there_is():
    assert pick_controlnet(MODELS, "sd15", "canny") is CANNY
    assert pick_controlnet(MODELS, "sdxl", "depth", "depth-xl") is DEPTH_XL
    cases = [
        (("sd15", "depth"), "a depth ControlNet only for sdxl models, and the chosen model is sd15"),
        (("sd15", "openpose"), r"no openpose ControlNet for sd15 models \(it has: canny\); add one"),
        (("sd2", "lineart"), "no lineart ControlNet for sd2 models; add one"),
        (("sd15", "depth", "canny15"), "'canny15' is for canny, not depth"),
        (("sd15", "depth", "depth-xl"), "'depth-xl' is for sdxl models, the base model is sd15"),
        (("sd15", "depth", "gone"), "no ControlNet 'gone'"),
    ]
    for args, message in cases:
        with pytest.raises(PickError, match=message):
            pick_controlnet(MODELS, *args)
    with pytest.raises(PickError, match="for sd2 models; start it with --controlnet lineart"):
        pick_controlnet(MODELS, "sd2", "lineart", how_to_add="start it with --controlnet lineart=PATH")


FLUX_CANNY = ModelInfo("flux-canny", "FLUX.1 Canny", "control", "flux", ("txt2img",), control_type="canny")
FLUX_CN = ModelInfo("flux-cn", "Flux Canny CN", "controlnet", "flux", control_type="canny")


def test_a_control_model_is_its_own_units_model_and_takes_exactly_one_of_its_type():
    server = (*MODELS, FLUX_CANNY, FLUX_CN)
    assert pick_control(server, FLUX_CANNY, "canny") is FLUX_CANNY  # never the Flux ControlNet beside it
    assert pick_control(server, FLUX_CANNY, "canny", "flux-canny") is FLUX_CANNY
    assert pick_control(server, BASE, "canny") is CANNY  # other kinds pick a ControlNet as before
    check_own_control(FLUX_CANNY, ["canny"])
    cases = [
        (lambda: pick_control(server, FLUX_CANNY, "depth"),
         r"model 'FLUX.1 Canny' \(canny control model\) takes no depth ControlNet, only its own canny image; "
         "unmark it, or pick a base model with depth ControlNets"),
        (lambda: pick_control(server, FLUX_CANNY, "canny", "flux-cn"),
         "takes its control image itself, not through ControlNet 'flux-cn'; leave the ControlNet empty"),
        (lambda: check_own_control(FLUX_CANNY, [], what="line guide"),
         "needs exactly one canny line guide; add one, or pick a base model with canny ControlNets"),
        (lambda: check_own_control(FLUX_CANNY, ["canny", "canny"], other="set the others to 0"),
         "takes exactly one canny control layer, 2 are active; keep one and set the others to 0"),
    ]
    for call, message in cases:
        with pytest.raises(PickError, match=message):
            call()
    unknown = ModelInfo("flux-ctl", "", "control", "flux", ("txt2img",))  # a control model of unknown type
    assert pick_control(server, unknown, "lineart") is unknown
    redux = ModelInfo("redux", "Redux", "reference", "flux", (), control_type="redux")
    assert job_models((*server, redux)) == (BASE, FLUX_CANNY)  # a job runs on these, never on an adapter


def test_loras_fit_their_family_or_every_family_when_unknown():
    ink, xl, anyone = (AddonInfo("ink", "Ink", "lora", "sd15"), AddonInfo("xl", "XL", "lora", "sdxl"),
                       AddonInfo("any", "Any", "lora", ""))
    embedding = AddonInfo("emb", "Emb", "embedding", "sd15")
    assert loras_for((ink, xl, anyone, embedding), "sd15") == (ink, anyone)
    assert unfit_loras(["ink", "xl", "gone", "any"], (ink, xl, anyone), "sd15") == ["xl", "gone"]


def test_limits_come_from_the_welcome():
    limits = ServerLimits.of(Limits(max_frame_bytes=1, max_image_side=1024, max_image_pixels=1024 * 768,
                                    max_client_jobs=3))
    assert limits.max_client_jobs == 3 and UNKNOWN.max_image_side == Limits(1).max_image_side
    limits.check_image(1024, 768)
    with pytest.raises(ValueError, match="at most 1024 px a side"):
        limits.check_image(2048, 8)
    with pytest.raises(ValueError, match="at most 786432 pixels"):
        limits.check_image(1024, 1024)
    assert ServerLimits.from_welcome(None) is UNKNOWN


def test_vendoring_points_protocol_imports_at_the_plugins_copy(tmp_path):
    text = "from protocol import A\nfrom protocol.transport import B\n    from protocol.session import C\nfrom .book import D\n"
    assert vendoring.vendored_source(text, "x.py") == (
        "from ..protocol import A\nfrom ..protocol.transport import B\n    from ..protocol.session import C\nfrom .book import D\n")
    with pytest.raises(ValueError, match="not `import protocol`"):
        vendoring.vendored_source("import protocol\n", "x.py")
    from pathlib import Path
    shipped = [p.name for p in vendoring.shipped_files(Path(__file__).resolve().parents[2])]
    assert "book.py" in shipped and "links.py" in shipped and "vendoring.py" not in shipped
