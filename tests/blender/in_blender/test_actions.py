"""Refine render, cancel, and what the user sees when something is wrong — in the real host,
against ``easel serve`` on its demo models. The dispatcher is called directly: timers never fire
in Blender built as a module."""
from __future__ import annotations

import time
import types

import bpy
import numpy as np
import pytest

from conftest import MODULE, free_port
from scene import HEIGHT, WIDTH, build_scene, render_rgba8
from test_texture_from_depth import configure, rows_bottom_up, wait_for_jobs


def materials(objects) -> list[str]:
    return [objects[k].material_slots[0].material.name for k in ("plane", "cube")]


def test_refine_render_sends_the_render_and_makes_a_new_image(extension, backend_url):
    easel = extension
    objects = build_scene()
    shown = render_rgba8(objects["camera"])  # leaves its result in "Render Result"
    configure(easel, backend_url, strength=0.5, seed=77)
    assert bpy.ops.easel.refine_render() == {"FINISHED"}
    wait_for_jobs(easel)
    done = easel.runtime.get().book.last(easel.jobs.JobKind.REFINE)
    assert done is not None, easel.runtime.get().book.status
    request = done.job.request
    assert (request.task, request.strength, request.seed) == ("img2img", 0.5, 77)
    assert np.array_equal(rows_bottom_up(request.images["image"].data, np.uint8, 4), shown.astype(np.uint8))
    image = bpy.data.images[f"Easel refine {done.seed}"]
    assert image.packed_file is not None and tuple(image.size) == (WIDTH, HEIGHT)
    pixels = np.empty(WIDTH * HEIGHT * 4, np.float32)
    image.pixels.foreach_get(pixels)
    assert np.array_equal(np.round(pixels * 255).astype(np.uint8).reshape(HEIGHT, WIDTH, 4),
                          rows_bottom_up(done.images[0].data, np.uint8, 4))
    assert materials(objects) == ["Ground", "Box"]  # refining touches no material


def test_refine_after_texture_from_depth_sends_the_artists_render_not_the_depth_pass(extension, backend_url):
    """Texture from Depth renders the depth pass, which replaces Render Result; Refine Render still
    sends the artist's own last render (kept before), never the depth pass."""
    easel = extension
    objects = build_scene()
    shown = render_rgba8(objects["camera"])  # the artist's F12
    configure(easel, backend_url, seed=5)
    assert bpy.ops.easel.texture_from_depth() == {"FINISHED"}
    wait_for_jobs(easel)
    assert bpy.context.scene["easel_render_result"] == "easel"
    assert bpy.ops.easel.refine_render() == {"FINISHED"}
    wait_for_jobs(easel)
    request = easel.runtime.get().book.last(easel.jobs.JobKind.REFINE).job.request
    assert np.array_equal(rows_bottom_up(request.images["image"].data, np.uint8, 4), shown.astype(np.uint8))
    # A render the artist makes afterwards is theirs again, and is what the next refine sends.
    for name in ("plane", "cube"):
        bpy.context.view_layer.objects[objects[name].name].select_set(True)
    assert bpy.ops.easel.restore_materials() == {"FINISHED"}
    again = render_rgba8(objects["behind"])
    assert bpy.context.scene["easel_render_result"] == "artist"
    assert bpy.ops.easel.refine_render() == {"FINISHED"}
    wait_for_jobs(easel)
    request = easel.runtime.get().book.last(easel.jobs.JobKind.REFINE).job.request
    assert np.array_equal(rows_bottom_up(request.images["image"].data, np.uint8, 4), again.astype(np.uint8))


def test_refine_refuses_when_the_only_render_is_the_depth_pass(extension, backend_url):
    easel = extension
    build_scene()
    for key in ("easel_render_result",):
        bpy.context.scene.pop(key, None)
    kept = bpy.data.images.get("Easel last render")
    if kept is not None:
        bpy.data.images.remove(kept)
    bpy.context.scene["easel_render_result"] = "easel"  # as after a depth render with no F12 before
    configure(easel, backend_url)
    with pytest.raises(RuntimeError, match="depth pass, not yours"):
        bpy.ops.easel.refine_render()


def test_cancel_ends_the_job_and_leaves_the_scene_as_it_was(extension, backend_url):
    easel = extension
    state = easel.runtime.get()
    objects = build_scene()
    configure(easel, backend_url, steps=150)
    assert bpy.ops.easel.texture_from_depth() == {"FINISHED"}
    assert state.book.busy() and bpy.data.images.get("Easel depth") is not None
    assert not bpy.ops.easel.texture_from_depth.poll()  # one texture job at a time
    assert bpy.ops.easel.cancel() == {"FINISHED"}
    assert not state.book.busy() and bpy.data.images.get("Easel depth") is None
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # late events of the cancelled job change nothing
        easel.runtime.dispatch()
        time.sleep(0.05)
    assert materials(objects) == ["Ground", "Box"]
    assert not [i for i in bpy.data.images if i.name.startswith("Easel texture")]
    assert not bpy.ops.easel.cancel.poll()
    # The connection is still good for the next job.
    configure(easel, backend_url, steps=2)
    assert bpy.ops.easel.texture_from_depth() == {"FINISHED"}
    wait_for_jobs(easel)
    assert materials(objects) == ["Ground (Easel)", "Box (Easel)"]


