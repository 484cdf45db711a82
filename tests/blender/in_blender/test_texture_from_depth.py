"""The Blender extension in the real host: installed from its zip, driven through its operators,
against ``easel serve`` on its demo depth model (a tiny random 5-channel UNet).

``bpy.app.timers`` never fire in Blender built as a module, so :func:`wait_for_jobs` calls the
add-on's main-thread dispatcher (the function its timer would run) directly, in a loop.
"""
from __future__ import annotations

import time

import bpy
import numpy as np
import pytest

from conftest import MODULE, WAIT_S
from scene import (
    HEIGHT, WIDTH, bilinear, build_scene, camera_uv, near_silhouette, ray_cast_depth, render_rgba8, seen_from,
)


def wait_for_jobs(easel) -> None:
    """Run the dispatcher until no job is open (timers never fire in the module build)."""
    state = easel.runtime.get()
    deadline = time.monotonic() + WAIT_S
    while state.book.jobs:
        assert time.monotonic() < deadline, f"the job did not end; status: {state.book.status}"
        easel.runtime.dispatch()
        time.sleep(0.02)
    easel.runtime.dispatch()


def configure(easel, url: str, **settings) -> None:
    bpy.context.preferences.addons[MODULE].preferences.server_url = url
    values = dict(prompt="weathered stone", negative_prompt="", model="", seed=1234, steps=3, cfg_scale=6.0,
                  size_mode="SCENE", depth_mode="inverse", shading="EMISSION", depth_guide="DEPTH2IMG",
                  depth_weight=1.0, depth_controlnet="", line_guide="NONE", line_weight=0.5, line_controlnet="")
    values.update(settings)
    for key, value in values.items():
        setattr(bpy.context.scene.easel, key, value)


def texture(easel, url: str, **settings) -> None:
    configure(easel, url, **settings)
    assert bpy.ops.easel.texture_from_depth() == {"FINISHED"}
    wait_for_jobs(easel)
    assert not easel.runtime.get().book.last_error, easel.runtime.get().book.status


def rows_bottom_up(data: bytes, channels_dtype="<f4", channels=1) -> np.ndarray:
    return np.frombuffer(data, channels_dtype).reshape(HEIGHT, WIDTH, channels)[::-1]


@pytest.fixture(scope="module")
def textured(extension, backend_url):
    """The scene before and after one *Texture from Depth*, with what the test measured."""
    easel = extension
    objects = build_scene()
    before = render_rgba8(objects["camera"])
    before_behind = render_rgba8(objects["behind"])
    depth, points = ray_cast_depth(objects["camera"])
    texture(easel, backend_url)
    done = easel.runtime.get().book.last(easel.jobs.JobKind.TEXTURE)
    assert done is not None, easel.runtime.get().book.status
    assert done.status is easel.jobs.Status.APPLIED and done.message == easel.runtime.get().book.notice
    return dict(easel=easel, objects=objects, before=before, before_behind=before_behind, depth=depth,
                points=points, done=done, notice=easel.runtime.get().book.notice)


def test_the_extension_installs_from_its_zip_and_registers(extension):
    assert MODULE in bpy.context.preferences.addons
    prefs = bpy.context.preferences.addons[MODULE].preferences
    assert prefs.bl_rna.properties["server_url"].default == "ws://127.0.0.1:9797"  # easel serve's default
    for name in ("texture_from_depth", "refine_render", "cancel", "restore_materials", "connect", "apply_result"):
        assert hasattr(bpy.ops.easel, name)
    assert hasattr(bpy.types, "VIEW3D_PT_easel") and hasattr(bpy.types, "VIEW3D_PT_easel_history")
    # msgpack and websockets come from the wheels bundled in the zip (the venv has neither).
    import msgpack
    import websockets
    assert "extensions" in msgpack.__file__ and "extensions" in websockets.__file__


def test_the_depth_sent_matches_a_reference_render(textured):
    request = textured["done"].job.request
    assert request.task == "depth2img" and (request.width, request.height) == (WIDTH, HEIGHT)
    sent = rows_bottom_up(request.images["depth"].data)[..., 0]
    reference = textured["depth"]
    hit = reference < 1e9
    assert 0.3 < hit.mean() < 0.99  # the scene fills part of the frame, the sky the rest
    expected = np.where(hit, reference[hit].min() / reference, 0.0)  # the documented contract: near / depth
    error = np.abs(sent - expected)
    # Pixel centres on a silhouette may hit on one side and miss on the other; all else agrees.
    assert (error < 1e-4).mean() > 0.995, f"{(error >= 1e-4).sum()} pixels differ"
    assert sent[hit].min() > 0 and sent[~hit].max() == 0 and np.isclose(sent.max(), 1.0)


def test_uvs_are_the_camera_projection_of_the_vertices(textured):
    camera = textured["objects"]["camera"]
    for name in ("plane", "cube"):
        obj = textured["objects"][name]
        mesh = obj.data
        layer = mesh.uv_layers["Easel Projection"]
        uv = np.empty(len(mesh.loops) * 2, np.float32)
        layer.data.foreach_get("uv", uv)
        corners = np.array([obj.matrix_world @ mesh.vertices[loop.vertex_index].co for loop in mesh.loops])
        assert np.allclose(uv.reshape(-1, 2), camera_uv(camera, corners), atol=1e-5), name


