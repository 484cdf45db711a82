"""Reading the scene: the depth pass from the active camera, a Workbench render for line guides,
the camera's matrices, the last render result, and images to and from arrays. Imports ``bpy``.

The depth pass is rendered headless-safely: Cycles, one sample at pixel centres, a compositor
File Output node writing a 32-bit OpenEXR (the Viewer node gives nothing without a window). Every
setting it touches is put back afterwards, whatever happens. The compositor API differs between
Blender 4.x (``scene.node_tree``, ``file_slots``) and 5.x (``scene.compositing_node_group``,
``file_output_items``); both are handled here.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import bpy
import numpy as np

from . import pixels
from .projection import CameraProjection


class RenderError(RuntimeError):
    """The scene cannot be rendered as asked; the message says what to change."""


#: On the scene: ``"easel"`` while *Render Result* holds one of the add-on's own renders (a depth
#: pass, a line guide), ``"artist"`` after any other render.
RESULT_KEY = "easel_render_result"
#: On the scene while the add-on renders (the render handler then leaves :data:`RESULT_KEY` alone).
RENDERING_KEY = "easel_rendering"
#: The artist's last render, kept before the add-on's own render replaces *Render Result*.
LAST_RENDER = "Easel last render"


@bpy.app.handlers.persistent
def on_render_post(scene: bpy.types.Scene, *_args: Any) -> None:
    """``render_post``: a render that is not the add-on's own is the artist's."""
    if not scene.get(RENDERING_KEY):
        scene[RESULT_KEY] = "artist"


def watch_renders() -> None:
    """Called by ``register()``: track whose render *Render Result* holds."""
    if on_render_post not in bpy.app.handlers.render_post:
        bpy.app.handlers.render_post.append(on_render_post)


def unwatch_renders() -> None:
    if on_render_post in bpy.app.handlers.render_post:
        bpy.app.handlers.render_post.remove(on_render_post)


def _keep_artist_render(scene: bpy.types.Scene, directory: Path) -> None:
    """Before an own render replaces *Render Result*: copy the artist's render (as displayed) into
    the packed image :data:`LAST_RENDER`, for *Refine Render*. Nothing to keep when Render Result
    is already the add-on's or empty."""
    result = bpy.data.images.get("Render Result")
    if result is None or scene.get(RESULT_KEY) == "easel":
        return
    path = directory / "artist_render.png"
    try:
        _save_render_png(result, scene, path)
    except RuntimeError:
        return  # nothing rendered yet
    old = bpy.data.images.get(LAST_RENDER)
    if old is not None:
        bpy.data.images.remove(old)
    image = bpy.data.images.load(str(path), check_existing=False)
    image.name = LAST_RENDER
    image.pack()


@contextlib.contextmanager
def own_render(scene: bpy.types.Scene, directory: str | os.PathLike) -> Iterator[None]:
    """Around the add-on's own renders: keeps the artist's render first, marks the new one as ours."""
    _keep_artist_render(scene, Path(directory))
    scene[RENDERING_KEY] = True
    try:
        yield
    finally:
        del scene[RENDERING_KEY]
        scene[RESULT_KEY] = "easel"


def _save_render_png(result: bpy.types.Image, scene: bpy.types.Scene, path: Path) -> None:
    settings = scene.render.image_settings
    with contextlib.ExitStack() as stack:
        if hasattr(settings, "media_type"):
            stack.enter_context(overridden(settings, media_type="IMAGE"))
        stack.enter_context(overridden(settings, file_format="PNG", color_mode="RGBA", color_depth="8"))
        result.save_render(str(path), scene=scene)


