"""Scene building and independent measurements for the in-Blender tests (no Easel code here).

References are computed with Blender's own tools, not with the add-on's math: depth by ray casts
through the pixel centres (``scene.ray_cast``), projections with ``bpy_extras.object_utils.
world_to_camera_view``, colours by rendering with Cycles.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

WIDTH, HEIGHT = 128, 96
#: Emission colours of the original materials (linear RGB).
GROUND, BOX = (0.8, 0.25, 0.05), (0.05, 0.3, 0.9)


def _emission_material(name: str, colour: tuple[float, float, float]) -> bpy.types.Material:
    material = bpy.data.materials.new(name)
    if material.node_tree is None:
        material.use_nodes = True
    tree = material.node_tree
    tree.nodes.clear()
    emission = tree.nodes.new("ShaderNodeEmission")
    emission.inputs["Color"].default_value = (*colour, 1.0)
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    tree.links.new(emission.outputs[0], output.inputs["Surface"])
    return material


def look_at(obj: bpy.types.Object, target: tuple[float, float, float]) -> None:
    direction = Vector(target) - obj.location
    obj.rotation_euler = direction.to_track_quat("-Z", "Y").to_euler()


def build_scene() -> dict[str, bpy.types.Object]:
    """A camera looking at a cube standing on a plane, both with emission materials (so lighting
    does not alter colours), and a second camera on the other side. Returns the objects by role."""
    for collection in (bpy.data.objects, bpy.data.meshes, bpy.data.materials, bpy.data.cameras, bpy.data.lights):
        for item in list(collection):
            collection.remove(item)
    for image in list(bpy.data.images):
        if image.name != "Render Result":
            bpy.data.images.remove(image)
    scene = bpy.context.scene
    bpy.ops.mesh.primitive_plane_add(size=8.0, location=(0, 0, 0))
    plane = bpy.context.object
    plane.name = "Ground"
    plane.data.materials.append(_emission_material("Ground", GROUND))
    bpy.ops.mesh.primitive_cube_add(size=1.5, location=(0.3, 0.2, 0.75))
    cube = bpy.context.object
    cube.name = "Box"
    cube.rotation_euler = (0, 0, 0.4)
    cube.data.materials.append(_emission_material("Box", BOX))
    # Selected too, but under the ground: neither camera can see it.
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(0.0, 0.0, -3.0))
    under = bpy.context.object
    under.name = "Under"
    under.data.materials.append(_emission_material("Under", (1.0, 1.0, 1.0)))
    main = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    other = bpy.data.objects.new("Camera Behind", bpy.data.cameras.new("Camera Behind"))
    for camera in (main, other):
        scene.collection.objects.link(camera)
    main.location, other.location = (5.0, -6.0, 4.0), (-4.0, 5.0, 3.5)
    look_at(main, (0, 0, 0.3))
    look_at(other, (0.3, 0.2, 0.5))
    scene.camera = main

    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y, render.resolution_percentage = WIDTH, HEIGHT, 100
    scene.cycles.device = "CPU"
    scene.cycles.samples = 1
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.filter_width = 0.01  # each pixel sampled at its centre: comparable texel by texel
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.view_settings.exposure = 0.0
    scene.view_settings.gamma = 1.0
    if scene.world is None:
        scene.world = bpy.data.worlds.new("World")
    scene.world.color = (0, 0, 0)
    if scene.world.node_tree is not None:
        for node in scene.world.node_tree.nodes:
            if node.type == "BACKGROUND":
                node.inputs["Strength"].default_value = 0.0
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj in (plane, cube, under))
    bpy.context.view_layer.objects.active = cube
    return {"camera": main, "behind": other, "plane": plane, "cube": cube, "under": under}


def render_rgba8(camera: bpy.types.Object) -> np.ndarray:
    """Render from ``camera``; the displayed (colour-managed) result as (H, W, 4) uint8, rows bottom-up."""
    scene = bpy.context.scene
    previous = scene.camera
    scene.camera = camera
    try:
        bpy.ops.render.render()
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "render.png"
            settings = scene.render.image_settings
            if hasattr(settings, "media_type"):
                settings.media_type = "IMAGE"
            settings.file_format, settings.color_mode, settings.color_depth = "PNG", "RGBA", "8"
            bpy.data.images["Render Result"].save_render(str(path), scene=scene)
            image = bpy.data.images.load(str(path))
            pixels = np.empty(WIDTH * HEIGHT * 4, np.float32)
            image.pixels.foreach_get(pixels)
            bpy.data.images.remove(image)
    finally:
        scene.camera = previous
    return np.round(pixels.reshape(HEIGHT, WIDTH, 4) * 255).astype(np.int16)


def pixel_rays(camera: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """Origin and unit directions (H, W, 3) of the rays through every pixel centre (rows bottom-up),
    from the camera's view frame."""
    scene = bpy.context.scene
    frame = [camera.matrix_world @ v for v in camera.data.view_frame(scene=scene)]
    # view_frame: top-right, bottom-right, bottom-left, top-left.
    top_right, bottom_right, bottom_left = (np.array(v) for v in frame[:3])
    u = (np.arange(WIDTH) + 0.5) / WIDTH
    v = (np.arange(HEIGHT) + 0.5) / HEIGHT
    points = bottom_left + u[None, :, None] * (bottom_right - bottom_left) + v[:, None, None] * (top_right - bottom_right)
    origin = np.array(camera.matrix_world.translation)
    directions = points - origin
    return origin, directions / np.linalg.norm(directions, axis=-1, keepdims=True)


