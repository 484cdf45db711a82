"""The generation settings: one PropertyGroup, stored on the scene as ``scene.easel``. Imports ``bpy``.

This module's namespace must never hold the ``bpy`` module, nor any module or function of this add-on
that does (``runtime``, ``render``, ...): only ``bpy.props``, ``bpy.types`` names and host-free code.
Blender 4.2's ``unregister_class`` never releases a PropertyGroup class (4.5 does), so
:class:`EaselSettings` — and through its methods and search callbacks this module's globals — outlive
the add-on. In Blender built as a module (PyPI's ``bpy``), Blender shuts down only when the ``bpy``
module object is freed at interpreter exit; a ``bpy`` still reachable from the leaked class keeps it
alive, Blender never shuts down, and the process segfaults at exit (docs/blender.md, "Blender 4.2").
Hence ``runtime`` is imported inside the callbacks, not here: once uninstalling drops the add-on's
modules from ``sys.modules``, ``runtime``'s namespace outlives its module object the same way.
``tests/blender/in_blender/test_exit.py`` holds this module to it.
"""
from __future__ import annotations

from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty
from bpy.types import Image, PropertyGroup, Scene

from .clientkit.controls import job_models
from .plan import Plan, model_for, plan
from .protocol import ModelInfo, Task


def _server_models() -> tuple[ModelInfo, ...]:
    """The connected server's models (none until connected)."""
    from . import runtime  # here, not at module level: see the module docstring

    try:
        return runtime.get().book.models
    except RuntimeError:
        return ()


def _models(self, context, edit_text):
    """The server's models a job can run on, for the model field's search list (empty until connected)."""
    return [(m.id, f"{m.name} ({m.kind}, {m.family})") for m in job_models(_server_models())
            if edit_text.lower() in m.id.lower()]


def _controlnets(control_types: tuple[str, ...]):
    """A search function listing the server's ControlNets of ``control_types`` (or of unknown type)."""
    def search(self, context, edit_text):
        models = _server_models()
        return [(m.id, f"{m.name} ({m.control_type or 'type unknown'}, {m.family})") for m in models
                if m.kind == "controlnet" and m.control_type in (*control_types, "")
                and edit_text.lower() in m.id.lower()]
    return search


def _samplers(self, context, edit_text):
    """The connected server's samplers (none until connected)."""
    from . import runtime  # here, not at module level: see the module docstring

    try:
        welcome = runtime.get().book.welcome
    except RuntimeError:
        return []
    names = welcome.capabilities.samplers if welcome is not None else ()
    return [name for name in names if edit_text.lower() in name.lower()]


