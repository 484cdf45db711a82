"""Texture from Depth with ControlNet-depth instead of a depth model, and the Workbench line guide —
in the real host, against ``easel serve`` on its demo models (``demo-depth-control`` is the demo
ControlNet listed as a depth one; ``demo-canny`` a canny one). The dispatcher is called directly:
timers never fire in Blender built as a module."""
from __future__ import annotations

import re
import time

import bpy
import numpy as np
import pytest

from conftest import WAIT_S
from scene import HEIGHT, WIDTH, build_scene, camera_uv, ray_cast_depth, render_rgba8
from test_texture_from_depth import configure, rows_bottom_up, texture


def connected(easel, url: str) -> None:
    """Connect and wait (dispatching) until the server's models are known."""
    configure(easel, url)
    state = easel.runtime.get()
    bpy.ops.easel.connect()
    deadline = time.monotonic() + WAIT_S
    while not (state.book.connection.startswith("connected") and state.connection.url == url and state.book.models):
        assert time.monotonic() < deadline, state.book.status
        easel.runtime.dispatch()
        time.sleep(0.02)


def render_settings(scene) -> dict:
    """Everything the line guide's Workbench render overrides, read back."""
    shading, render = scene.display.shading, scene.render
    return dict(
        engine=render.engine, size=(render.resolution_x, render.resolution_y, render.resolution_percentage),
        film_transparent=render.film_transparent, compositing=render.use_compositing, sequencer=render.use_sequencer,
        border=render.use_border, motion_blur=render.use_motion_blur, aa=scene.display.render_aa,
        shading=(shading.light, shading.color_type, shading.show_object_outline, shading.show_cavity,
                 shading.show_shadows, shading.show_xray, shading.show_backface_culling),
        view=(scene.view_settings.view_transform, scene.view_settings.look, scene.view_settings.exposure,
              scene.view_settings.gamma, scene.view_settings.use_curve_mapping),
        output=(render.image_settings.file_format, render.image_settings.color_mode, render.image_settings.color_depth),
        cycles=(scene.cycles.samples, scene.cycles.filter_width), pass_z=bpy.context.view_layer.use_pass_z)


def server_log_for(backend, job_id: str) -> list[str]:
    return [line for line in backend.log.read_text().splitlines() if re.search(rf"/{re.escape(job_id)}\b", line)]


def interior_error(generated: bytes, camera, depth) -> np.ndarray:
    """|render from the camera − the generated image| over pixels not beside a silhouette."""
    rendered = render_rgba8(camera)
    image = rows_bottom_up(generated, np.uint8, 4).astype(np.int16)
    hit = depth < 1e9
    interior = hit.copy()
    for axis in (0, 1):
        for shift in (1, -1):
            interior &= np.roll(hit, shift, axis=axis)
    return np.abs(rendered[..., :3] - image[..., :3])[interior]


def test_controlnet_depth_sends_the_depth_map_as_a_control_image_and_textures_as_before(extension, backend):
    easel = extension
    objects = build_scene()
    reference, _ = ray_cast_depth(objects["camera"])
    # As on the first press after starting Blender: the add-on does not know the server's models
    # yet, so the ControlNet is picked on the connection's thread from the server's welcome.
    book = easel.runtime.get().book
    known, book.models = book.models, ()
    try:
        texture(easel, backend.url, depth_guide="CONTROLNET", depth_weight=0.9)
    finally:
        book.models = book.models or known
    entry = easel.runtime.get().book.last(easel.jobs.JobKind.TEXTURE)
    assert entry.status is easel.jobs.Status.APPLIED, entry.label

    # What went to the server: txt2img with one ControlNet unit, the depth ControlNet, the depth map.
    sent = entry.job.sent
    assert sent.task == "txt2img" and not sent.images
    assert (sent.params.width, sent.params.height) == (WIDTH, HEIGHT)
    (unit,) = sent.params.controls
    assert (unit.model, unit.weight, unit.preprocessor) == ("demo-depth-control", 0.9, "")
    control = entry.job.request.controls[0].image
    assert unit.image == control.id and control.format.value == "grey8" and (control.width, control.height) == (WIDTH, HEIGHT)
    lines = server_log_for(backend, entry.job_id)
    assert any("accepted: txt2img on demo" in line for line in lines), lines
    assert any("finished" in line for line in lines), lines

    # The control image is the depth pass normalised (near / depth, near white, sky black), 8-bit.
    grey = rows_bottom_up(control.data, np.uint8, 1)[..., 0].astype(np.int16)
    hit = reference < 1e9
    expected = np.round(np.where(hit, reference[hit].min() / reference, 0.0) * 255)
    close = np.abs(grey - expected) <= 1
    assert close.mean() > 0.995, f"{(~close).sum()} pixels differ"  # silhouette pixels may fall either way
    assert grey[~hit & close].max() == 0 and grey.max() == 255

    # And the result lands as with depth2img: projection UVs, new materials, the camera's view reproduced.
    camera = objects["camera"]
    for name, original in (("plane", "Ground"), ("cube", "Box")):
        obj = objects[name]
        assert obj.material_slots[0].material["easel_original"] == bpy.data.materials[original]
        uv = np.empty(len(obj.data.loops) * 2, np.float32)
        obj.data.uv_layers["Easel Projection"].data.foreach_get("uv", uv)
        corners = np.array([obj.matrix_world @ obj.data.vertices[loop.vertex_index].co for loop in obj.data.loops])
        assert np.allclose(uv.reshape(-1, 2), camera_uv(camera, corners), atol=1e-5), name
    error = interior_error(entry.images[0].data, camera, reference)
    print(f"ControlNet depth: camera view max error {error.max()}/255 over {error.shape[0]} pixels")
    assert error.max() <= 2