@contextlib.contextmanager
def overridden(target: Any, **values: Any) -> Iterator[None]:
    """Set attributes of ``target`` for the duration of the block, then restore them (even on error).
    Attributes the running Blender lacks are skipped."""
    saved = {}
    for name, value in values.items():
        if hasattr(target, name):
            saved[name] = getattr(target, name)
            setattr(target, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            with contextlib.suppress(AttributeError, TypeError, ValueError):
                setattr(target, name, value)


def camera_projection(scene: bpy.types.Scene, width: int, height: int,
                      depsgraph: bpy.types.Depsgraph | None = None) -> CameraProjection:
    """The active camera's projection onto a ``width`` × ``height`` image (the scene's pixel aspect)."""
    if scene.camera is None:
        raise RenderError("the scene has no active camera; add one or set it in the Scene properties")
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    camera = scene.camera.evaluated_get(depsgraph)
    projection = camera.calc_matrix_camera(depsgraph, x=width, y=height,
                                           scale_x=scene.render.pixel_aspect_x,
                                           scale_y=scene.render.pixel_aspect_y)
    return CameraProjection(np.array(camera.matrix_world.inverted()), np.array(projection), width, height)


def _image_pixels(image: bpy.types.Image) -> np.ndarray:
    width, height = image.size
    out = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(out)
    return out


def _depth_output_5x(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, directory: str):
    tree = bpy.data.node_groups.new(".Easel depth pass", "CompositorNodeTree")
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene, layers.layer = scene, view_layer.name
    output = tree.nodes.new("CompositorNodeOutputFile")
    output.format.media_type = "IMAGE"
    output.format.file_format = "OPEN_EXR"
    output.format.color_depth = "32"
    output.directory = directory
    output.file_name = "depth"
    output.file_output_items.new("FLOAT", "pass")
    tree.links.new(layers.outputs["Depth"], output.inputs[0])
    previous = scene.compositing_node_group

    def cleanup() -> None:
        scene.compositing_node_group = previous
        bpy.data.node_groups.remove(tree)
    scene.compositing_node_group = tree
    return cleanup


def _depth_output_4x(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, directory: str):
    used_nodes = scene.use_nodes
    scene.use_nodes = True
    tree = scene.node_tree
    layers = tree.nodes.new("CompositorNodeRLayers")
    layers.scene, layers.layer = scene, view_layer.name
    output = tree.nodes.new("CompositorNodeOutputFile")
    output.format.file_format = "OPEN_EXR"
    output.format.color_depth = "32"
    output.base_path = directory + os.sep
    output.file_slots[0].path = "depth"
    tree.links.new(layers.outputs["Depth"], output.inputs[0])

    def cleanup() -> None:
        tree.nodes.remove(output)
        tree.nodes.remove(layers)
        scene.use_nodes = used_nodes
    return cleanup


def render_depth(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, width: int, height: int,
                 directory: str | os.PathLike) -> tuple[np.ndarray, Path]:
    """Render the planar depth pass from the active camera at ``width`` × ``height``.

    Returns the depth as (height, width) float32, rows bottom-up (1e10 where nothing was hit), and
    the OpenEXR file it was read from (inside ``directory``, which must be empty or new). Raises
    :class:`RenderError` when there is no camera or the render wrote nothing.
    """
    if scene.camera is None:
        raise RenderError("the scene has no active camera; add one or set it in the Scene properties")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    before = set(directory.iterdir())
    render = scene.render
    five = hasattr(scene, "compositing_node_group")
    with contextlib.ExitStack() as stack:
        stack.enter_context(overridden(render, engine="CYCLES", resolution_x=width, resolution_y=height,
                                       resolution_percentage=100, use_border=False, use_motion_blur=False,
                                       use_compositing=True, use_sequencer=False, use_single_layer=True,
                                       use_persistent_data=False))
        # One sample at each pixel's centre: the pass then holds the exact depth at pixel centres.
        stack.enter_context(overridden(scene.cycles, samples=1, use_adaptive_sampling=False, use_denoising=False,
                                       filter_width=0.01, max_bounces=0, use_animated_seed=False))
        stack.enter_context(overridden(view_layer, use_pass_z=True))
        cleanup = (_depth_output_5x if five else _depth_output_4x)(scene, view_layer, str(directory))
        stack.callback(cleanup)
        with own_render(scene, directory):
            bpy.ops.render.render(write_still=False, layer=view_layer.name, scene=scene.name)
    written = sorted(p for p in set(directory.iterdir()) - before if p.suffix.lower() == ".exr")
    if not written:
        raise RenderError("the depth render wrote no file; is the compositor disabled by an add-on?")
    image = bpy.data.images.load(str(written[0]), check_existing=False)
    try:
        if tuple(image.size) != (width, height):
            raise RenderError(f"the depth render is {image.size[0]}x{image.size[1]}, expected {width}x{height}")
        depth = pixels.blender_to_rows(_image_pixels(image), width, height, image.channels)[..., 0].copy()
    finally:
        bpy.data.images.remove(image)
    return depth, written[0]


#: Workbench display settings for the line-guide render: flat studio light and a colour per object,
#: with outlines, so object borders and creases become clear edges for Canny / line-art detectors.
LINE_SHADING = dict(light="STUDIO", color_type="RANDOM", show_object_outline=True, show_cavity=False,
                    show_shadows=False, show_xray=False, show_backface_culling=False, show_specular_highlight=False)


def render_workbench_rgba8(scene: bpy.types.Scene, view_layer: bpy.types.ViewLayer, width: int, height: int,
                           directory: str | os.PathLike) -> bytes:
    """Render the scene with Workbench from the active camera at ``width`` × ``height``: RGBA8 rows
    top-down, for a line guide (the server runs Canny or line art on it).

    Workbench needs an OpenGL context; without a window Blender gets one from EGL (Mesa's
    ``libegl-mesa0``). Every render, display and colour setting changed is restored afterwards,
    whatever happens; the compositor and sequencer are bypassed, not modified. Raises
    :class:`RenderError` when there is no camera or nothing was rendered.
    """
    if scene.camera is None:
        raise RenderError("the scene has no active camera; add one or set it in the Scene properties")
    path = Path(directory) / "easel_lines.png"
    render, settings = scene.render, scene.render.image_settings
    with contextlib.ExitStack() as stack:
        stack.enter_context(overridden(render, engine="BLENDER_WORKBENCH", resolution_x=width, resolution_y=height,
                                       resolution_percentage=100, use_border=False, use_motion_blur=False,
                                       use_compositing=False, use_sequencer=False, use_single_layer=True,
                                       film_transparent=False, use_persistent_data=False))
        stack.enter_context(overridden(scene.display, render_aa="8"))
        stack.enter_context(overridden(scene.display.shading, **LINE_SHADING))
        stack.enter_context(overridden(scene.view_settings, view_transform="Standard", look="None",
                                       exposure=0.0, gamma=1.0, use_curve_mapping=False))
        if hasattr(settings, "media_type"):
            stack.enter_context(overridden(settings, media_type="IMAGE"))
        stack.enter_context(overridden(settings, file_format="PNG", color_mode="RGBA", color_depth="8"))
        try:
            with own_render(scene, directory):
                bpy.ops.render.render(write_still=False, layer=view_layer.name, scene=scene.name)
            bpy.data.images["Render Result"].save_render(str(path), scene=scene)
        except (RuntimeError, KeyError) as exc:
            raise RenderError(f"the Workbench render for the line guide failed ({exc}); without a display "
                              "Blender needs Mesa's EGL (libegl-mesa0)") from None
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        if tuple(image.size) != (width, height):
            raise RenderError(f"the Workbench render is {image.size[0]}x{image.size[1]}, expected {width}x{height}")
        rgba = np.frombuffer(pixels.blender_to_rgba8(_image_pixels(image), width, height, image.channels),
                             np.uint8).reshape(-1, 4).copy()
    finally:
        bpy.data.images.remove(image)
    # Opaque: the film is not transparent here, but Blender 4.5's Workbench writes alpha 254, and
    # the server composites a control picture over white by its alpha.
    rgba[:, 3] = 255
    return rgba.tobytes()


def depth_image_from_array(name: str, depth: np.ndarray) -> bpy.types.Image:
    """A packed 32-bit float image holding planar ``depth`` ((height, width), rows bottom-up) in its
    colour channels, Non-Color: what the projection material samples. Used when the rendered depth
    pass image of a job is no longer in the file (another file was opened since)."""
    height, width = depth.shape
    image = bpy.data.images.new(name, width, height, alpha=False, float_buffer=True)
    image.colorspace_settings.name = "Non-Color"
    values = np.empty((height, width, 4), np.float32)
    values[..., :3] = np.asarray(depth, np.float32)[..., None]
    values[..., 3] = 1.0
    image.pixels.foreach_set(values.reshape(-1))
    image.update()
    image.file_format = "OPEN_EXR"  # packed as 32-bit float; PNG would clip the depth to [0, 1]
    image.pack()
    return image


def render_result_rgba8(scene: bpy.types.Scene, directory: str | os.PathLike,
                        size: tuple[int, int] | None = None) -> tuple[bytes, int, int]:
    """The artist's last render (colour-managed as displayed) as RGBA8 rows top-down, scaled to
    ``size`` when given: *Render Result*, or — when the add-on's own depth or line render replaced
    it since — the copy kept before (:data:`LAST_RENDER`). Raises :class:`RenderError` when the
    artist rendered nothing."""
    result = bpy.data.images.get("Render Result")
    if scene.get(RESULT_KEY) == "easel":
        kept = bpy.data.images.get(LAST_RENDER)
        if kept is None:
            raise RenderError("the last render is Easel's own depth pass, not yours; render an image first (F12)")
        data, width, height = _rgba8_scaled(kept, size)
        return data, width, height
    if result is None:
        raise RenderError("there is no render to refine; render an image first (F12)")
    path = Path(directory) / "render_result.png"
    try:
        _save_render_png(result, scene, path)
    except RuntimeError as exc:
        raise RenderError(f"there is no render to refine; render an image first (F12) ({exc})") from None
    image = bpy.data.images.load(str(path), check_existing=False)
    try:
        return _rgba8_scaled(image, size)
    finally:
        bpy.data.images.remove(image)


def _rgba8_scaled(image: bpy.types.Image, size: tuple[int, int] | None) -> tuple[bytes, int, int]:
    """``image`` as RGBA8 rows top-down, scaled to ``size`` (on a copy: ``image`` is unchanged)."""
    if size is not None and tuple(image.size) != tuple(size):
        image = image.copy()
        try:
            image.scale(*size)
            return _rgba8_scaled(image, None)
        finally:
            bpy.data.images.remove(image)
    width, height = image.size
    return pixels.blender_to_rgba8(_image_pixels(image), width, height, image.channels), width, height


#: On a generated image: the job that made it (its History entry's *Discard* removes it).
JOB_IMAGE_KEY = "easel_job"


def image_from_rgba8(name: str, data: bytes, width: int, height: int, *, pack: bool = True,
                     job_id: str = "") -> bpy.types.Image:
    """A new 8-bit sRGB image holding ``data`` (RGBA8, rows top-down), packed into the .blend.
    With a ``job_id`` it is a generated result: it gets a fake user (it stays in the file after
    *Restore Materials*, across saves) until discarded (:func:`discard_images`)."""
    image = bpy.data.images.new(name, width, height, alpha=True)
    image.pixels.foreach_set(pixels.rgba8_to_blender(data, width, height))
    image.update()
    if pack:
        image.pack()
    if job_id:
        keep_generated(image, job_id)
    return image


def keep_generated(image: bpy.types.Image, job_id: str) -> None:
    """Mark ``image`` as made by ``job_id`` and keep it in the file (fake user) until discarded."""
    image[JOB_IMAGE_KEY] = job_id
    image.use_fake_user = True


def discard_images(job_id: str) -> tuple[int, int]:
    """Let go of the images ``job_id`` made: removed when nothing else uses them, otherwise their
    fake user is cleared (they go once unused, on save). Returns (removed, released)."""
    removed = released = 0
    for image in [i for i in bpy.data.images if i.get(JOB_IMAGE_KEY) == job_id]:
        image.use_fake_user = False
        if image.users == 0:
            bpy.data.images.remove(image)
            removed += 1
        else:
            released += 1
    return removed, released


def image_rgba8(image: bpy.types.Image) -> bytes:
    """An image's pixels as RGBA8 rows top-down."""
    width, height = image.size
    return pixels.blender_to_rgba8(_image_pixels(image), width, height, image.channels)


def show_jpeg(name: str, jpeg: bytes) -> bpy.types.Image:
    """Create or update the image ``name`` to show ``jpeg`` (a step preview). Blender decodes it
    from memory: the bytes are packed as the image's file, and freeing the decoded buffers makes
    the next draw decode the new bytes (``reload()`` would look for the file on disk)."""
    image = bpy.data.images.get(name)
    if image is None or image.source != "FILE":
        if image is not None:
            bpy.data.images.remove(image)
        image = bpy.data.images.new(name, 8, 8)
        image.source = "FILE"
        image.filepath = f"//{name.replace(' ', '_').lower()}.jpg"
    image.pack(data=jpeg, data_len=len(jpeg))
    image.buffers_free()
    return image
