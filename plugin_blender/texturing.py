"""Projecting a generated image onto meshes: UV map, projection attributes, materials, restore.
Imports ``bpy``; the math is in :mod:`.projection` and :mod:`.visibility`.

Each textured mesh gets

* a UV map :data:`UV_MAP` — the camera projection of every vertex (for export, baking, painting);
* a corner attribute :data:`PROJECTION_ATTRIBUTE` holding ``(u·w, v·w, w)``. Unlike UVs these are
  linear in the world position, so the material divides after interpolation and gets the exact
  perspective projection at every pixel — a UV map alone warps the texture across large faces
  seen at an angle (the floor under a cube would swim);
* a corner attribute :data:`DEPTH_ATTRIBUTE` (planar depth from the camera) and a face attribute
  :data:`FACING_ATTRIBUTE` (1 where the face turns towards the camera).

Each material slot then gets a **copy** of its material in which a Mix Shader blends the original
surface with the projected image by a visibility mask: facing × in front of the camera × inside
the frame × not occluded (the point's depth against the packed depth pass at its projected pixel).
Faces the camera never saw keep the original look, per pixel, not per face. The copy records the
material it replaced under :data:`ORIGINAL_KEY` (an ID reference, so the original keeps a user and
is never purged); :func:`restore_materials` puts the originals back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import bpy
import numpy as np

from .projection import CameraProjection
from .visibility import DEPTH_TOLERANCE, FaceVisibility, face_visibility, transform_normals, transform_points

UV_MAP = "Easel Projection"
PROJECTION_ATTRIBUTE = "easel_projection"
DEPTH_ATTRIBUTE = "easel_depth"
FACING_ATTRIBUTE = "easel_facing"
#: On an Easel material: the material it replaced (absent when the slot was empty).
ORIGINAL_KEY = "easel_original"
#: On an Easel material: the job that made it.
JOB_KEY = "easel_job"

SHADING_MODES = ("EMISSION", "PRINCIPLED")


class TexturingError(RuntimeError):
    """A mesh cannot take the projection; the message says why."""


@dataclass(frozen=True)
class MeshCorners:
    """A mesh in world space, as the projection needs it."""

    corner_points: np.ndarray   # (C, 3) world position of each face corner
    corner_faces: np.ndarray    # (C,) face index of each corner
    normals: np.ndarray         # (F, 3) world-space unit face normals
    centres: np.ndarray         # (F, 3) world-space face centres


#: Modifiers that leave a mesh's shape as it is: the projection, computed on the base mesh, stays in register.
SHAPE_KEEPING_MODIFIERS = frozenset({"WEIGHTED_NORMAL", "NORMAL_EDIT", "UV_WARP", "UV_PROJECT", "VERTEX_WEIGHT_EDIT",
                                     "VERTEX_WEIGHT_MIX", "VERTEX_WEIGHT_PROXIMITY"})


def shape_modifiers(obj: bpy.types.Object) -> list[str]:
    """Names of ``obj``'s enabled modifiers that change its shape (the projection would misregister)."""
    return [m.name for m in obj.modifiers
            if (m.show_viewport or m.show_render) and m.type not in SHAPE_KEEPING_MODIFIERS]


def check_unmodified(objects: Iterable[bpy.types.Object]) -> None:
    """Raise :class:`TexturingError` naming every object whose modifiers change its shape: the
    camera projection is computed on the base mesh and would not land in register."""
    problems = [f"{obj.name} ({', '.join(names)})" for obj in objects if (names := shape_modifiers(obj))]
    if problems:
        raise TexturingError(f"modifiers change the shape of {'; '.join(problems)}: the projection would not "
                             "land in register. Apply or disable them, or use Texture All Views, which bakes "
                             "onto the mesh as modified")


def _get(collection, attribute: str, count: int, width: int, dtype=np.float32) -> np.ndarray:
    out = np.empty(count * width, dtype=dtype)
    collection.foreach_get(attribute, out)
    return out.reshape(count, width) if width > 1 else out


def mesh_corners(obj: bpy.types.Object) -> MeshCorners:
    """``obj``'s base mesh (before modifiers) in world space."""
    mesh = obj.data
    matrix = np.array(obj.matrix_world)
    vertices = _get(mesh.vertices, "co", len(mesh.vertices), 3)
    corner_vertex = _get(mesh.loops, "vertex_index", len(mesh.loops), 1, np.int32)
    loop_total = _get(mesh.polygons, "loop_total", len(mesh.polygons), 1, np.int32)
    loop_start = _get(mesh.polygons, "loop_start", len(mesh.polygons), 1, np.int32)
    if len(loop_start) and np.any(np.diff(loop_start) < 0):
        raise TexturingError(f"{obj.name}: its faces' corners are out of order; apply its modifiers or re-import it")
    corner_faces = np.repeat(np.arange(len(mesh.polygons)), loop_total)
    normals = _get(mesh.polygons, "normal", len(mesh.polygons), 3)
    centres = _get(mesh.polygons, "center", len(mesh.polygons), 3)
    return MeshCorners(transform_points(matrix, vertices[corner_vertex]), corner_faces,
                       transform_normals(matrix, normals), transform_points(matrix, centres))


