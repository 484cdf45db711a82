"""Step previews: latents → RGB → a small JPEG, cheap enough to run after every denoising step.

The default is a linear map from the latent channels to RGB (3 numbers per channel plus a bias,
fitted per VAE family and declared by the family: SD 1.x/2.x share a VAE, SDXL has its own, Flux's
has 16 channels), computed at latent resolution
and scaled up: well under a millisecond of tensor work per step. When a TAESD model
(``AutoencoderTiny``) is configured for the family, it decodes instead: sharper, a few ms on a GPU.

A :class:`PreviewFrame` places the generated area in the final result, so a preview always covers
what the result will cover (an inpaint preview shows the whole image with the repainted region in it).

Only the latent → RGB product runs on the worker thread between steps; scaling, placing and JPEG
encoding (1–3 ms) run on the :class:`PreviewPump`'s thread while the next step computes, so on a GPU,
where a step can take 10 ms, previews do not stretch the job.
"""
from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: Longest side of a preview JPEG.
MAX_PREVIEW_SIDE = 512
JPEG_QUALITY = 80

def _latent_rgb() -> dict[str, tuple[tuple, tuple]]:
    from .models.registry import FAMILY_LIST

    return {f.name: f.latent_rgb for f in FAMILY_LIST}


#: family → (latent → RGB factors, one row per latent channel; bias), as each family declares them.
LATENT_RGB: dict[str, tuple[tuple, tuple]] = _latent_rgb()


def preview_size(width: int, height: int, limit: int = MAX_PREVIEW_SIDE) -> tuple[int, int]:
    """``width × height`` scaled down (never up) so the longer side is at most ``limit``."""
    scale = min(1.0, limit / float(max(width, height)))
    return max(1, round(width * scale)), max(1, round(height * scale))


