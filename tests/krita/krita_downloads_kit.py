"""A real ``easel serve --allow-downloads --models-dir DIR`` whose downloads come from the hub-shaped
loopback server of the backend's download tests (``tests/backend/hub_server.py``, reached through
``HF_ENDPOINT``), for the missing-model tests of the plugin. The hub serves small valid
``.safetensors`` under the real names of the ``sd15`` and ``sd15-canny`` presets, with the tensor
names of the real files, so the server lists them as an SD 1.5 checkpoint and a canny ControlNet
once they are downloaded (they are not models that could paint)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "backend"))

from hub_server import Hub  # noqa: E402

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors"
CANNY = "comfyanonymous/ControlNet-v1-1_fp16_safetensors/control_v11p_sd15_canny_fp16.safetensors"
SD15_ID, CANNY_ID = "v1-5-pruned-emaonly", "control_v11p_sd15_canny_fp16"


def _checkpoint(keys: dict[str, tuple[int, ...]], pad: int) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    tensors = {k: np.zeros(v, np.float16) for k, v in keys.items()}
    tensors["padding"] = np.zeros(pad // 2, np.float16)
    return save(tensors)


def make_hub(pace: float = 0.02) -> Hub:
    """The hub with both files; ``pace`` slows it (seconds per 64 KiB) so progress can be watched."""
    hub = Hub()
    hub.files[SD15] = _checkpoint({
        "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
        "first_stage_model.decoder.conv_in.weight": (8, 4, 3, 3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}, 2_000_000)
    hub.files[CANNY] = _checkpoint({
        "control_model.input_hint_block.0.weight": (8, 3, 3, 3),
        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (8, 768)}, 1_000_000)
    hub.pace = pace
    return hub


@contextmanager
def download_server(models_dir: Path, pace: float = 0.02) -> Iterator[tuple[object, Hub]]:
    """(the running server, its hub); the server downloads into ``models_dir`` (a ComfyUI layout)."""
    from krita_backend import BackendServer

    (models_dir / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    hub = make_hub(pace)
    saved = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_TOKEN")}
    os.environ["HF_ENDPOINT"] = hub.url
    os.environ.pop("HF_TOKEN", None)
    try:
        server = BackendServer("--models-dir", str(models_dir), "--allow-downloads")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield server, hub
    finally:
        server.stop()
        hub.close()