def test_a_new_material_and_a_packed_image_exist_and_originals_are_intact(textured):
    done = textured["done"]
    image = bpy.data.images[f"Easel texture {done.seed}"]
    assert image.packed_file is not None and tuple(image.size) == (WIDTH, HEIGHT)
    pixels = np.empty(WIDTH * HEIGHT * 4, np.float32)
    image.pixels.foreach_get(pixels)
    result = done.images[0]
    assert np.array_equal(np.round(pixels * 255).astype(np.uint8).reshape(HEIGHT, WIDTH, 4),
                          rows_bottom_up(result.data, np.uint8, 4))
    for name, original in (("plane", "Ground"), ("cube", "Box")):
        material = textured["objects"][name].material_slots[0].material
        assert material.name.startswith(f"{original} (Easel)")
        assert material["easel_original"] == bpy.data.materials[original]
        assert any(n.type == "TEX_IMAGE" and n.image == image for n in material.node_tree.nodes)
        kept = bpy.data.materials[original]
        assert kept.users >= 1 and "easel_job" not in kept
        assert [n.type for n in kept.node_tree.nodes] == ["EMISSION", "OUTPUT_MATERIAL"]
    under = textured["objects"]["under"]  # selected, but no camera ray reaches it: left untouched
    assert under.material_slots[0].material.name == "Under" and "Easel Projection" not in under.data.uv_layers
    assert "Under" in textured["notice"] and f"'Easel texture {done.seed}'" in textured["notice"]
    preview = bpy.data.images["Easel Preview"]  # step previews were streamed into it
    assert preview.packed_file is not None and preview.packed_file.data[:3] == b"\xff\xd8\xff"
    assert preview.size[0] > 0 and len(preview.pixels) == preview.size[0] * preview.size[1] * 4


def test_the_render_from_the_camera_reproduces_the_generated_image(textured):
    rendered = render_rgba8(textured["objects"]["camera"])
    generated = rows_bottom_up(textured["done"].images[0].data, np.uint8, 4).astype(np.int16)
    hit = textured["depth"] < 1e9
    # Leave out pixels beside a silhouette: their neighbours' texels are another surface's.
    interior = hit.copy()
    for axis in (0, 1):
        for shift in (1, -1):
            interior &= np.roll(hit, shift, axis=axis)
    error = np.abs(rendered[..., :3] - generated[..., :3])[interior]
    print(f"camera view: {interior.sum()} pixels, max error {error.max()}/255, mean {error.mean():.3f}/255")
    assert error.max() <= 2
    assert not np.array_equal(rendered, textured["before"])


def test_what_the_camera_did_not_see_keeps_its_original_look(textured):
    """From a second camera: surfaces hidden from the texturing camera (the cube's far side, the
    ground behind it) render exactly as before; surfaces it saw show the generated image."""
    objects = textured["objects"]
    rendered = render_rgba8(objects["behind"]).reshape(-1, 4)[:, :3]
    before = textured["before_behind"].reshape(-1, 4)[:, :3]
    _, points = ray_cast_depth(objects["behind"])
    points = points.reshape(-1, 3)
    hit = np.isfinite(points[:, 0])
    seen, hidden = seen_from(objects["camera"], points[hit], margin=2.0 / WIDTH)
    index = np.flatnonzero(hit)
    assert hidden.sum() > 200 and seen.sum() > 200  # the view has plenty of both
    # A depth pass resolves occlusion to its pixels: points within a pixel of the texturing
    # camera's silhouettes can fall either way, so they are left out of both sets.
    edge = near_silhouette(textured["depth"], camera_uv(objects["camera"], points[hit]))
    seen, hidden = seen & ~edge, hidden & ~edge
    kept = np.abs(rendered[index[hidden]] - before[index[hidden]])
    assert kept.max() <= 1, f"{(kept > 1).any(axis=1).sum()} hidden pixels changed"
    generated = rows_bottom_up(textured["done"].images[0].data, np.uint8, 4)
    expected = bilinear(generated[..., :3], camera_uv(objects["camera"], points[hit][seen]))
    error = np.abs(rendered[index[seen]] - expected)
    print(f"second view: {seen.sum()} seen pixels, mean error {error.mean():.2f}/255, "
          f"p99 {np.percentile(error, 99):.1f}/255; {hidden.sum()} hidden pixels unchanged")
    # Seen from elsewhere, texels are interpolated at arbitrary points (in linear light by Cycles,
    # in sRGB here): close on average, never the original colour.
    assert error.mean() < 2 and np.percentile(error, 99) < 6
    assert (np.abs(rendered[index[seen]] - before[index[seen]]).max(axis=1) > 8).mean() > 0.9


def test_restore_puts_the_original_materials_back(textured):
    objects = textured["objects"]
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj in (objects["plane"], objects["cube"]))
    assert bpy.ops.easel.restore_materials.poll()
    assert bpy.ops.easel.restore_materials() == {"FINISHED"}
    assert objects["plane"].material_slots[0].material == bpy.data.materials["Ground"]
    assert objects["cube"].material_slots[0].material == bpy.data.materials["Box"]
    assert np.array_equal(render_rgba8(objects["camera"]), textured["before"])
    assert not bpy.ops.easel.restore_materials.poll()
    # The generated image stays in the file after the restore (fake user), until discarded.
    image = bpy.data.images[f"Easel texture {textured['done'].seed}"]
    assert image.use_fake_user and image["easel_job"] == textured["done"].job_id
    # Texturing again starts from the originals, not from the previous projection.
    texture(textured["easel"], bpy.context.preferences.addons[MODULE].preferences.server_url, seed=99)
    again = objects["cube"].material_slots[0].material
    assert again["easel_original"] == bpy.data.materials["Box"]