def ray_cast_depth(camera: bpy.types.Object) -> tuple[np.ndarray, np.ndarray]:
    """Reference depth: the planar depth (along the camera axis) of the first surface hit through
    each pixel centre, 1e10 where nothing is hit; and the hit points (H, W, 3)."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    origin, directions = pixel_rays(camera)
    forward = -np.array(camera.matrix_world.to_3x3().col[2])
    forward /= np.linalg.norm(forward)
    depth = np.full((HEIGHT, WIDTH), 1e10)
    points = np.full((HEIGHT, WIDTH, 3), np.nan)
    start = Vector(origin)
    scene = bpy.context.scene
    for row in range(HEIGHT):
        for col in range(WIDTH):
            hit, location, *_ = scene.ray_cast(depsgraph, start, Vector(directions[row, col]))
            if hit:
                points[row, col] = location
                depth[row, col] = float(np.dot(np.array(location) - origin, forward))
    return depth, points


def seen_from(camera: bpy.types.Object, points: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """For world ``points`` (N, 3): (clearly seen, clearly hidden) from ``camera`` by ray casts.

    Seen: inside the frame by ``margin`` (UV units) and the first hit towards the point is the
    point itself (within 0.1 %). Hidden: outside the frame, or something at least 5 % nearer is in
    the way. Points in between (grazing, at silhouettes) are neither.
    """
    scene = bpy.context.scene
    depsgraph = bpy.context.evaluated_depsgraph_get()
    origin = np.array(camera.matrix_world.translation)
    seen = np.zeros(len(points), bool)
    hidden = np.zeros(len(points), bool)
    for i, point in enumerate(points):
        ndc = world_to_camera_view(scene, camera, Vector(point))
        inside = ndc.z > 0 and margin <= ndc.x <= 1 - margin and margin <= ndc.y <= 1 - margin
        outside = ndc.z <= 0 or not (-margin <= ndc.x <= 1 + margin and -margin <= ndc.y <= 1 + margin)
        offset = point - origin
        distance = float(np.linalg.norm(offset))
        hit, location, *_ = scene.ray_cast(depsgraph, Vector(origin), Vector(offset / distance), distance=distance * 1.01)
        first = float(np.linalg.norm(np.array(location) - origin)) if hit else np.inf
        seen[i] = inside and abs(first - distance) <= 1e-3 * distance
        hidden[i] = outside or first < 0.95 * distance
    return seen, hidden


def camera_uv(camera: bpy.types.Object, points: np.ndarray) -> np.ndarray:
    """Blender's own projection of world ``points`` (N, 3) into the camera's frame (UV, 0..1)."""
    scene = bpy.context.scene
    return np.array([tuple(world_to_camera_view(scene, camera, Vector(p)))[:2] for p in points])


def bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) ``image`` (rows bottom-up) at ``uv`` (N, 2) bilinearly, texel centres at
    (i + 0.5) / size — what the Image Texture node's Linear interpolation does."""
    height, width = image.shape[:2]
    x = np.clip(uv[:, 0] * width - 0.5, 0, width - 1)
    y = np.clip(uv[:, 1] * height - 0.5, 0, height - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    image = image.astype(np.float64)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def near_silhouette(depth: np.ndarray, uv: np.ndarray, ratio: float = 1.02) -> np.ndarray:
    """Boolean (N,): the image point ``uv`` lies within a pixel of a depth discontinuity of
    ``depth`` (rows bottom-up): its 3x3 neighbourhood spans more than ``ratio`` in depth."""
    height, width = depth.shape
    padded = np.pad(depth, 1, mode="edge")
    cols = np.clip(np.floor(uv[:, 0] * width).astype(int), -1, width) + 1
    rows = np.clip(np.floor(uv[:, 1] * height).astype(int), -1, height) + 1
    cols, rows = np.clip(cols, 1, width), np.clip(rows, 1, height)
    stack = np.stack([padded[rows + dy, cols + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    return stack.max(axis=0) > stack.min(axis=0) * ratio


def build_objects_scene() -> dict[str, bpy.types.Object]:
    """A cube, a UV sphere with a Subdivision Surface modifier and a ground plane (emission
    materials), all selected, a camera for a fifth view that no orbit rig uses. Returns them by role."""
    build_scene()
    for name in ("Box", "Under", "Camera Behind"):
        bpy.data.objects.remove(bpy.data.objects[name])
    scene = bpy.context.scene
    plane = bpy.data.objects["Ground"]
    plane.scale = (0.5, 0.5, 1.0)  # 4 × 4
    bpy.ops.mesh.primitive_cube_add(size=1.0, location=(-0.7, 0.3, 0.5))
    cube = bpy.context.object
    cube.name = "Box"
    cube.rotation_euler = (0, 0, 0.5)
    cube.data.materials.append(bpy.data.materials["Box"])
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.55, location=(0.8, -0.3, 0.55), segments=16, ring_count=8)
    sphere = bpy.context.object
    sphere.name = "Ball"
    sphere.data.materials.append(_emission_material("Ball", (0.2, 0.8, 0.3)))
    subdivision = sphere.modifiers.new("Subdivision", "SUBSURF")
    subdivision.levels = subdivision.render_levels = 1
    camera = bpy.data.objects["Camera"]
    camera.location = (3.2, 3.6, 3.9)  # between two orbit views, higher than all of them
    look_at(camera, (0.0, 0.0, 0.4))
    scene.camera = camera
    for obj in bpy.context.view_layer.objects:
        obj.select_set(obj in (plane, cube, sphere))
    bpy.context.view_layer.objects.active = cube
    return {"camera": camera, "plane": plane, "cube": cube, "sphere": sphere}


def render_texture_colour(camera: bpy.types.Object) -> np.ndarray:
    """Workbench render from ``camera`` with flat light and *Texture* colour — the image of each
    material's active Image Texture node through the mesh's active UV map, unlit, as the viewport's
    Solid mode shows it. (H, W, 4) int16, rows bottom-up, Standard view transform."""
    scene = bpy.context.scene
    shading = scene.display.shading
    saved = (scene.render.engine, shading.light, shading.color_type, shading.show_object_outline,
             shading.show_cavity, shading.show_shadows, shading.show_specular_highlight, scene.display.render_aa)
    scene.render.engine = "BLENDER_WORKBENCH"
    shading.light, shading.color_type = "FLAT", "TEXTURE"
    shading.show_object_outline = shading.show_cavity = shading.show_shadows = False
    shading.show_specular_highlight = False
    scene.display.render_aa = "OFF"
    try:
        return render_rgba8(camera)
    finally:
        (scene.render.engine, shading.light, shading.color_type, shading.show_object_outline, shading.show_cavity,
         shading.show_shadows, shading.show_specular_highlight, scene.display.render_aa) = saved


def surface_samples(obj: bpy.types.Object, count: int, seed: int = 0, uv_map: str | None = None):
    """``count`` random points spread evenly by area over ``obj``'s evaluated mesh (after
    modifiers), from Blender's own data: world points (N, 3), unit face normals (N, 3) and the UVs
    of ``uv_map`` (the active one if None) there."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    mesh.calc_loop_triangles()
    layer = mesh.uv_layers[uv_map] if uv_map else mesh.uv_layers.active
    matrix = obj.matrix_world
    normal_matrix = matrix.to_3x3().inverted().transposed()
    corners, corner_uv, normals = [], [], []
    for triangle in mesh.loop_triangles:
        corners.append([np.array(matrix @ mesh.vertices[mesh.loops[i].vertex_index].co) for i in triangle.loops])
        corner_uv.append([np.array(layer.data[i].uv) for i in triangle.loops])
        normal = np.array(normal_matrix @ triangle.normal)
        normals.append(normal / np.linalg.norm(normal))
    evaluated.to_mesh_clear()
    corners, corner_uv, normals = np.array(corners), np.array(corner_uv), np.array(normals)
    area = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1) / 2
    rng = np.random.default_rng(seed)
    which = rng.choice(len(area), size=count, p=area / area.sum())
    a, b = rng.random(count), rng.random(count)
    flip = a + b > 1
    a[flip], b[flip] = 1 - a[flip], 1 - b[flip]
    weights = np.stack([1 - a - b, a, b], axis=1)[..., None]
    return ((weights * corners[which]).sum(axis=1), normals[which], (weights * corner_uv[which]).sum(axis=1))


def image_rows(image: bpy.types.Image) -> np.ndarray:
    """An image's pixels as (H, W, C) float32, rows bottom-up."""
    width, height = image.size
    pixels = np.empty(width * height * image.channels, np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(height, width, image.channels)


def pixel_range(image: np.ndarray, uv: np.ndarray, reach: int) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the channel-wise min and max of ``image`` ((H, W, C), rows bottom-up) over the
    2·reach × 2·reach pixels around ``uv`` ((N, 2)); reach 1 is the bilinear footprint. Any
    interpolation of the image near the point lies within it."""
    height, width = image.shape[:2]
    x0 = np.floor(uv[:, 0] * width - 0.5).astype(int)
    y0 = np.floor(uv[:, 1] * height - 0.5).astype(int)
    stack = []
    for dy in range(1 - reach, reach + 1):
        for dx in range(1 - reach, reach + 1):
            stack.append(image[np.clip(y0 + dy, 0, height - 1), np.clip(x0 + dx, 0, width - 1)])
    stack = np.array(stack, np.float64)
    return stack.min(axis=0), stack.max(axis=0)


def save_png(rows: np.ndarray, path: Path | str, scale: int = 1) -> None:
    """Write (H, W, 3|4) floats in [0, 1], rows bottom-up, as an 8-bit PNG (sRGB values as they
    are), enlarged ``scale`` times (nearest), with Blender's own image writer."""
    rows = np.asarray(rows, np.float32)
    if scale > 1:
        rows = np.repeat(np.repeat(rows, scale, axis=0), scale, axis=1)
    height, width, channels = rows.shape
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :min(channels, 3)] = rows[..., :3]
    image = bpy.data.images.new("easel test output", width, height, alpha=False)
    try:
        image.pixels.foreach_set(np.clip(rgba, 0, 1).reshape(-1))
        image.filepath_raw = str(path)
        image.file_format = "PNG"
        image.save()
    finally:
        bpy.data.images.remove(image)
