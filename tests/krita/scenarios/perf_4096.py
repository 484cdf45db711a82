"""Runs INSIDE Krita: how long does the UI stall while Easel reads, sends and applies a 4096²
canvas? A 5 ms timer (the driver's probe) records the longest gap between its ticks during each
job; the controller records its own longest main-thread step. Demo model, so the model's own time
is small and the cost is the plugin's and the transport's."""
import sys
import time

from krita import Krita, Selection

SIZE = 4096


def run(ctx):
    app = Krita.instance()
    controller = sys.modules["easel_krita"].extension.controller
    yield (lambda: controller.view.connection == "online", 120)
    window = app.activeWindow()
    doc = app.createDocument(SIZE, SIZE, "easel-4096", "RGBA", "U8", "", 72.0)
    window.addView(doc)
    app.setActiveDocument(doc)
    yield 0.5
    background = doc.rootNode().childNodes()[0]
    row = b"".join(bytes((x % 256, (x // 16) % 256, 120, 255)) for x in range(SIZE))
    background.setPixelData(row * SIZE, 0, 0, SIZE, SIZE)
    doc.waitForDone()
    doc.refreshProjection()
    yield 1.0
    controller.settings = controller.settings.__class__(prompt="perf", seed=1, steps=4, strength=0.5, context=64)
    # The plugin's own cost is measured: no big-canvas refine passes (hundreds of tiles on the CPU)
    controller.big_canvas.largest_side = 64
    results = {}

    def job(name, action, selection=None):
        if selection is None:
            doc.setSelection(Selection())
        else:
            sel = Selection()
            sel.select(*selection, 255)
            doc.setSelection(sel)
        yield 0.5
        controller.stats.longest_main_thread_step_s = 0.0
        controller.stats.slow_steps.clear()
        previews_before = controller.stats.previews_drawn
        ctx.probe.reset()
        start = time.monotonic()
        app.action(action).trigger()
        yield 0.05
        yield (lambda: not controller.jobs, 300)
        gaps = ctx.probe.gaps
        results[name] = {
            "elapsed_s": round(time.monotonic() - start, 2),
            "ui_max_stall_s": round(ctx.probe.max_gap, 3),
            "ui_stalls_over_100ms": sum(1 for g in gaps if g > 0.1),
            "ui_stalls_over_50ms": sum(1 for g in gaps if g > 0.05),
            "longest_main_thread_step_s": round(controller.stats.longest_main_thread_step_s, 3),
            "longest_main_thread_step": controller.stats.longest_main_thread_step,
            "previews_drawn": controller.stats.previews_drawn - previews_before,
            "message": controller.view.message,
            "error": controller.view.message_is_error,
            "layers": len(doc.rootNode().childNodes()),
            "slow_steps": list(controller.stats.slow_steps),
            "probe_gaps_over_50ms": [round(g, 3) for g in gaps if g > 0.05],
        }
        ctx.record("perf", results)
        app.action("edit_undo").trigger()  # keep the document light between jobs
        doc.waitForDone()
        yield 0.5

    yield from job("refine_4096", "easel_refine")
    yield from job("generate_4096", "easel_generate")
    yield from job("fill_2048_in_4096", "easel_fill", (1024, 1024, 2048, 2048))
    ctx.record("probe_idle_check", True)
