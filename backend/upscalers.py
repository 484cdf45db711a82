"""Super-resolution models (ESRGAN family, through ``spandrel`` — the library ComfyUI uses) for the
Upscale task's first pass: the image is enlarged by the model instead of by Lanczos, then the SD
tile pass adds detail as before.

The models come from the models folders' upscaler folders (``upscale_models``, ``ESRGAN``,
``RealESRGAN``; :mod:`backend.catalog` lists them as ``upscaler``); ``.safetensors`` only, so no
pickle is ever opened. The first one (by id) is used; with none, the first pass stays Lanczos.
The model runs on the image in tiles of at most :data:`TILE` pixels a side with :data:`PAD`
pixels of context each side (bounded memory for any image size); its output is then resized to
the exact size the job asks for (a 4x model serving a 2x job is scaled down after it ran).
Worker thread only; the loaded model is kept until the file changes or another is chosen.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .imaging import resize

log = logging.getLogger(__name__)

#: Largest tile (input pixels a side) the model sees at once, and the context around each tile.
TILE = 512
PAD = 32


class SuperResolution:
    """Enlarges images with the first super-resolution model ``found()`` returns (paths), or says
    there is none. ``device``/``dtype`` give where it runs (called when it loads)."""

    def __init__(self, found: Callable[[], list[Path]], device: Callable[[], str]) -> None:
        self._found = found
        self._device = device
        self._loaded: tuple[tuple[str, float], Any] | None = None

    def model(self) -> Any | None:
        """The loaded spandrel model descriptor, or None when no upscaler is found (or it fails to load)."""
        paths = [p for p in self._found() if p.suffix.lower() in (".safetensors", ".sft")]
        if not paths:
            return None
        path = sorted(paths)[0]
        try:
            key = (str(path), path.stat().st_mtime)
        except OSError:
            return None
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, self._load(path))
        return self._loaded[1]

    def _load(self, path: Path) -> Any | None:
        try:
            import spandrel
        except ImportError:
            log.warning("upscaler %s found but the spandrel package is not installed; using Lanczos", path)
            return None
        try:
            descriptor = spandrel.ModelLoader(self._device()).load_from_file(str(path))
        except Exception as exc:  # noqa: BLE001 - an unusable file falls back to Lanczos, with the reason logged
            log.warning("upscaler %s could not be loaded (%s); using Lanczos", path, exc)
            return None
        if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3:
            log.warning("%s is not a 3-channel image-to-image model; using Lanczos", path)
            return None
        log.info("upscale first pass: %s (%s, %dx)", path.name, descriptor.architecture.name, descriptor.scale)
        return descriptor.eval()

    def enlarge(self, rgb: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, str]:
        """``rgb`` (H, W, 3 uint8) at ``size`` (width, height), and the name of what enlarged it
        (the model's file, or ``lanczos``)."""
        model = self.model()
        if model is None or size[0] <= rgb.shape[1] and size[1] <= rgb.shape[0]:
            return resize(rgb, size), "lanczos"
        out = run_tiled(model, rgb)
        return resize(out, size), Path(self._loaded[0][0]).name if self._loaded else "model"


def run_tiled(model: Any, rgb: np.ndarray, tile: int = 0, pad: int = 0) -> np.ndarray:
    """``model`` (a spandrel descriptor of scale s) over ``rgb`` in tiles of ``tile`` pixels a side
    with ``pad`` pixels of context (default :data:`TILE`, :data:`PAD`): (H*s, W*s, 3) uint8."""
    import torch

    tile, pad = tile or TILE, pad or PAD
    scale = int(model.scale)
    height, width = rgb.shape[:2]
    out = np.zeros((height * scale, width * scale, 3), np.uint8)
    device = next(model.model.parameters()).device
    dtype = next(model.model.parameters()).dtype
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            x0, y0 = max(0, x - pad), max(0, y - pad)
            x1, y1 = min(width, x + tile + pad), min(height, y + tile + pad)
            piece = torch.from_numpy(np.ascontiguousarray(rgb[y0:y1, x0:x1])).to(device)
            piece = piece.permute(2, 0, 1)[None].to(dtype) / 255.0
            with torch.no_grad():
                result = model(piece)[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
            keep_w, keep_h = min(tile, width - x), min(tile, height - y)
            ox, oy = (x - x0) * scale, (y - y0) * scale
            out[y * scale:(y + keep_h) * scale, x * scale:(x + keep_w) * scale] = \
                result[oy:oy + keep_h * scale, ox:ox + keep_w * scale]
    return out