def test_a_workbench_line_guide_goes_with_the_depth_and_the_render_settings_come_back(extension, backend):
    easel = extension
    objects = build_scene()
    scene = bpy.context.scene
    # Settings a user may have, unlike anything the Workbench render uses: all must survive.
    scene.display.shading.color_type = "MATERIAL"
    scene.display.shading.show_object_outline = False
    scene.display.render_aa = "FXAA"
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "JPEG"
    scene.view_settings.exposure = 0.25
    before = render_settings(scene)
    reference, _ = ray_cast_depth(objects["camera"])
    texture(easel, backend.url, depth_guide="CONTROLNET", line_guide="CANNY", line_weight=0.35)
    assert render_settings(scene) == before

    entry = easel.runtime.get().book.last(easel.jobs.JobKind.TEXTURE)
    assert entry.status is easel.jobs.Status.APPLIED, entry.label
    units = entry.job.sent.params.controls
    assert [(u.model, u.weight, u.preprocessor) for u in units] == [("demo-depth-control", 1.0, ""),
                                                                   ("demo-canny", 0.35, "canny")]
    lines = entry.job.request.controls[1].image
    assert units[1].image == lines.id and lines.format.value == "rgba8" and (lines.width, lines.height) == (WIDTH, HEIGHT)
    # A Workbench render from the camera: opaque (film_transparent was off for it), the sky one flat
    # colour, the ground and the box each their own (random per-object colours, studio light).
    picture = rows_bottom_up(lines.data, np.uint8, 4).astype(np.int16)
    hit = reference < 1e9
    assert (picture[..., 3] == 255).all()
    near_object = hit.copy()
    for axis in (0, 1):
        for shift in (-2, -1, 1, 2):  # outlines and anti-aliasing reach a pixel or two past a silhouette
            near_object |= np.roll(hit, shift, axis=axis)
    sky = picture[~near_object][:, :3]
    assert np.abs(sky - sky[0]).max() <= 1
    uv_cube = camera_uv(objects["camera"], np.array([objects["cube"].matrix_world.translation]))[0]
    cube_pixel = picture[int(uv_cube[1] * HEIGHT), int(uv_cube[0] * WIDTH), :3]
    ground_pixel = picture[2, WIDTH // 2, :3]  # bottom middle of the frame: the ground in front
    assert hit[2, WIDTH // 2] and np.abs(cube_pixel - ground_pixel).max() > 10
    assert np.abs(cube_pixel - sky[0]).max() > 10
    # Not the Cycles emission render: the scene's own look is not what guides the lines.
    assert not np.array_equal(picture, render_rgba8(objects["camera"]))
    assert [objects[k].material_slots[0].material.name for k in ("plane", "cube")] == ["Ground (Easel)", "Box (Easel)"]


def test_a_server_without_a_fitting_controlnet_is_reported_by_the_operator(extension, backend):
    easel = extension
    objects = build_scene()
    connected(easel, backend.url)
    configure(easel, backend.url, depth_guide="CONTROLNET", depth_controlnet="demo-canny")
    with pytest.raises(RuntimeError, match="'demo-canny' is for canny, not depth"):
        bpy.ops.easel.texture_from_depth()
    book = easel.runtime.get().book
    real = book.models
    # The demo server has a depth ControlNet; a server without one is stood in for by its own list
    # minus that entry (the check is the add-on's, before anything is sent).
    book.models = tuple(m for m in real if m.control_type != "depth")
    try:
        configure(easel, backend.url, depth_guide="CONTROLNET")
        with pytest.raises(RuntimeError, match="no depth ControlNet for demo models .*--controlnet depth=PATH"):
            bpy.ops.easel.texture_from_depth()
    finally:
        book.models = real
    assert not book.busy() and bpy.data.images.get("Easel depth") is None
    assert [objects[k].material_slots[0].material.name for k in ("plane", "cube")] == ["Ground", "Box"]