def test_an_unreachable_server_is_reported_and_nothing_changes(extension):
    easel = extension
    objects = build_scene()
    configure(easel, f"ws://127.0.0.1:{free_port()}")
    assert bpy.ops.easel.texture_from_depth() == {"FINISHED"}  # returns at once; the network is elsewhere
    wait_for_jobs(easel)
    assert "cannot connect to the Easel server" in easel.runtime.get().book.status
    assert materials(objects) == ["Ground", "Box"]
    assert bpy.data.images.get("Easel depth") is None


def test_a_server_side_refusal_reaches_the_panel(extension, backend_url):
    easel = extension
    objects = build_scene()
    configure(easel, backend_url, model="no-such-model")
    assert bpy.ops.easel.texture_from_depth() == {"FINISHED"}
    wait_for_jobs(easel)
    assert "no-such-model" in easel.runtime.get().book.status
    assert materials(objects) == ["Ground", "Box"]


def test_operators_explain_why_they_cannot_run(extension, backend_url):
    objects = build_scene()
    configure(extension, backend_url)
    assert bpy.ops.easel.texture_from_depth.poll()
    for obj in bpy.context.view_layer.objects:
        obj.select_set(False)
    assert not bpy.ops.easel.texture_from_depth.poll()
    objects["cube"].select_set(True)
    bpy.context.scene.camera = None
    assert not bpy.ops.easel.texture_from_depth.poll()
    assert not bpy.ops.easel.restore_materials.poll()


def test_a_camera_that_sees_nothing_is_an_error_the_user_can_fix(extension, backend_url):
    objects = build_scene()
    configure(extension, backend_url)
    objects["camera"].rotation_euler = (0, 3.1416, 0)  # looking straight up at the empty sky
    with pytest.raises(RuntimeError, match="nothing is in front of the camera"):
        bpy.ops.easel.texture_from_depth()
    assert not extension.runtime.get().book.busy()
    assert bpy.data.images.get("Easel depth") is None
    assert materials(objects) == ["Ground", "Box"]


def test_connect_fetches_the_servers_models_for_the_model_field(extension, backend_url):
    configure(extension, backend_url)
    state = extension.runtime.get()
    assert bpy.ops.easel.connect() == {"FINISHED"}
    deadline = time.monotonic() + 60
    while not state.book.connection.startswith("connected"):
        assert time.monotonic() < deadline, state.book.status
        assert extension.runtime.dispatch() is not None  # keeps polling until the answer is in
        time.sleep(0.02)
    assert {"demo", "demo-depth"} <= {m.id for m in state.book.models}
    choices = extension.properties._models(bpy.context.scene.easel, bpy.context, "depth")
    # a job's model: ControlNets (demo-depth-control) and reference adapters have their own fields
    assert [choice[0] for choice in choices] == ["demo-depth"]
    depth_nets = extension.properties._controlnets(("depth",))(bpy.context.scene.easel, bpy.context, "")
    assert [choice[0] for choice in depth_nets] == ["demo-depth-control"]


class OperatorProperties:
    """Stands in for the properties a panel sets on an operator button; only the operator's own."""

    def __init__(self, rna) -> None:
        object.__setattr__(self, "_names", set(rna.properties.keys()))
        object.__setattr__(self, "values", {})

    def __setattr__(self, name, value):
        assert name in self._names, name
        self.values[name] = value


class RecordingLayout:
    """Stands in for ``UILayout``: Blender builds panel layouts only for a window, which the module
    build has none of. Checks every property and operator the panel names exists."""

    def __init__(self) -> None:
        self.props: list[str] = []
        self.operators: list[str] = []
        self.labels: list[str] = []
        self.enabled, self.scale_y = True, 1.0

    def row(self, **_):
        return self

    column = box = row

    def prop(self, data, name, **_):
        assert name in data.bl_rna.properties, name
        self.props.append(name)

    def operator(self, idname, **_):
        category, name = idname.split(".")
        rna = getattr(getattr(bpy.ops, category), name).get_rna_type()  # raises KeyError if missing
        self.operators.append(idname)
        return OperatorProperties(rna)

    def label(self, text="", **_):
        self.labels.append(text)