def _attribute(mesh: bpy.types.Mesh, name: str, data_type: str, domain: str):
    existing = mesh.attributes.get(name)
    if existing is not None and (existing.data_type != data_type or existing.domain != domain):
        mesh.attributes.remove(existing)
        existing = None
    return existing if existing is not None else mesh.attributes.new(name, data_type, domain)


def project_object(obj: bpy.types.Object, camera: CameraProjection, depth_pass: np.ndarray) -> FaceVisibility:
    """Write :data:`UV_MAP` and the projection attributes onto ``obj``'s mesh and return which
    faces the camera saw. A mesh the camera did not see at all is left untouched. Raises
    :class:`TexturingError` when the mesh has no room for another UV map."""
    if obj.type != "MESH":
        raise TexturingError(f"{obj.name} is a {obj.type.lower()}, not a mesh")
    check_unmodified([obj])
    mesh = obj.data
    corners = mesh_corners(obj)
    seen = face_visibility(corners.corner_points, corners.corner_faces, corners.normals, corners.centres,
                           camera, depth_pass)
    if not seen.seen_count:
        return seen
    uv = np.nan_to_num(camera.uv(corners.corner_points), nan=0.0).astype(np.float32)
    layer = mesh.uv_layers.get(UV_MAP)
    if layer is None:
        layer = mesh.uv_layers.new(name=UV_MAP, do_init=False)
        if layer is None:
            raise TexturingError(f"{obj.name} already has the most UV maps Blender allows; remove one")
    layer.data.foreach_set("uv", uv.reshape(-1))
    _attribute(mesh, PROJECTION_ATTRIBUTE, "FLOAT_VECTOR", "CORNER").data.foreach_set(
        "vector", camera.homogeneous_uv(corners.corner_points).astype(np.float32).reshape(-1))
    _attribute(mesh, DEPTH_ATTRIBUTE, "FLOAT", "CORNER").data.foreach_set(
        "value", camera.planar_depth(corners.corner_points).astype(np.float32))
    _attribute(mesh, FACING_ATTRIBUTE, "FLOAT", "FACE").data.foreach_set("value", seen.facing.astype(np.float32))
    mesh.update()
    return seen


# --------------------------------------------------------------------------- materials

def _node(tree, kind: str, x: float, y: float, parent=None, **settings):
    node = tree.nodes.new(kind)
    node.location = (x, y)
    if parent is not None:
        node.parent = parent
    for key, value in settings.items():
        setattr(node, key, value)
    return node


def _math(tree, operation: str, x: float, y: float, parent, a=None, b=None):
    node = _node(tree, "ShaderNodeMath", x, y, parent, operation=operation)
    for socket, value in ((node.inputs[0], a), (node.inputs[1], b)):
        if isinstance(value, (int, float)):
            socket.default_value = value
        elif value is not None:
            tree.links.new(value, socket)
    return node


def _node_tree(material: bpy.types.Material):
    if material.node_tree is None:
        material.use_nodes = True  # Blender 4.x; 5.x materials always have a node tree
    return material.node_tree


