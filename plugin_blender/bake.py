"""Baking generated views into one UV texture per object, with a Principled BSDF material.
Imports ``bpy``; the math is in :mod:`.blend` and :mod:`.texels`.

The bake reads the object's **evaluated** mesh (after its modifiers: a Subdivision Surface is
baked on the surface that renders) and its UV map there, rasterizes the UV layout at the chosen
size, blends the views at every texel's surface point (:func:`.blend.blend`), fills what no view
saw (:func:`.texels.fill`) and stores the result as one 8-bit sRGB image holding the generated
colours as they came (no view transform applied). The image is packed and has a fake user, so it
stays in the file until discarded from the Easel history (the run's last job).

Each material slot then gets a new material whose Principled BSDF takes its base colour from the
image through a UV Map node naming the baked map — what glTF and other exporters read. The new
material records the one it replaced (:data:`.texturing.ORIGINAL_KEY`), so *Restore Materials*
puts the originals back. The baked UV map becomes the mesh's active one, so the viewport's Solid
mode (*Texture* colour) shows the image through it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import bpy
import numpy as np

from . import texels as texel_math
from .blend import View, blend
from .render import keep_generated
from .texturing import JOB_KEY, ORIGINAL_KEY, UV_MAP, original_of
from .visibility import transform_normals, transform_points

#: The UV map a Smart UV Project bake makes (replaced on every bake).
BAKE_UV = "Easel Bake"
UV_MODES = ("EXISTING", "SMART")
#: On a material made by a bake: the job that made it.
BAKE_KEY = "easel_bake"


class BakeError(ValueError):
    """An object cannot be baked as asked; the message says what to change (a ``ValueError``, so a
    run whose bake fails keeps its result in the history with this message)."""


@dataclass(frozen=True)
class BakeResult:
    """What a bake did to one object: the image, and how many texels it covered, how many of those
    any view saw, and how many it filled."""

    image: bpy.types.Image
    covered: int
    seen: int

    @property
    def seen_fraction(self) -> float:
        return self.seen / self.covered if self.covered else 0.0


def prepare_uv(obj: bpy.types.Object, mode: str) -> str:
    """The name of the UV map to bake onto: the mesh's active map (``EXISTING``, never the camera
    projection map), or a fresh Smart UV Project map :data:`BAKE_UV` (``SMART``). Raises
    :class:`BakeError` when ``EXISTING`` finds no UV map of the object's own."""
    if mode not in UV_MODES:
        raise ValueError(f"the UV mode must be one of {UV_MODES}, got {mode!r}")
    mesh = obj.data
    if mode == "EXISTING":
        own = [layer for layer in mesh.uv_layers if layer.name not in (UV_MAP, BAKE_UV)]
        active = mesh.uv_layers.active
        if active is not None and active.name not in (UV_MAP, BAKE_UV):
            return active.name
        if own:
            return own[0].name
        raise BakeError(f"{obj.name} has no UV map of its own; unwrap it, or bake with 'Smart UV Project'")
    existing = mesh.uv_layers.get(BAKE_UV)
    if existing is not None:
        mesh.uv_layers.remove(existing)
    layer = mesh.uv_layers.new(name=BAKE_UV, do_init=False)
    if layer is None:
        raise BakeError(f"{obj.name} already has the most UV maps Blender allows; remove one")
    mesh.uv_layers.active = mesh.uv_layers[BAKE_UV]
    view_layer = bpy.context.view_layer
    previous_active = view_layer.objects.active
    selected = [o for o in view_layer.objects if o.select_get()]
    try:
        for other in selected:
            other.select_set(False)
        obj.select_set(True)
        view_layer.objects.active = obj
        with bpy.context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                                       selected_editable_objects=[obj]):
            bpy.ops.object.mode_set(mode="EDIT")
            bpy.ops.mesh.select_all(action="SELECT")
            bpy.ops.uv.smart_project(angle_limit=1.15192, island_margin=0.01, scale_to_bounds=False)
            bpy.ops.object.mode_set(mode="OBJECT")
    finally:
        obj.select_set(False)
        for other in selected:
            other.select_set(True)
        view_layer.objects.active = previous_active
    return BAKE_UV