def test_the_panel_draws_every_setting_and_action(extension, backend_url):
    configure(extension, backend_url)
    layout = RecordingLayout()
    extension.panel.VIEW3D_PT_easel.draw(types.SimpleNamespace(layout=layout), bpy.context)
    assert {"model", "prompt", "negative_prompt", "seed", "steps", "cfg_scale", "strength",
            "size_mode", "depth_guide"} <= set(layout.props)
    assert set(layout.operators) == {"easel.connect", "easel.texture_from_depth", "easel.refine_render",
                                     "easel.cancel", "easel.restore_materials"}
    # The planned size and steps are shown before the click (the scene's 128x96 here, 3 steps).
    assert layout.labels == [extension.runtime.get().book.status, "Next: 128×96 · 3 steps"]
    settings = bpy.context.scene.easel
    settings.size_mode, settings.steps = "MODEL", 0
    scene = bpy.context.scene
    scene.view_settings.view_transform = "AgX"
    try:
        layout = RecordingLayout()
        extension.panel.VIEW3D_PT_easel.draw(types.SimpleNamespace(layout=layout), bpy.context)
    finally:
        scene.view_settings.view_transform = "Standard"
    # The demo depth model's native size (its default_width × default_height) at the render's 4:3.
    model = next(m for m in extension.runtime.get().book.models if "depth2img" in m.tasks)
    expected = extension.plan.native_size(model, WIDTH / HEIGHT)
    assert layout.labels[1] == f"Next: {expected[0]}×{expected[1]} · {model.default_steps} steps"
    assert "AgX" in layout.labels[2] and "Bakes store the generated colours" in layout.labels[2]
    assert bpy.context.scene.easel.resolution(scene, "depth2img") == expected
    configure(extension, backend_url, depth_guide="CONTROLNET", line_guide="CANNY")
    layout = RecordingLayout()
    extension.panel.VIEW3D_PT_easel.draw(types.SimpleNamespace(layout=layout), bpy.context)
    assert {"depth_weight", "depth_controlnet", "line_guide", "line_weight", "line_controlnet"} <= set(layout.props)


def test_the_history_lists_jobs_and_offers_apply_for_kept_results(extension, backend_url):
    book = extension.runtime.get().book
    assert book.history, "earlier tests ran jobs"
    assert extension.panel.VIEW3D_PT_easel_history.poll(bpy.context)
    layout = RecordingLayout()
    extension.panel.VIEW3D_PT_easel_history.draw(types.SimpleNamespace(layout=layout), bpy.context)
    assert layout.labels == [entry.label for entry in reversed(book.history)]
    # Apply for each kept result; Discard (let go of its images) for each applied one.
    expected = [name for entry in reversed(book.history) for name, wanted in
                (("easel.apply_result", entry.can_apply), ("easel.discard_result", entry.status.value == "applied"))
                if wanted]
    assert layout.operators == expected
    assert layout.operators.count("easel.apply_result") == len(book.kept())


def test_the_sub_panels_stay_folded_and_draw_views_sampler_batch_and_loras(extension, backend_url):
    configure(extension, backend_url)
    panels = extension.panel
    for cls in (panels.VIEW3D_PT_easel_views, panels.VIEW3D_PT_easel_sampling, panels.VIEW3D_PT_easel_loras):
        assert cls.bl_parent_id == "VIEW3D_PT_easel" and "DEFAULT_CLOSED" in cls.bl_options
    layout = RecordingLayout()
    panels.VIEW3D_PT_easel_sampling.draw(types.SimpleNamespace(layout=layout), bpy.context)
    assert layout.props == ["sampler", "batch_size"]
    layout = RecordingLayout()
    panels.VIEW3D_PT_easel_loras.draw(types.SimpleNamespace(layout=layout), bpy.context)
    assert layout.props == ["lora_1", "lora_1_weight", "lora_2", "lora_2_weight"]
    layout = RecordingLayout()
    panels.VIEW3D_PT_easel_views.draw(types.SimpleNamespace(layout=layout), bpy.context)
    assert {"orbit_views", "orbit_elevation", "orbit_distance", "bake_uv", "bake_size"} <= set(layout.props)
    assert {"easel.orbit_rig", "easel.texture_views"} <= set(layout.operators)
    assert layout.labels[-1].startswith("Next: 128×96 · 3 steps") and layout.labels[-1].endswith("bake 1024²")
    # The settings reach the request: sampler and LoRAs for every job, the batch for Refine Render.
    settings = bpy.context.scene.easel
    settings.sampler, settings.lora_1, settings.lora_1_weight = "euler", "demo-lora", 0.5
    common = extension.guides.common(settings)
    assert common["sampler"] == "euler" and common["loras"] == (("demo-lora", 0.5),)
    settings.sampler, settings.lora_1 = "", ""
