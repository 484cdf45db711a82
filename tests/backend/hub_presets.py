"""The loopback hub (``hub_server.Hub``) serving small stand-ins for two of ``easel download``'s
presets, ``sd15`` and ``sd15-canny``: valid ``.safetensors`` under the real repositories and file
names, with the tensor names of the real files, so a server lists them as an SD 1.5 checkpoint and
a canny ControlNet for SD 1.5 once downloaded (they cannot paint). Standard library only: the
plugins' tests use it from Krita's and Blender's own Pythons too. No test lives here."""
from __future__ import annotations

import json
import struct

from hub_server import Hub

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors"
CANNY = "comfyanonymous/ControlNet-v1-1_fp16_safetensors/control_v11p_sd15_canny_fp16.safetensors"
#: The model ids the server gives them (their file names).
SD15_ID, CANNY_ID = "v1-5-pruned-emaonly", "control_v11p_sd15_canny_fp16"


def safetensors_bytes(shapes: dict[str, tuple[int, ...]]) -> bytes:
    """A ``.safetensors`` file of float16 zeros in the given shapes."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2
        for n in shape:
            size *= n
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + bytes(offset)


def preset_hub(pace: float = 0.0) -> Hub:
    """A running hub with both files; ``pace`` (seconds per 64 KiB) slows it so progress can be watched."""
    hub = Hub()
    hub.files[SD15] = safetensors_bytes({
        "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,),
        "padding": (1_000_000,)})
    hub.files[CANNY] = safetensors_bytes({
        "control_model.input_hint_block.0.weight": (8, 3, 3, 3),
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 768),
        "padding": (500_000,)})
    hub.pace = pace
    return hub