class EaselSettings(PropertyGroup):
    prompt: StringProperty(name="Prompt", description="What to paint onto the scene")
    negative_prompt: StringProperty(name="Negative", description="What to keep out of the image")
    model: StringProperty(name="Model", search=_models,
                          description="The server's model id; empty uses the server's default for the task")
    seed: IntProperty(name="Seed", default=-1, min=-1, description="-1 picks a new random seed each time")
    steps: IntProperty(name="Steps", default=0, min=0, max=150, description="0 uses the model's default")
    cfg_scale: FloatProperty(name="CFG", default=7.0, min=0.0, max=30.0,
                             description="How closely to follow the prompt")
    strength: FloatProperty(name="Strength", default=0.6, min=0.0, max=1.0, subtype="FACTOR",
                            description="Refine render: how much to change the render (1 = repaint it all)")
    size_mode: EnumProperty(
        name="Size", default="MODEL",
        description="The size to generate at",
        items=[("MODEL", "Model", "The model's native size (its training area) at the render's aspect ratio: "
                                  "best quality per second"),
               ("SCENE", "Scene", "The scene's render size (rounded down to multiples of 8)"),
               ("CUSTOM", "Custom", "Width and height below")])
    width: IntProperty(name="Width", default=512, min=64, max=4096, subtype="PIXEL")
    height: IntProperty(name="Height", default=512, min=64, max=4096, subtype="PIXEL")
    depth_mode: EnumProperty(
        name="Depth", default="inverse",
        items=[("inverse", "Inverse", "Near is bright, falling off like 1/distance (what depth models learned)"),
               ("linear", "Linear", "Even brightness steps from the nearest to the farthest surface")])
    depth_guide: EnumProperty(
        name="Depth Guide", default="DEPTH2IMG",
        description="How Texture from Depth makes the image follow the depth pass",
        items=[("DEPTH2IMG", "Depth Model", "A depth-conditioned model (depth2img, e.g. SD 2 depth)"),
               ("CONTROLNET", "ControlNet Depth", "Any base model guided by a depth ControlNet (txt2img + ControlNet); "
                                                  "allows a line guide too")])
    depth_weight: FloatProperty(name="Depth Weight", default=1.0, min=0.0, max=2.0,
                                description="How strongly the depth ControlNet guides")
    depth_controlnet: StringProperty(name="Depth ControlNet", search=_controlnets(("depth",)),
                                     description="The server's depth ControlNet; empty picks the first one that "
                                                 "fits the model's family")
    line_guide: EnumProperty(
        name="Line Guide", default="NONE",
        description="Also guide by the scene's lines, from a Workbench render from the camera (ControlNet Depth only)",
        items=[("NONE", "None", "Depth only"),
               ("CANNY", "Canny Edges", "Edges of a Workbench render (the server runs Canny); needs a canny ControlNet"),
               ("LINEART", "Line Art", "Line art of a Workbench render (the server runs lineart_standard); needs a "
                                       "line-art ControlNet")])
    line_weight: FloatProperty(name="Line Weight", default=0.5, min=0.0, max=2.0,
                               description="How strongly the line guide guides")
    line_controlnet: StringProperty(name="Line ControlNet", search=_controlnets(("canny", "lineart")),
                                    description="The server's ControlNet for the line guide; empty picks the first "
                                                "one of its type that fits the model's family")
    shading: EnumProperty(
        name="Shading", default="EMISSION",
        items=[("EMISSION", "As Generated", "Show the generated image unlit, exactly as generated"),
               ("PRINCIPLED", "Lit", "Use the image as base colour, lit by the scene")])

    sampler: StringProperty(name="Sampler", search=_samplers,
                            description="The server's sampler (scheduler); empty uses the model's default")
    batch_size: IntProperty(name="Batch", default=1, min=1, max=8,
                            description="Refine Render: how many variants to make (each a new image)")
    lora_1: StringProperty(name="LoRA", description="A LoRA id on the server (easel serve --lora); empty: none")
    lora_1_weight: FloatProperty(name="Weight", default=1.0, min=-2.0, max=2.0)
    lora_2: StringProperty(name="LoRA 2", description="A second LoRA id on the server; empty: none")
    lora_2_weight: FloatProperty(name="Weight", default=1.0, min=-2.0, max=2.0)
    orbit_views: IntProperty(name="Views", default=4, min=1, max=16,
                             description="How many cameras the orbit rig places around the selection")
    orbit_elevation: FloatProperty(name="Elevation °", default=20.0, min=-85.0, max=85.0,
                                   description="The rig's height above the horizon (from the selection's centre)")
    orbit_distance: FloatProperty(name="Distance", default=1.0, min=0.3, max=5.0,
                                  description="The rig's distance, as a multiple of the distance at which the "
                                              "selection fills the view")
    bake_uv: EnumProperty(
        name="Bake UVs", default="SMART",
        items=[("SMART", "Smart UV Project", "A new UV map 'Easel Bake' made by Smart UV Project"),
               ("EXISTING", "Existing UVs", "The object's own active UV map")])
    style_reference: PointerProperty(
        name="Style Reference", type=Image,
        description="A picture whose style guides every view of a texture (through the server's reference "
                    "adapter: IP-Adapter, Flux Redux); empty: none")
    style_weight: FloatProperty(name="Style Weight", default=0.6, min=0.0, max=2.0,
                                description="How strongly the style reference guides (0: not sent)")
    bake_size: EnumProperty(
        name="Bake Size", default="1024",
        items=[(str(s), f"{s}²", f"A {s} × {s} texture per object") for s in (512, 1024, 2048, 4096)])

    def texture_task(self) -> str:
        """The task a texture job runs (the depth model's depth2img, or txt2img with a ControlNet)."""
        return Task.TXT2IMG if self.depth_guide == "CONTROLNET" else Task.DEPTH2IMG

    def plan(self, scene: Scene, task: str) -> Plan:
        """Size and steps the next ``task`` job will use (see :mod:`.plan`). Raises ``RequestError``
        for a size no model can take."""
        scale = scene.render.resolution_percentage / 100.0
        scene_size = (round(scene.render.resolution_x * scale), round(scene.render.resolution_y * scale))
        return plan(self.size_mode, scene_size, (self.width, self.height), self.steps,
                    model_for(_server_models(), self.model, task))

    def resolution(self, scene: Scene, task: str = Task.TXT2IMG) -> tuple[int, int]:
        """The size to generate at. Raises ``RequestError`` for a size no model can take."""
        planned = self.plan(scene, task)
        return planned.width, planned.height

    def seed_or_none(self) -> int | None:
        return None if self.seed < 0 else self.seed