def surface_texels(obj: bpy.types.Object, depsgraph: bpy.types.Depsgraph, uv_name: str, size: int) -> texel_math.Texels:
    """The texels of ``obj``'s evaluated mesh (modifiers applied) in its UV map ``uv_name``, in world
    space. Raises :class:`BakeError` when a modifier drops the UV map or leaves no faces."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        layer = mesh.uv_layers.get(uv_name)
        if layer is None:
            raise BakeError(f"{obj.name}: its modifiers drop the UV map '{uv_name}'; apply them or bake with "
                            "'Smart UV Project'")
        mesh.calc_loop_triangles()
        count = len(mesh.loop_triangles)
        if not count:
            raise BakeError(f"{obj.name} has no faces to bake onto")
        loops = np.empty(count * 3, np.int32)
        mesh.loop_triangles.foreach_get("loops", loops)
        uv = np.empty(len(mesh.loops) * 2, np.float32)
        layer.data.foreach_get("uv", uv)
        vertex_of = np.empty(len(mesh.loops), np.int32)
        mesh.loops.foreach_get("vertex_index", vertex_of)
        positions = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", positions)
        normals = np.empty(len(mesh.loops) * 3, np.float32)
        mesh.corner_normals.foreach_get("vector", normals)
    finally:
        evaluated.to_mesh_clear()
    matrix = np.array(obj.matrix_world)
    points = transform_points(matrix, positions.reshape(-1, 3)[vertex_of[loops]])
    corner_normals = transform_normals(matrix, normals.reshape(-1, 3)[loops])
    return texel_math.rasterize(uv.reshape(-1, 2)[loops].reshape(-1, 3, 2), points.reshape(-1, 3, 3),
                                corner_normals.reshape(-1, 3, 3), size)


def bake_object(obj: bpy.types.Object, views: Sequence[View], uv_name: str, size: int, *, name: str,
                job_id: str, depsgraph: bpy.types.Depsgraph | None = None) -> BakeResult:
    """Bake ``views`` onto ``obj``'s UV map ``uv_name`` at ``size`` × ``size`` into a new packed image
    named ``name`` (fake user), and give every slot a base-colour material using it."""
    depsgraph = depsgraph or bpy.context.evaluated_depsgraph_get()
    surface = surface_texels(obj, depsgraph, uv_name, size)
    result = blend(views, surface.points, surface.normals)
    channels = views[0].image.shape[2]
    colour = np.zeros((size * size, channels), np.float32)
    seen = result.seen
    colour[surface.index[seen]] = result.colour[seen]
    known = np.zeros(size * size, bool)
    known[surface.index[seen]] = True
    filled = texel_math.fill(colour.reshape(size, size, channels), known.reshape(size, size))
    rgba = np.ones((size, size, 4), np.float32)
    rgba[..., :min(channels, 3)] = filled[..., :min(channels, 3)]
    image = bpy.data.images.new(name, size, size, alpha=False)
    image.pixels.foreach_set(np.clip(rgba, 0.0, 1.0).reshape(-1))
    image.update()
    image.pack()
    keep_generated(image, job_id)
    bake_materials(obj, image, uv_name, job_id)
    mesh = obj.data
    mesh.uv_layers.active = mesh.uv_layers[uv_name]
    mesh.uv_layers[uv_name].active_render = True
    return BakeResult(image, len(surface.index), int(seen.sum()))


def bake_material(original: bpy.types.Material | None, image: bpy.types.Image, uv_name: str,
                  job_id: str) -> bpy.types.Material:
    """A new material: Principled BSDF with ``image`` as base colour through the UV map ``uv_name``."""
    material = bpy.data.materials.new(f"{original.name if original else 'Material'} (Easel bake)")
    if material.node_tree is None:
        material.use_nodes = True  # Blender 4.x; 5.x materials always have a node tree
    tree = material.node_tree
    tree.nodes.clear()
    uv = tree.nodes.new("ShaderNodeUVMap")
    uv.uv_map, uv.location = uv_name, (-700, 0)
    texture = tree.nodes.new("ShaderNodeTexImage")
    texture.image, texture.location, texture.label = image, (-450, 0), "Easel bake"
    principled = tree.nodes.new("ShaderNodeBsdfPrincipled")
    principled.location = (-100, 0)
    output = tree.nodes.new("ShaderNodeOutputMaterial")
    output.location = (250, 0)
    tree.links.new(uv.outputs["UV"], texture.inputs["Vector"])
    tree.links.new(texture.outputs["Color"], principled.inputs["Base Color"])
    tree.links.new(principled.outputs[0], output.inputs["Surface"])
    tree.nodes.active = texture  # what Solid mode's Texture colour shows
    if original is not None:
        material[ORIGINAL_KEY] = original
    material[JOB_KEY] = job_id
    material[BAKE_KEY] = job_id
    return material


def bake_materials(obj: bpy.types.Object, image: bpy.types.Image, uv_name: str, job_id: str) -> None:
    """Give every slot of ``obj`` a bake material made from its original (one slot added if none)."""
    if not obj.material_slots:
        obj.data.materials.append(None)
    made: dict[str, bpy.types.Material] = {}
    for slot in obj.material_slots:
        original = original_of(slot.material)
        key = original.name_full if original is not None else ""
        if key not in made:
            made[key] = bake_material(original, image, uv_name, job_id)
        slot.material = made[key]
