"""Runs INSIDE Krita (loaded by the test driver): live mode with a reference layer and a region
layer, started with the compact docker's Live button, against a real easel serve behind the
logging proxy; then the Upscale workspace with the same layers. Records the live jobs' ids, the
layers' pixels (digests), what the session uploaded and what the docker said; the assertions live
in ``test_krita_live_guides_e2e.py``.
"""
from krita import Selection

from scenario_kit import digest, easel_window, layers, painted, rgba, wait_jobs

W, H = 160, 128
SEL = (20, 12, 100, 72)
PHOTO = (100, 70, 40, 30)    # the reference picture's box on its layer (partly outside the selection)
DOOR = (30, 20, 24, 40)      # the region, opaque


def run(ctx):
    app = ctx.app
    ext, controller, window, dock = easel_window(app)
    yield (lambda: controller.view.connection == "online", 120)
    body = dock.body
    live = ext.live
    from easel_krita.control import ControlSpec
    from easel_krita.live import LiveSettings
    live.debounce_s = 0.15
    live.set_settings(LiveSettings(strength=0.6, steps=2, seed=4321))

    doc = app.createDocument(W, H, "live-guides", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield 0.5
    root = doc.rootNode()
    root.childNodes()[0].setPixelData(b"".join(bytes((x, 120, 200, 255)) for _ in range(H) for x in range(W)), 0, 0, W, H)
    photo = painted(doc, "Photo", PHOTO, (30, 160, 220, 255))
    door = painted(doc, "Door", DOOR, (0, 0, 255, 255))
    selection = Selection()
    selection.select(*SEL, 255)
    doc.setSelection(selection)
    doc.waitForDone()
    doc.refreshProjection()
    controller.host.mark_control(doc, photo, ControlSpec("reference", 0.6))
    controller.refresh_control_layers()
    controller.guides.mark_region(doc, door, "a red door")
    body.prompt_edit.setPlainText("a quiet street")
    yield 0.5

    def session_uploaded():
        return controller.connection._client._client.session.bytes_uploaded

    def live_job():
        return f"live-{live.jobs.session}-{live.stats.jobs_sent}"

    def wait_next(sent):
        yield (lambda: live.stats.jobs_sent == sent + 1 and live.stats.results_drawn[-1:] == [live_job()]
               and not live.jobs.sending, 120)

    # -- Live on with the docker's button: the first live job carries the reference and the region
    body.set_workspace("live")
    uploaded = session_uploaded()
    body.primary_button.click()
    yield (lambda: live.stats.results_drawn and not live.jobs.sending, 120)
    ctx.record("on", {"job": live_job(), "status": live.view.status, "error": live.view.error,
                      "uploaded": session_uploaded() - uploaded,
                      "door_mask": digest(bytes(door.pixelData(*SEL))[3::4]),
                      "photo": digest(rgba(bytes(photo.pixelData(*PHOTO)))),
                      "photo_visible": photo.visible(), "names": [n.name() for n in layers(doc)]})
    ctx.screenshot("live_guides_on.png")

    # -- a stroke on the picture (a new painted layer, an undo step): the reference and mask are
    # named again by id, and only the picture is uploaded
    sent, uploaded = live.stats.jobs_sent, session_uploaded()
    stroke = doc.createNode("Stroke", "paintlayer")
    stroke.setPixelData(bytes((30, 200, 30, 255)) * (12 * 12), 90, 30, 12, 12)
    root.addChildNode(stroke, door)
    yield from wait_next(sent)
    ctx.record("stroke", {"job": live_job(), "uploaded": session_uploaded() - uploaded, "error": live.view.error})

    # -- a new region prompt (no undo step): a new live job, nothing uploaded
    sent, uploaded = live.stats.jobs_sent, session_uploaded()
    controller.guides.set_region(doc, door.uniqueId().toString(), "a blue door")
    yield from wait_next(sent)
    ctx.record("prompt", {"job": live_job(), "uploaded": session_uploaded() - uploaded, "status": live.view.status})

    body.primary_button.click()  # Live off
    yield (lambda: not live.view.enabled, 30)
    ctx.record("off", {"names": [n.name() for n in layers(doc)]})

    # -- Upscale with the same layers: the docker says before the click that it does not use them
    body.set_workspace("upscale")
    yield (lambda: "Upscale does not use" in body.message_label.text(), 30)
    ctx.record("upscale_before", body.message_label.text())
    dock.grab().save(f"{ctx.artifacts}/live_guides_upscale_dock.png")
    jobs_before = set(controller.jobs)
    body.primary_button.click()
    yield 0.1
    started = [job for job in controller.jobs if job not in jobs_before]
    yield from wait_jobs(controller, 300)
    ctx.record("upscale", {"jobs": started, "message": controller.view.message, "size": [doc.width(), doc.height()],
                           "error": controller.view.message_is_error})
    ctx.screenshot("live_guides_upscaled.png")
    doc.setModified(False)
