"""Inside Krita: Generate on a canvas far larger than the model's size (issue 13). The compact
docker's message line says the plan before the click; the jobs the plugin sends, the progress lines
and the layers are recorded; then a second Generate whose last refine pass the server refuses (the
spy sends it with a strength out of range) still places the image as far as it got. The assertions
are in ``test_krita_big_canvas_e2e.py``."""
from dataclasses import replace

from krita import Krita

from scenario_kit import easel_window, names, undo_rows, wait_jobs

W, H = 640, 480


def run(ctx):
    app = Krita.instance()
    _, controller, window, dock = easel_window(app)
    yield (lambda: controller.view.connection == "online", 120)
    doc = app.createDocument(W, H, "big", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    body = dock.body
    body.prompt_edit.setPlainText("a harbour at dawn")
    body.steps_spin.setValue(2)
    body.seed_random.setChecked(False)
    body.seed_spin.setValue(31)
    # the docker polls the active image once a second; the plan shows on the message line
    yield (lambda: "then ×" in body.message_label.text(), 30)
    ctx.record("before_click", body.message_label.text())
    ctx.record("native", controller.native_size)
    dock.grab().save(f"{ctx.artifacts}/big_canvas_plan_dock.png")

    sent = []
    submit = controller.connection.submit

    def spy(job, images):
        params = job.params
        sent.append({"task": job.task, "width": params.width, "height": params.height,
                     "factor": params.upscale_factor, "seed": params.seed,
                     "inputs": [[image.width, image.height] for image in images]})
        submit(job, images)
    controller.connection.submit = spy
    lines = []
    controller.subscribe(lambda view: lines.append(body.message_label.text()))
    body.primary_button.click()
    yield from wait_jobs(controller, 300)
    controller.connection.submit = submit
    ctx.record("jobs", sent)
    ctx.record("lines", sorted(set(lines)))
    ctx.record("message", controller.view.message)
    ctx.record("layers", names(doc))
    result = doc.rootNode().childNodes()[-1]
    bounds = result.bounds()
    ctx.record("result_bounds", [bounds.x(), bounds.y(), bounds.width(), bounds.height()])
    ctx.screenshot("big_canvas_done.png")

    # -- a second Generate whose last refine pass fails on the server: the best image is placed
    passes = sum(1 for job in sent if job["task"] == "upscale")
    failing = []

    def refuse_last_pass(job, images):
        if job.task == "upscale" and job.job_id.endswith(f".{passes}"):
            job = replace(job, params=replace(job.params, strength=5.0))  # out of range: invalid_parameter
            failing.append(job.job_id)
        submit(job, images)
    controller.connection.submit = refuse_last_pass
    body.seed_spin.setValue(32)
    rows = undo_rows(window)
    body.primary_button.click()
    yield from wait_jobs(controller, 300)
    controller.connection.submit = submit
    result = doc.rootNode().childNodes()[-1]
    bounds = result.bounds()
    alphas = bytes(result.pixelData(0, 0, W, H))[3::4]
    entry = controller.history.latest()
    ctx.record("failed_pass", {
        "failing": failing, "message": controller.view.message, "error": controller.view.message_is_error,
        "shown": body.message_label.text(), "layers": names(doc), "rows_added": undo_rows(window) - rows,
        "bounds": [bounds.x(), bounds.y(), bounds.width(), bounds.height()], "opaque": alphas.count(255) == W * H,
        "image": [entry.images[0].width, entry.images[0].height], "seeds": list(entry.seeds),
    })
    ctx.screenshot("big_canvas_failed_pass.png")
    app.action("edit_undo").trigger()  # one undo takes the result away
    yield 0.5
    ctx.record("failed_pass_undone", names(doc))
    doc.setModified(False)