def projection_material(original: bpy.types.Material | None, texture: bpy.types.Image,
                        depth_image: bpy.types.Image, *, job_id: str, shading: str = "EMISSION") -> bpy.types.Material:
    """A copy of ``original`` (or a plain material for an empty slot) whose surface mixes the
    original look with ``texture`` projected from the camera, by the visibility mask."""
    if shading not in SHADING_MODES:
        raise ValueError(f"shading must be one of {SHADING_MODES}, got {shading!r}")
    if original is not None:
        material = original.copy()
        if getattr(original, "use_nodes", True) is False:
            _node_tree(material)
            principled = next((n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
            if principled is not None:  # a node-less material's colour lives in diffuse_color
                principled.inputs["Base Color"].default_value = original.diffuse_color
        material[ORIGINAL_KEY] = original
    else:
        material = bpy.data.materials.new("Material")
        _node_tree(material)
    material.name = f"{original.name if original else 'Material'} (Easel)"
    material[JOB_KEY] = job_id
    tree = _node_tree(material)
    outputs = [n for n in tree.nodes if n.type == "OUTPUT_MATERIAL"]
    if not outputs:
        outputs = [_node(tree, "ShaderNodeOutputMaterial", 600, 0)]
    left = min((n.location.x for n in tree.nodes), default=0.0) - 1400
    top = max((n.location.y for n in tree.nodes), default=0.0) + 800
    frame = _node(tree, "NodeFrame", left, top, label="Easel projection")

    proj = _node(tree, "ShaderNodeAttribute", left, top, frame, attribute_type="GEOMETRY",
                 attribute_name=PROJECTION_ATTRIBUTE, label="(u·w, v·w, w)")
    split = _node(tree, "ShaderNodeSeparateXYZ", left + 200, top, frame)
    tree.links.new(proj.outputs["Vector"], split.inputs[0])
    u = _math(tree, "DIVIDE", left + 400, top, frame, split.outputs["X"], split.outputs["Z"])
    v = _math(tree, "DIVIDE", left + 400, top - 180, frame, split.outputs["Y"], split.outputs["Z"])
    uv = _node(tree, "ShaderNodeCombineXYZ", left + 600, top, frame)
    tree.links.new(u.outputs[0], uv.inputs["X"])
    tree.links.new(v.outputs[0], uv.inputs["Y"])
    image = _node(tree, "ShaderNodeTexImage", left + 800, top, frame, image=texture,
                  interpolation="Linear", extension="CLIP", label="Easel texture")
    tree.links.new(uv.outputs[0], image.inputs["Vector"])
    depth = _node(tree, "ShaderNodeTexImage", left + 800, top - 300, frame, image=depth_image,
                  interpolation="Closest", extension="CLIP", label="Easel depth pass")
    tree.links.new(uv.outputs[0], depth.inputs["Vector"])
    depth_red = _node(tree, "ShaderNodeSeparateColor", left + 1100, top - 300, frame)
    tree.links.new(depth.outputs["Color"], depth_red.inputs[0])
    own_depth = _node(tree, "ShaderNodeAttribute", left + 1100, top - 500, frame, attribute_type="GEOMETRY",
                      attribute_name=DEPTH_ATTRIBUTE, label="planar depth")
    facing = _node(tree, "ShaderNodeAttribute", left + 1100, top - 700, frame, attribute_type="GEOMETRY",
                   attribute_name=FACING_ATTRIBUTE, label="facing")
    limit = _math(tree, "MULTIPLY", left + 1300, top - 300, frame, depth_red.outputs[0], 1.0 + DEPTH_TOLERANCE)
    unoccluded = _math(tree, "LESS_THAN", left + 1500, top - 300, frame, own_depth.outputs["Fac"], limit.outputs[0])
    ahead = _math(tree, "GREATER_THAN", left + 1300, top - 100, frame, split.outputs["Z"], 0.0)
    mask = _math(tree, "MULTIPLY", left + 1700, top - 100, frame, ahead.outputs[0], unoccluded.outputs[0])
    mask = _math(tree, "MULTIPLY", left + 1900, top - 100, frame, mask.outputs[0], facing.outputs["Fac"])
    mask = _math(tree, "MULTIPLY", left + 2100, top - 100, frame, mask.outputs[0], image.outputs["Alpha"])
    mask.label = "visibility"
    if shading == "EMISSION":
        shader = _node(tree, "ShaderNodeEmission", left + 1300, top + 200, frame)
        shader.inputs["Strength"].default_value = 1.0
    else:
        shader = _node(tree, "ShaderNodeBsdfPrincipled", left + 1300, top + 200, frame)
    tree.links.new(image.outputs["Color"], shader.inputs[0])

    for index, output in enumerate(outputs):
        surface = output.inputs["Surface"]
        before = surface.links[0].from_socket if surface.is_linked else None
        mix = _node(tree, "ShaderNodeMixShader", output.location.x - 200, output.location.y + 200 + 150 * index,
                    label="Easel: original ↔ projection")
        tree.links.new(mask.outputs[0], mix.inputs["Fac"])
        if before is not None:
            tree.links.new(before, mix.inputs[1])
        tree.links.new(shader.outputs[0], mix.inputs[2])
        tree.links.new(mix.outputs[0], surface)
    return material


def original_of(material: bpy.types.Material | None) -> bpy.types.Material | None:
    """The user's own material behind ``material`` (itself when it is not an Easel copy)."""
    if material is not None and JOB_KEY in material:
        return material.get(ORIGINAL_KEY)
    return material


def is_projection(material: bpy.types.Material | None) -> bool:
    return material is not None and JOB_KEY in material


def apply_projection_materials(objects: Iterable[bpy.types.Object], texture: bpy.types.Image,
                               depth_image: bpy.types.Image, *, job_id: str, shading: str = "EMISSION") -> int:
    """Give every slot of every object a projection copy of its original material (one copy per
    original, shared by the objects: the attributes that differ live on each mesh). An object
    without slots gets one. Returns the number of materials made."""
    made: dict[str, bpy.types.Material] = {}
    for obj in objects:
        if not obj.material_slots:
            obj.data.materials.append(None)
        for slot in obj.material_slots:
            original = original_of(slot.material)
            key = original.name_full if original is not None else ""
            if key not in made:
                made[key] = projection_material(original, texture, depth_image, job_id=job_id, shading=shading)
            slot.material = made[key]
    return len(made)


def restore_materials(obj: bpy.types.Object) -> int:
    """Put back the original material in every slot that holds an Easel copy; returns how many.
    The copies lose their users and go when the file is saved (undo brings them back)."""
    restored = 0
    for slot in obj.material_slots:
        if is_projection(slot.material):
            slot.material = original_of(slot.material)
            restored += 1
    return restored


def has_projection(obj: bpy.types.Object) -> bool:
    return any(is_projection(slot.material) for slot in obj.material_slots)