class LatentDecoder:
    """Turns the first image of a latent batch ``(B, C, h, w)`` into an ``(h, w, 3)`` uint8 RGB array
    (packed latents are unpacked first by the family's ``unpack``).

    Linear approximation by default (output at latent resolution); TAESD when ``taesd`` is given
    (output at full resolution). Runs on the latents' device; only the small result is copied back.
    """

    def __init__(self, family: str, taesd: Any = None) -> None:
        factors, bias = LATENT_RGB.get(family, LATENT_RGB["sd15"])
        self._factors = np.asarray(factors, np.float32)
        self._bias = np.asarray(bias, np.float32)
        self._cache: dict[tuple, tuple[Any, Any]] = {}
        self.taesd = taesd

    def rgb(self, latents: Any) -> np.ndarray:
        import torch

        with torch.no_grad():
            first = latents[:1]
            if self.taesd is not None:
                image = self.taesd.decode(first.to(self.taesd.dtype), return_dict=False)[0][0]
                image = ((image.permute(1, 2, 0) + 1.0) * 127.5).clamp(0, 255).to(torch.uint8)
                return image.cpu().numpy()
            if first.device.type == "cpu":
                # numpy, not torch, on the CPU: torch spreads even this tiny product over threads,
                # which costs ~100 ms on a busy 2-core machine where numpy takes 0.05 ms.
                values = first[0].float().numpy()
                image = np.tensordot(values, self._factors, axes=([0], [0])) + self._bias
                return np.clip((image + 1.0) * 127.5, 0, 255).astype(np.uint8)
            factors, bias = self._tensors(first)  # on the GPU: compute there, copy back h*w*3 bytes
            image = torch.einsum("chw,cr->hwr", first[0].to(factors.dtype), factors) + bias
            return ((image + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()

    def _tensors(self, latents: Any) -> tuple[Any, Any]:
        import torch

        dtype = latents.dtype if latents.dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
        key = (latents.device, dtype)
        if key not in self._cache:
            self._cache[key] = (torch.from_numpy(self._factors).to(latents.device, dtype),
                                torch.from_numpy(self._bias).to(latents.device, dtype))
        return self._cache[key]


@dataclass
class PreviewFrame:
    """Where the generated pixels sit in the result, at preview resolution.

    ``size`` is the result's size. With ``box`` (the generated region in result pixels) the preview
    is ``background`` (the result's known pixels, RGB) with the generated region blended in by
    ``alpha`` (result-sized weights); without it the generated image is the whole result.
    """

    size: tuple[int, int]
    box: tuple[int, int, int, int] | None = None
    background: np.ndarray | None = None
    alpha: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.preview = preview_size(*self.size)
        self._scale = self.preview[0] / float(self.size[0])
        self._base: np.ndarray | None = None
        self._region: tuple[int, int, int, int] | None = None
        self._weight: np.ndarray | None = None
        if self.box is not None and self.background is not None:
            self._base = _resize(self.background[..., :3], self.preview)
            x0, y0, x1, y1 = (round(v * self._scale) for v in self.box)
            x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
            self._region = (x0, y0, min(x1, self.preview[0]), min(y1, self.preview[1]))
            if self.alpha is not None:
                small = _resize((self.alpha * 255).astype(np.uint8), self.preview)
                rx0, ry0, rx1, ry1 = self._region
                self._weight = small[ry0:ry1, rx0:rx1, None].astype(np.float32) / 255.0

    def render(self, rgb: np.ndarray) -> tuple[bytes, int, int]:
        """A JPEG of the result as it would look with ``rgb`` as the generated pixels: (jpeg, width, height)."""
        if self._base is None or self._region is None:
            return encode_jpeg(_resize(rgb, self.preview)), self.preview[0], self.preview[1]
        x0, y0, x1, y1 = self._region
        patch = _resize(rgb, (x1 - x0, y1 - y0))
        frame = self._base.copy()
        if self._weight is None:
            frame[y0:y1, x0:x1] = patch
        else:
            under = frame[y0:y1, x0:x1].astype(np.float32)
            frame[y0:y1, x0:x1] = (under + (patch.astype(np.float32) - under) * self._weight).astype(np.uint8)
        return encode_jpeg(frame), self.preview[0], self.preview[1]


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (pixels.shape[1], pixels.shape[0]) == tuple(size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR))


def load_taesd(source: str, device: str, dtype: Any, allow_unsafe: bool = False) -> Any:
    """An ``AutoencoderTiny`` from a local folder or a cached hub id (never downloads). Reads only
    ``.safetensors`` weights unless ``allow_unsafe`` (a TAESD with only a pickle-based ``.bin`` then
    fails to load, like a missing one). Raises when it cannot load; the caller logs why and falls
    back to the linear map."""
    from diffusers import AutoencoderTiny

    from .models import safetensors_only

    model = AutoencoderTiny.from_pretrained(source, torch_dtype=dtype, local_files_only=True,
                                            **safetensors_only(allow_unsafe))
    return model.to(device).eval()


class PreviewPump:
    """Runs preview work on a thread of its own, one item at a time, overlapping the next step.

    ``submit`` hands over one item; if the previous one is still running it waits for it (a single
    slot: bounded, in order, none dropped — the worker is held back only when rendering is slower
    than denoising). ``drain`` waits until everything submitted has run; the engine calls it before
    a job's result or cancellation is reported, so no preview of a job arrives after its end.
    An item that raises is logged and does not affect the job.
    """

    def __init__(self, name: str = "easel-previews") -> None:
        self._name = name
        self._ready = threading.Condition()
        self._item: Callable[[], None] | None = None
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(self, item: Callable[[], None]) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("the preview pump is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
                self._thread.start()
            while self._item is not None:
                self._ready.wait()
            self._item = item
            self._ready.notify_all()

    def drain(self) -> None:
        with self._ready:
            while self._item is not None or self._busy:
                self._ready.wait()

    def close(self) -> None:
        """Run what is pending, then stop the thread."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _main(self) -> None:
        while True:
            with self._ready:
                while self._item is None and not self._closed:
                    self._ready.wait()
                if self._item is None:
                    return
                item, self._item, self._busy = self._item, None, True
                self._ready.notify_all()
            try:
                item()
            except Exception:  # noqa: BLE001 - a broken preview must not break the job or the thread
                log.exception("a step preview failed")
            finally:
                with self._ready:
                    self._busy = False
                    self._ready.notify_all()
