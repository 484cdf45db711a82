"""The style reference in Blender: an image datablock set in the panel's property goes with every
view of a multi-view texture run, read from the datablock's own pixels.

The views are rendered and sent by the add-on's own code (``multiview.start`` and, for each later
view, ``multiview.on_result``, as the dispatcher calls them); the server is replaced by a
recorder of what would be submitted, answering each view with a flat grey image (the reference
server refuses jobs with references until it runs them, so a real run would stop at view 1).
"""
from __future__ import annotations

import bpy
import numpy as np

from scene import build_objects_scene

SIZE = 64
VIEWS = 3


def test_every_view_of_a_multi_view_texture_carries_the_style_reference(extension):
    easel = extension
    objects = build_objects_scene()
    settings = bpy.context.scene.easel
    settings.prompt, settings.seed, settings.depth_guide = "weathered stone", 5, "DEPTH2IMG"
    width, height = 40, 30
    rng = np.random.default_rng(3)
    rows = np.round(rng.random((height, width, 4)) * 255) / 255  # bottom-up, exactly representable in 8 bits
    rows[..., 3] = 1.0
    style = bpy.data.images.new("Easel style", width, height, alpha=True)
    style.pixels.foreach_set(rows.astype(np.float32).reshape(-1))
    settings.style_reference, settings.style_weight = style, 0.8
    targets = [objects["cube"], objects["sphere"], objects["plane"]]
    cameras = easel.multiview.make_orbit_rig(bpy.context, targets, VIEWS, 30.0, 1.0)

    submitted = []

    def submit(kind, request, context, url="", token=""):
        job = easel.jobs.OpenJob(f"view-{len(submitted) + 1}", kind, request, context)
        submitted.append(job)
        return job

    easel.multiview.start(bpy.context, targets, cameras, width=SIZE, height=SIZE, uv_mode="SMART", bake_size=512,
                          submit=submit, url="ws://127.0.0.1:9")
    grey = bytes((128, 128, 128, 255)) * (SIZE * SIZE)
    for index in range(VIEWS - 1):  # each result sends the next view (the last one would bake)
        summary = easel.multiview.on_result(submitted[index], grey, SIZE, SIZE, 5, submit)
        assert f"sent view {index + 2}" in summary
    assert len(submitted) == VIEWS

    expected = (rows[::-1] * 255 + 0.5).astype(np.uint8).tobytes()  # RGBA8, rows top-down
    for index, job in enumerate(submitted):
        wire = job.request.job(job.job_id)
        [reference] = wire.params.references
        assert (reference.weight, reference.start, reference.end, reference.model) == (0.8, 0.0, 1.0, "")
        [picture] = [p for p in job.request.payloads() if p.id == reference.image]
        assert (picture.format.value, picture.width, picture.height) == ("rgba8", width, height)
        assert picture.data == expected
        assert (wire.params.prompt, wire.params.seed) == ("weathered stone", 5)
        assert ("image" in wire.images) == (index > 0)  # later views start from what earlier ones textured
    assert len({job.request.references[0].image.id for job in submitted}) == 1  # one upload for the run

    # without a reference (or at weight 0) nothing of it is sent
    settings.style_weight = 0.0
    plain = []
    easel.multiview.start(bpy.context, targets, cameras, width=SIZE, height=SIZE, uv_mode="SMART", bake_size=512,
                          submit=lambda *a, **k: plain.append(a[1]) or easel.jobs.OpenJob("p", a[0], a[1], a[2]),
                          url="ws://127.0.0.1:9")
    assert plain[0].job("p").params.references == ()
    settings.style_reference, settings.style_weight = None, 0.6
    bpy.data.images.remove(style)
