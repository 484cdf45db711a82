"""Big canvases (big_canvas.py): a Generate much larger than the model's size is made at the
model's size and refined up through the server's tiled ``upscale``, with the plan in the docker's
lines. A real ``easel serve`` (demo model) and the STUB HOST of ``krita_fake_host.py`` in place of
Krita; the same flow runs in real Krita in ``test_krita_big_canvas_e2e.py``."""
from __future__ import annotations

from easel_krita.big_canvas import PLAN_PREFIX
from easel_krita.protocol import SubmitJob
from easel_krita.request import Action, GenerationSettings
from easel_krita.size_plan import plan_size
from krita_jobs_kit import connect, painted_doc, pump


def connected(backend, doc, settings: GenerationSettings):
    controller, _ = connect(backend.url, doc)
    controller.settings = settings
    return controller


def _spy_on_jobs(controller) -> list[SubmitJob]:
    """The jobs the controller hands to its link, in order (the link still sends them)."""
    sent: list[SubmitJob] = []
    submit = controller.connection.submit

    def record(job, images):
        sent.append(job)
        submit(job, images)
    controller.connection.submit = record
    return sent


def test_a_big_generate_is_made_at_the_models_size_then_refined_up_in_tiled_passes(backend):
    width, height = 480, 360
    doc = painted_doc(width=width, height=height)
    controller = connected(backend, doc, GenerationSettings(prompt="a harbour", steps=2, seed=11, upscale_strength=0.5))
    try:
        native = controller.native_size
        plan = plan_size(width, height, native)
        assert plan.refines, (native, plan)  # the canvas is well beyond the demo model's size
        assert controller.big_canvas.describe_active() == f"{PLAN_PREFIX}{plan.describe()}."
        sent = _spy_on_jobs(controller)
        texts: list[str] = []
        controller.subscribe(lambda view: texts.append(view.progress_text))
        assert controller.start(Action.GENERATE) is not None
        pump(controller, lambda: not controller.jobs, timeout=240)
        assert not controller.view.message_is_error, controller.view.message

        # one txt2img at the first size, then one upscale per pass of the plan, fed the previous image
        assert [job.task for job in sent] == ["txt2img"] + ["upscale"] * len(plan.passes)
        assert (sent[0].params.width, sent[0].params.height) == plan.first
        assert [job.params.upscale_factor for job in sent[1:]] == list(plan.passes)
        assert all(job.params.strength == 0.5 and job.params.seed == 11 for job in sent[1:])
        # the painter was told the plan, then each pass
        assert any(plan.describe() in text for text in texts), texts
        assert any("refining" in text and f"pass 1 of {len(plan.passes)}" in text for text in texts), texts

        # one result layer over the whole canvas, from the refined image (kept in the history)
        assert [layer.name for layer in doc.layers] == ["Background", "a harbour · seed 11"]
        assert set(doc.layers[1].data[3::4]) == {255}
        entry = controller.history.latest()
        assert entry.request.action is Action.GENERATE and entry.seeds == (11,)
        assert (entry.images[0].width, entry.images[0].height) == plan.final
        assert "Generate done: seed 11" in controller.view.message
    finally:
        controller.connection.close()


def test_a_batch_on_a_big_canvas_refines_every_image_with_its_own_seed(backend):
    doc = painted_doc(width=400, height=300)
    controller = connected(backend, doc, GenerationSettings(prompt="dunes", steps=2, seed=20, batch_size=2))
    try:
        plan = plan_size(400, 300, controller.native_size)
        assert plan.refines
        sent = _spy_on_jobs(controller)
        controller.start(Action.GENERATE)
        pump(controller, lambda: not controller.jobs, timeout=240)
        assert not controller.view.message_is_error, controller.view.message
        passes = len(plan.passes)
        assert [job.task for job in sent] == ["txt2img"] + ["upscale"] * (2 * passes)
        assert [job.params.seed for job in sent[1:]] == [20] * passes + [21] * passes
        assert [layer.name for layer in doc.layers[1].children] == ["dunes · seed 20", "dunes · seed 21"]
        entry = controller.history.latest()
        assert entry.seeds == (20, 21) and {(i.width, i.height) for i in entry.images} == {plan.final}
    finally:
        controller.connection.close()


def test_a_canvas_near_the_models_size_is_one_job_and_no_plan_is_shown(backend):
    doc = painted_doc(width=96, height=80)
    controller = connected(backend, doc, GenerationSettings(prompt="a cup", steps=2, seed=3))
    try:
        assert controller.big_canvas.describe_active() == ""
        sent = _spy_on_jobs(controller)
        controller.start(Action.GENERATE)
        pump(controller, lambda: not controller.jobs)
        assert [job.task for job in sent] == ["txt2img"]
    finally:
        controller.connection.close()


def test_the_largest_working_size_caps_the_passes_and_the_rest_is_named_as_a_scale(backend):
    doc = painted_doc(width=480, height=360)
    controller = connected(backend, doc, GenerationSettings(prompt="x", steps=2))
    try:
        controller.big_canvas.largest_side = 240
        plan = plan_size(480, 360, controller.native_size, largest_side=240)
        text = controller.big_canvas.describe_active()
        assert text == f"{PLAN_PREFIX}{plan.describe()}." and "scaled ×2.0 to the 480×360 area" in text
    finally:
        controller.connection.close()


def test_a_failed_refine_pass_still_places_the_best_image_with_a_sentence_and_one_undo_step(backend):
    # The last pass is made to fail on the server: the spy sends it with a strength the server
    # refuses (invalid_parameter), as a real refusal on the wire.
    from dataclasses import replace

    width, height = 480, 360
    doc = painted_doc(width=width, height=height)
    controller = connected(backend, doc, GenerationSettings(prompt="a harbour", steps=2, seed=11, upscale_strength=0.5))
    try:
        plan = plan_size(width, height, controller.native_size)
        last = len(plan.passes)
        sent: list[SubmitJob] = []
        submit = controller.connection.submit

        def failing_last_pass(job, images):
            if job.task == "upscale" and job.job_id.endswith(f".{last}"):
                job = replace(job, params=replace(job.params, strength=5.0))
            sent.append(job)
            submit(job, images)
        controller.connection.submit = failing_last_pass
        undo_before = len(doc.undo)
        assert controller.start(Action.GENERATE) is not None
        pump(controller, lambda: not controller.jobs, timeout=240)

        assert [job.task for job in sent] == ["txt2img"] + ["upscale"] * last
        # the image as far as it got: the last pass that worked (or the first image), scaled over the canvas
        best = plan.sizes()[last - 1]
        assert [layer.name for layer in doc.layers] == ["Background", "a harbour · seed 11"]
        assert set(doc.layers[1].data[3::4]) == {255}
        entry = controller.history.latest()
        assert (entry.images[0].width, entry.images[0].height) == best and entry.seeds == (11,)
        assert [op for op, _ in doc.undo[undo_before:]] == ["add"]  # one undo step: the result layer
        message = controller.view.message
        what = "the first image" if last == 1 else f"pass {last - 1}'s image"
        scale = max(width / best[0], height / best[1])
        assert message.startswith("Generate done: seed 11") and controller.view.message_is_error
        assert f"Refine pass {last} of {last} failed (invalid_parameter: " in message, message
        assert message.endswith(f"; placed {what} ({best[0]}×{best[1]}) scaled ×{scale:.1f}.")
    finally:
        controller.connection.close()
