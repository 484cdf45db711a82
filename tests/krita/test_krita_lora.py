"""LoRAs, host-free: the form's choices, which of the server's LoRAs fit the model's family, and
``JobParams.loras`` (``easel_krita.loras`` + ``request``). The controller sends them to a real
server in ``test_krita_lora_controller.py``."""
from __future__ import annotations

import json

import pytest

from easel_krita.geometry import Rect
from easel_krita.loras import MAX_LORAS, LoraChoice, LoraError, check_choices, loras_for, unfit
from easel_krita.request import Action, GenerationSettings, RequestError, plan
from protocol import AddonInfo, LoraWeight

INK = AddonInfo("ink", "Ink lines", "lora", "sd15", trigger="inkart")
XL = AddonInfo("xl-detail", "XL detail", "lora", "sdxl")
ANY = AddonInfo("mystery", "Mystery", "lora", "")
EMBED = AddonInfo("badhands", "Bad hands", "embedding", "sd15")


def test_loras_for_a_family_include_those_of_unknown_family_and_no_embeddings():
    assert loras_for((INK, XL, ANY, EMBED), "sd15") == (INK, ANY)
    assert loras_for((INK, XL, ANY, EMBED), "sdxl") == (XL, ANY)
    assert unfit((LoraChoice("ink"), LoraChoice("xl-detail"), LoraChoice("gone")), (INK, XL, ANY), "sd15") == ["xl-detail", "gone"]


def test_choices_are_checked_with_sentences():
    check_choices((LoraChoice("ink", -1.5), LoraChoice("mystery", 2.0)))
    with pytest.raises(LoraError, match="between -2 and 2, got 3"):
        check_choices((LoraChoice("ink", 3.0),))
    with pytest.raises(LoraError, match="ink is chosen twice"):
        check_choices((LoraChoice("ink"), LoraChoice("ink", 0.5)))
    with pytest.raises(LoraError, match=f"at most {MAX_LORAS}"):
        check_choices(tuple(LoraChoice(f"l{i}") for i in range(MAX_LORAS + 1)))
    with pytest.raises(RequestError, match="between -2 and 2"):
        GenerationSettings(loras=(LoraChoice("ink", 9.0),)).check()


def test_loras_travel_in_job_params_of_every_diffusion_action_and_round_trip():
    settings = GenerationSettings(prompt="inkart cat", loras=(LoraChoice("ink", 0.6), LoraChoice("mystery", -0.5)))
    assert GenerationSettings.from_dict(json.loads(json.dumps(settings.to_dict()))) == settings
    for action in (Action.GENERATE, Action.REFINE, Action.FILL, Action.EXPAND, Action.UPSCALE):
        request = plan(action, settings, Rect(0, 0, 64, 64), Rect(8, 8, 32, 32))
        assert request.job_params().loras == (LoraWeight("ink", 0.6), LoraWeight("mystery", -0.5)), action
    assert GenerationSettings.from_dict({"loras": [{"id": "ink"}]}).loras == (LoraChoice("ink", 1.0),)
    with pytest.raises(RequestError, match="loras must be a list"):
        GenerationSettings.from_dict({"loras": "ink"})
    with pytest.raises(RequestError, match="must be a map with an id"):
        GenerationSettings.from_dict({"loras": [3]})


# ---------------------------------------------------------------- the controller, against a real server
# STUB HOST (krita_fake_host.FakeCanvas) + real ``easel serve`` on the demo models; see krita_jobs_kit.

from dataclasses import replace  # noqa: E402

from easel_krita.request import Action as _Action  # noqa: E402
from krita_jobs_kit import connect, finish, painted_doc  # noqa: E402
from krita_proxy import DropProxy  # noqa: E402


def test_the_servers_loras_are_listed_and_sent_with_the_job(backend):
    proxy = DropProxy(backend.url)
    controller, _ = connect(proxy.url, painted_doc(), seed=9)
    try:
        model = controller.current_model()
        listed = loras_for(controller.view.loras, model.family)
        assert [a.id for a in listed] == ["demo-style"]  # ModelList.loras, for the demo family
        controller.settings = replace(controller.settings, loras=(LoraChoice("demo-style", 0.7),))
        job_id = controller.start(_Action.GENERATE)
        finish(controller)
        assert proxy.log.submitted[job_id]["loras"] == [{"id": "demo-style", "weight": 0.7}]
        assert controller.history.latest().request.settings.loras == (LoraChoice("demo-style", 0.7),)
        # a LoRA the server does not list is refused before anything is sent
        controller.settings = replace(controller.settings, loras=(LoraChoice("gone", 1.0),))
        submitted = controller.stats.jobs_submitted
        assert controller.start(_Action.GENERATE) is None
        assert controller.view.message == ("The LoRA gone is not on this server for demo models; "
                                           "remove it from the LoRA list in the Easel docker.")
        assert controller.stats.jobs_submitted == submitted
    finally:
        controller.connection.close()
        proxy.close()
