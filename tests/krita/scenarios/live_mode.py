"""Runs INSIDE Krita (loaded by the test driver): live mode on a painted document with a selection,
driven through the docker's Live section when it is there (else the plugin's LiveMode directly),
against a real easel serve. Records what the document, the undo history and live mode looked
like at each point; the assertions live in ``test_krita_live_e2e.py``.

The painter's changes are undoable API calls (adding a painted layer, Ctrl+Z, Ctrl+Shift+Z): each
resets Krita's Undo History model exactly like a brush stroke does.
"""
import sys

from krita import Selection
from scenario_kit import digest, find_docker, layers, undo_rows

W, H = 160, 128
SEL = (24, 16, 96, 80)


def state(doc):
    """Names and pixel digests of every paint layer, bottom first."""
    return [[n.name(), digest(n.pixelData(0, 0, W, H))] for n in layers(doc)]


def alpha_box(data):
    alpha = bytes(data)[3::4]
    rows = [y for y in range(H) if alpha[y * W:(y + 1) * W].strip(b"\x00")]
    if not rows:
        return None
    left = min(W - len(alpha[y * W:(y + 1) * W].lstrip(b"\x00")) for y in rows)
    right = max(len(alpha[y * W:(y + 1) * W].rstrip(b"\x00")) for y in rows)
    return [left, rows[0], right - left, rows[-1] + 1 - rows[0]]


def painted_layer(doc, name, x, y, bgra):
    node = doc.createNode(name, "paintlayer")
    node.setPixelData(bytes(bgra) * (16 * 16), x, y, 16, 16)
    return node


