"""Guiding Flux.1 by an image: its ControlNets, and its control transformers (Canny, Depth).

**Flux ControlNets** (``FluxControlNetModel``: InstantX, Shakker-Labs, XLabs' diffusers versions)
guide a Flux.1 base model in txt2img, img2img, inpaint and outpaint exactly as SD's ControlNets
do: control units name them, several at once, each with a weight and a start/end. They are found
like SD's (a diffusers folder whose ``config.json`` names ``FluxControlNetModel``, a hub id) and
must match the base model's transformer width and text features. diffusers 0.42 cannot read one
from a single file (there is no converter for it), so a single-file Flux ControlNet is detected —
it must not pass for a base transformer — and refused with what to use instead. Union ControlNets
(``num_mode`` set) need a control mode per unit the protocol has no field for: refused too.

**Flux control models** (black-forest-labs' FLUX.1-Canny-dev and FLUX.1-Depth-dev) are whole
transformers that take the control image's latents beside their own: 128 packed input channels
instead of 64 (read from ``x_embedder``'s in-features in a header or ``in_channels`` in a config).
Both have the same shapes; which one a model is comes from a word in its id, name or path
(``depth``, ``canny``) or its configured ``control_type``:

* a **depth** model (kind ``depth``) runs the ``depth2img`` task as SD 2.x's depth models do (a
  depth map sent, or estimated from the image) through ``FluxControlPipeline`` /
  ``FluxControlImg2ImgPipeline``, the depth map given as a grey image (near = white);
* any other (kind ``control``, ``control_type`` ``canny`` or unknown) runs txt2img, img2img,
  inpaint and outpaint with exactly one control unit that names the model itself: the unit's image
  (and preprocessor) is the control image. It is used at full strength over every step
  (weight 1, start 0, end 1); other values are refused rather than ignored.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from protocol.errors import ErrorCode

from ..errors import JobError, invalid
from .facts import ModelFacts, shape

CONTROL_CHANNELS = 128
_CONTROLNET_MARKS = ("controlnet_blocks.", "controlnet_single_blocks.", "controlnet_x_embedder.")


def controlnet_folder_facts(config: Mapping[str, Any], origin: str) -> ModelFacts | None:
    """A Flux ControlNet from its ``config.json``; None for any other class."""
    if config.get("_class_name") != "FluxControlNetModel":
        return None
    return ModelFacts("flux", "controlnet", origin, "flow", context_dim=int(config.get("joint_attention_dim", 4096)))


def controlnet_file_facts(header: Mapping[str, Any]) -> ModelFacts | None:
    """A single-file Flux ControlNet from its tensor names (diffusers' ``controlnet_blocks.*`` beside
    transformer blocks, or XLabs' ``controlnet_blocks.*`` beside ``double_blocks.*``)."""
    if not any(key.startswith(_CONTROLNET_MARKS) for key in header):
        return None
    if not any(key.startswith(("transformer_blocks.", "double_blocks.")) for key in header):
        return None
    context = shape(header, "context_embedder.weight", "txt_in.weight")
    return ModelFacts("flux", "controlnet", "single_file", "flow", context_dim=int(context[1]) if context else 4096)


def controlnet_misfit(net: Any, transformer: Any) -> str:
    """Why a loaded ``FluxControlNetModel`` (its config) cannot guide a Flux transformer (its
    config): its blocks' outputs are added to the transformer's hidden states, so their widths
    and the text features must be the same. "" when it fits."""
    width = net.num_attention_heads * net.attention_head_dim
    if width != transformer.num_attention_heads * transformer.attention_head_dim:
        return f"its blocks are {width} wide, the transformer's {transformer.num_attention_heads * transformer.attention_head_dim}"
    if net.joint_attention_dim != transformer.joint_attention_dim:
        return f"it was made for a model with {net.joint_attention_dim}-wide text features"
    if getattr(net, "num_mode", None):
        return ("it is a union ControlNet, which needs a control mode per unit that this server cannot send yet; "
                "use a single-type Flux ControlNet (canny, depth, ...)")
    return ""


def single_file_config(header: Mapping[str, Any]) -> dict[str, Any]:
    """``in_channels`` of a Flux transformer file (64 base, 128 control, 384 Fill), so it loads
    with any Flux.1 config folder; {} when the header does not say."""
    for prefix in ("", "model.diffusion_model."):
        entry = shape(header, prefix + "x_embedder.weight", prefix + "img_in.weight")
        if entry:
            return {"in_channels": int(entry[1])}
    return {}


# --------------------------------------------------------------------------- control models' jobs


def check_units(model_id: str, facts: ModelFacts, controls: tuple[Any, ...]) -> None:
    """The control units of a job on the control model ``model_id`` (kind ``control``): exactly one,
    naming the model itself, at full strength. Raises JobError saying what to send instead."""
    what = f"model {model_id!r} is a Flux.1 control model ({facts.control_type or 'control type unknown'})"
    if len(controls) != 1:
        from ..preprocessors import PREPROCESSORS

        named = facts.control_type in PREPROCESSORS
        hint = f" (with preprocessor {facts.control_type!r} for a picture)" if named else ""
        raise invalid(f"{what}: it takes its control image from exactly one control unit naming {model_id!r}{hint}, "
                      f"got {len(controls)} units", field="controls")
    unit = controls[0]
    if unit.model != model_id:
        raise JobError(ErrorCode.UNSUPPORTED,
                       f"{what}: it takes no ControlNets ({unit.model!r}); its control unit names {model_id!r} itself, "
                       f"or use a Flux.1 base model for ControlNet units", {"field": "controls"})
    if (unit.weight, unit.start, unit.end) != (1.0, 0.0, 1.0):
        raise JobError(ErrorCode.UNSUPPORTED,
                       f"{what}: its control image guides every step at full strength; send weight 1, start 0 and "
                       f"end 1 (got weight {unit.weight:g}, start {unit.start:g}, end {unit.end:g})",
                       {"field": "controls"})


def depth_image(depth: np.ndarray) -> Any:
    """A depth map (near = large, any range) as the grey RGB image Flux.1 Depth takes (near = white)."""
    from PIL import Image

    low, high = float(np.nanmin(depth)), float(np.nanmax(depth))
    grey = np.clip((np.nan_to_num(depth, nan=low) - low) / max(high - low, 1e-12), 0.0, 1.0)
    byte = np.round(grey * 255).astype(np.uint8)
    return Image.fromarray(np.repeat(byte[..., None], 3, axis=2))