def run(ctx):
    app = ctx.app
    plugin = sys.modules["easel_krita"]
    ext = plugin.extension
    controller = ext.controller
    window = app.activeWindow()
    yield (lambda: controller.view.connection == "online", 60)

    live = getattr(ext, "live", None)
    docker_toggle = None
    body = find_docker(window)  # the Easel docker's content: its Live workspace's button starts and stops live
    if body is not None:
        body.set_workspace("live")
        docker_toggle, keep_button = body.primary_button, body.keep_button
    if live is None:  # not wired into the extension: drive the module directly
        from easel_krita.krita_live import KritaLiveHost
        from easel_krita.live import LiveMode
        live = LiveMode(controller, KritaLiveHost(controller.host))
    from easel_krita.live import LIVE_LAYER_NAME, LiveSettings
    ctx.record("wired", {"extension": hasattr(ext, "live"), "docker": docker_toggle is not None})
    live.debounce_s = 0.15
    live.set_settings(LiveSettings(strength=0.6, steps=2, seed=4321))

    doc = app.createDocument(W, H, "live", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield 0.5
    root = doc.rootNode()
    background = root.childNodes()[0]
    background.setPixelData(bytes((x * 7 % 256, y * 5 % 256, 120, 255) [i] for y in range(H) for x in range(W)
                                  for i in range(4)), 0, 0, W, H)
    paint = painted_layer(doc, "Paint", 40, 40, (20, 20, 230, 255))
    root.addChildNode(paint, None)
    selection = Selection()
    selection.select(*SEL, 255)
    doc.setSelection(selection)
    doc.refreshProjection()
    doc.waitForDone()
    doc.setActiveNode(paint)
    yield 0.5

    before_on = {"layers": state(doc), "rows": undo_rows(window), "active": doc.activeNode().name()}
    ctx.record("before_on", before_on)

    # -- on (Krita's own consistency checks, SAFE ASSERT lines in its log, are checked from here on:
    # setting the selection above makes Krita 5.1 log two of them by itself)
    print("EASEL-LIVE-START", flush=True)
    if docker_toggle is not None:
        docker_toggle.click()
    else:
        live.enable()
    yield (lambda: live.stats.results_drawn, 120)
    yield 0.5
    live_node = [n for n in layers(doc) if n.name() == LIVE_LAYER_NAME]
    ctx.record("on", {
        "enabled": live.view.enabled, "status": live.view.status,
        "names": [n.name() for n in layers(doc)], "rows": undo_rows(window),
        "active": doc.activeNode().name(), "locked": live_node[0].locked() if live_node else None,
        "live_box": alpha_box(live_node[0].pixelData(0, 0, W, H)) if live_node else None,
        "selection": [doc.selection().x(), doc.selection().y(), doc.selection().width(), doc.selection().height()]
        if doc.selection() else None,
        "changes": live.stats.changes, "jobs": live.stats.jobs_sent,
        "toggle_checked": docker_toggle.isChecked() if docker_toggle is not None else None,
    })
    # What the canvas shows inside the selection is the live image (the projection was refreshed).
    x, y = SEL[0] + 10, SEL[1] + 10
    shown = bytes(doc.pixelData(x, y, 1, 1))
    ctx.record("projection_shows_live", shown == bytes(live_node[0].pixelData(x, y, 1, 1)))
    yield 1.0
    ctx.record("idle_after_result", {"changes": live.stats.changes, "jobs": live.stats.jobs_sent,
                                      "previews": live.stats.previews_drawn})

    # -- the painter changes things: each change is one live job
    sent = live.stats.jobs_sent
    stroke = painted_layer(doc, "Stroke 1", 60, 30, (30, 200, 30, 255))
    root.addChildNode(stroke, paint)  # above Paint, under the live layer, as Krita's New Layer does
    yield (lambda: live.stats.jobs_sent == sent + 1 and live.stats.results_drawn[-1].endswith(f"-{sent + 1}"), 120)
    app.action("edit_undo").trigger()  # Ctrl+Z: the stroke layer goes
    yield (lambda: live.stats.jobs_sent == sent + 2 and live.stats.results_drawn[-1].endswith(f"-{sent + 2}"), 120)
    app.action("edit_redo").trigger()  # and comes back: the picture is one the server has seen
    yield (lambda: live.stats.results_drawn[-1].endswith(f"-{sent + 3}"), 120)
    yield 1.0
    ctx.record("after_changes", {"changes": live.stats.changes, "jobs": live.stats.jobs_sent - sent,
                                 "names": [n.name() for n in layers(doc)]})

    # -- a burst of changes faster than the jobs: only the newest result reaches the layer
    sent = live.stats.jobs_sent
    drawn_before = len(live.stats.results_drawn)
    for i in range(4):
        root.addChildNode(painted_layer(doc, f"Burst {i}", 30 + 12 * i, 70, (200, 30 * i, 30, 255)), paint)
        yield 0.2
    yield (lambda: live.jobs.timer is None and not live.jobs.sending, 30)  # the last change's job is sent
    newest = f"-{live.stats.jobs_sent}"
    yield (lambda: live.stats.results_drawn and live.stats.results_drawn[-1].endswith(newest), 120)
    yield 1.0
    drawn = live.stats.results_drawn[drawn_before:]
    node = [n for n in layers(doc) if n.name() == LIVE_LAYER_NAME][0]
    rect = live.jobs.shown.rect
    ctx.record("burst", {
        "jobs": live.stats.jobs_sent - sent, "drawn": drawn, "newest_suffix": newest,
        "shown": live.jobs.shown.job_id, "dropped": list(live.stats.dropped_results),
        "layer_is_shown_result": bytes(node.pixelData(rect.x, rect.y, rect.width, rect.height)) == live.jobs.shown.bgra,
    })

    # -- keep
    rows = undo_rows(window)
    active_before_keep = doc.activeNode().name()
    to_keep = live.jobs.shown.bgra  # keeping is a change too: a newer live image may follow at once
    if docker_toggle is not None:
        keep_button.click()
    else:
        live.keep()
    yield 0.5
    names = [n.name() for n in layers(doc)]
    kept = layers(doc)[-2]
    ctx.record("keep", {
        "names": names, "rows_added": undo_rows(window) - rows, "kept_name": kept.name(),
        "active_before": active_before_keep, "active": doc.activeNode().name(),
        "kept_is_live": bytes(kept.pixelData(rect.x, rect.y, rect.width, rect.height)) == to_keep,
    })
    yield (lambda: not live.jobs.sending and live.jobs.timer is None and not live.jobs.open, 120)
    app.action("edit_undo").trigger()  # Ctrl+Z takes the kept layer away
    yield 0.5
    ctx.record("keep_undone", [n.name() for n in layers(doc)])
    yield (lambda: not live.jobs.sending and live.jobs.timer is None and not live.jobs.open, 120)
    yield 0.5

    # -- off: the document is as the painter left it
    painter = {"layers": [entry for entry in state(doc) if entry[0] != LIVE_LAYER_NAME], "rows": undo_rows(window),
               "active": doc.activeNode().name(),
               "selection": [doc.selection().x(), doc.selection().y(), doc.selection().width(),
                             doc.selection().height()] if doc.selection() else None}
    if docker_toggle is not None:
        docker_toggle.click()
    else:
        live.disable()
    yield 0.5
    doc.waitForDone()
    after = {"layers": state(doc), "rows": undo_rows(window), "active": doc.activeNode().name(),
             "selection": [doc.selection().x(), doc.selection().y(), doc.selection().width(),
                           doc.selection().height()] if doc.selection() else None,
             "enabled": live.view.enabled, "toggle_checked": docker_toggle.isChecked() if docker_toggle else None}
    ctx.record("off", {"painter": painter, "after": after})
    jobs = live.stats.jobs_sent
    root.addChildNode(painted_layer(doc, "After", 10, 10, (1, 2, 3, 255)), None)
    yield 1.0
    ctx.record("after_off_jobs", live.stats.jobs_sent - jobs)
    ctx.record("screenshot", ctx.screenshot("krita-easel-live.png"))
    doc.setModified(False)
