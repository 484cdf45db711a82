"""Reference images and regional prompts, applied to one diffusers call (:func:`backend.tasks.common.generate`).

A job without references and regions never reaches this module: its call is the plain one, byte
for byte. With them, :class:`Guidance` is entered around the pipeline call:

**Regions.** Each region's mask (covering the result like a control image; cut and scaled with the
image the model works on) is feathered (a Gaussian of about 2 % of the working size's shorter side),
and the masks become weights per pixel: where masks overlap they share, and the base prompt gets
what is left (``1 − Σ region weights``). The weights are averaged down to each attention layer's
resolution.

* UNet families (SD 1.x, SD 2.x, SDXL), ``region_mode`` "attention": every cross-attention layer's
  processor is wrapped. The wrapped processor attends to the base prompt as before, attends to each
  region's prompt too, and mixes the outputs by the weights — for the conditional half of the
  batch; the negative prompt's half is unchanged. Every self-attention layer's processor is wrapped
  too (as InvokeAI's regional prompting does): over the first :data:`SELF_ATTENTION_END` of the
  steps, the score of a query token for a key token gets ``SELF_ATTENTION_BIAS × Σ_prompts
  weight(query) × weight(key)`` added (the base prompt counting as a prompt), in both halves of the
  batch, so that while the layout forms an image token weighs a token of its own region ``e²`` ≈ 7×
  more than one across a border. Later steps attend as the model was trained. On the tiny random
  test UNet (256², 2 steps, seeds 5, 1, 9) 55.0–59.0 % of the pixel change a region's prompt makes
  falls inside its feathered mask (512²: 58.2–60.1 %; the bias adds 1–1.5 points), against 46–50 %
  for the same words unmasked: the masked layer's own change is 98 % inside, but the GroupNorm
  statistics, which cover the whole picture, and the 3×3 convolutions spread it.
* UNet families, ``region_mode`` "separate" (the default): as "attention", and over the first
  :data:`SEPARATE_END` of the steps the UNet's forward is widened (:mod:`backend.region_passes`):
  the conditional half runs once per prompt in the same call and the noise predictions are blended
  by the weights at latent size, so no prompt reaches another region within those steps; the
  cross-attention layers then add only the reference images (a region's in its own prompt's rows),
  and the self-attention runs unbiased (measured: the bias changes the figure by ±0.1 point there).
  Tiny UNet, 2 steps, seeds 5, 1, 9: 89.7–90.3 % inside at 256², 89.4–90.2 % at 512². Passes over
  every step measure the same within 0.1 point (256² and 512², 2 and 20 steps), over the first 30 %
  0.3–0.5 points less; half the steps keep the cost of the extra passes at half, and the later,
  detail-forming steps see every prompt in one picture, which blends the borders. Cost with 2
  regions: 1.25–1.34× "attention"'s time per job (every step: 1.5–1.75×; benchmarks/RESULTS.md,
  "Regions: separate passes").
* Flux.1 (joint attention; either ``region_mode``): the regions' T5 tokens follow the base prompt's
  in one text sequence, and an additive attention mask lets each image token attend to a region's tokens with
  ``log(weight)`` (−∞ outside the region), to the base prompt's with ``log(base weight)``; a
  prompt's tokens attend to their own prompt and to the image tokens of their region only.

**References.** An IP-Adapter's image tokens get a key/value projection per cross-attention layer
(the adapter's); the layer adds ``weight × attention(query, image tokens)`` — times the region's
weight for a region's reference (in a "separate" step: in its region's prompt's rows only, at full
weight, the blend placing it). Redux's tokens join Flux's text sequence; image tokens attend to
them with ``log(weight)`` (a region's: plus ``log`` of its weight), and not at all outside the
reference's ``start``/``end`` range (IP-Adapter: weight 0 there). The range counts the denoising
steps that run, like ControlNet's ``control_guidance_start``/``end``. An IP-Adapter reference of
weight 0 adds nothing (the layer returns the plain output); a Redux reference of weight 0 is left out.

The UNet's wrapped attention processors are in :mod:`backend.guide_attention`; the "separate"
passes in :mod:`backend.region_passes`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from protocol.images import ImagePayload

from .guide_attention import RegionalCrossAttention, RegionalSelfAttention, UNetState
from .imaging import Box, decode_image, decode_mask, over_white, place_control, resize
from .params import REGION_MODES, ResolvedParams, same_aspect

#: Families whose models take regions (their attention is wrapped or masked as above).
REGION_FAMILIES = ("sd15", "sd2", "sdxl", "demo", "flux")
#: The Gaussian that feathers region borders, as a fraction of the working size's shorter side.
FEATHER_FRACTION = 0.02
#: UNet families: the bias added to the self-attention score of two image tokens of the same
#: region (InvokeAI's regional prompting tried 0.3 to 2), and the fraction of the steps that run it
#: applies to (theirs: 0.3); see the module docstring.
SELF_ATTENTION_BIAS = 2.0
SELF_ATTENTION_END = 0.3
#: UNet families, ``region_mode`` "separate": the fraction of the steps that run one conditional pass
#: per prompt (:mod:`backend.region_passes`); later steps attend with masks as in "attention" mode.
SEPARATE_END = 0.5


@dataclass
class RefTokens:
    """One reference, encoded: ``tokens`` (1, T, D), ``uncond`` (IP-Adapter's negative-pass tokens,
    None for Redux), ``layers`` the adapter's (to_k, to_v) per cross-attention layer (IP-Adapter),
    ``region`` the index of its region (None: the whole picture)."""

    tokens: Any
    uncond: Any
    weight: float
    start: float
    end: float
    layers: Sequence[tuple[Any, Any]] = ()
    region: int | None = None

    def scale(self, step: int, total: int) -> float:
        """The weight at ``step`` of ``total`` (0 outside the reference's range)."""
        if total <= 0:
            return self.weight
        outside = step / total < self.start or (step + 1) / total > self.end
        return 0.0 if outside else self.weight


def region_weights(masks: Sequence[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """(1 + R, H, W) float32 weights at ``size`` = (width, height): the base prompt's, then each
    region's; feathered, sharing where masks overlap, summing to 1 everywhere. ``masks`` are uint8
    (H, W) at ``size``."""
    import cv2

    sigma = max(1.0, FEATHER_FRACTION * min(size))
    layers = [cv2.GaussianBlur(m.astype(np.float32) / 255.0, (0, 0), sigma) for m in masks]
    stack = np.clip(np.stack(layers), 0.0, 1.0) if layers else np.zeros((0, size[1], size[0]), np.float32)
    total = stack.sum(axis=0)
    stack = stack / np.maximum(total, 1.0)
    base = np.clip(1.0 - stack.sum(axis=0), 0.0, 1.0)
    return np.concatenate([base[None], stack]).astype(np.float32)


@dataclass
class Guidance:
    """One call's references and regions; a context manager around the pipeline call. See the module
    docstring. ``weights``: :func:`region_weights` at the working size; ``region_embeds``: each
    region's prompt embeddings (1, L, D); ``images``: images per prompt in the call; ``mode``: the
    job's ``region_mode`` (UNet families; "separate" needs ``region_pooled``, each region's pooled
    embeddings (1, D) where the model takes them, else None); ``layout``: while a widened UNet call
    of "separate" mode runs, its rows (:class:`backend.region_passes.Layout`)."""

    pipe: Any
    denoiser: str
    weights: np.ndarray
    region_embeds: list[Any]
    references: list[RefTokens]
    images: int
    mode: str = "attention"
    region_pooled: list[Any] = field(default_factory=list)
    layout: Any = None
    #: The most rows one UNet call may run (the memory plan's :meth:`~backend.memory.MemoryPlan.rows_fitting`);
    #: None: no limit known.
    max_rows: int | None = None
    step: int = 0
    _undo: list[Any] = field(default_factory=list)
    _flux_mask: dict[str, Any] = field(default_factory=dict)
    _flux_key: tuple = ()
    _levels: dict[tuple, Any] = field(default_factory=dict)
    _groups: list[int] = field(default_factory=list)

    # ------------------------------------------------------------------ the call's seams

    def prompts(self, prompts: dict[str, Any]) -> dict[str, Any]:
        """The pipeline's prompt arguments, extended for a transformer family: the regions' and
        references' tokens after the base prompt's, and the joint-attention mask."""
        if self.denoiser == "unet":
            return prompts
        embeds = prompts["prompt_embeds"]
        batch = embeds.shape[0]
        extra = [e.to(embeds.device, embeds.dtype).expand(batch, -1, -1) for e in self.region_embeds]
        self.references = [r for r in self.references if r.weight > 0]  # weight 0: as if absent
        extra += [r.tokens.to(embeds.device, embeds.dtype).expand(batch, -1, -1) for r in self.references]
        self._groups = [embeds.shape[1]] + [e.shape[1] for e in extra]
        out = dict(prompts, prompt_embeds=torch_cat([embeds, *extra]))
        self._flux_mask = {}
        out["joint_attention_kwargs"] = self._flux_mask
        self._update_flux_mask(embeds.device, embeds.dtype)
        return out

    def step_end(self, index: int) -> None:
        """After step ``index`` (0-based) of the call: the next step's weights apply."""
        self.step = index + 1

    def __enter__(self) -> "Guidance":
        denoiser = getattr(self.pipe, self.denoiser)
        self._undo.append(denoiser.register_forward_pre_hook(lambda module, args: self._before_step()).remove)
        if self.denoiser == "unet":
            originals = dict(denoiser.attn_processors)
            state = UNetState(self)
            wrapped, cross = {}, 0
            for name, processor in originals.items():
                if name.endswith("attn1.processor"):
                    wrapped[name] = RegionalSelfAttention(processor, self) if self.region_embeds else processor
                else:
                    wrapped[name] = RegionalCrossAttention(processor, state, cross)
                    cross += 1
            denoiser.set_attn_processor(wrapped)
            self._undo.append(lambda: denoiser.set_attn_processor(originals))
            self._state = state
            if self.mode == "separate" and self.region_embeds:
                from .region_passes import wrap_forward

                self._undo.append(wrap_forward(denoiser, self))
        return self

    def __exit__(self, *exc: Any) -> None:
        while self._undo:
            self._undo.pop()()

    def _total(self) -> int:
        return int(getattr(self.pipe, "_num_timesteps", 0) or 0)

    def _before_step(self) -> None:
        if self.denoiser != "unet":
            ref = next(iter(self._flux_mask.values()), None)
            if ref is not None:
                self._update_flux_mask(ref.device, ref.dtype)

    # ------------------------------------------------------------------ the UNet side

    def separate_now(self) -> bool:
        """Whether this step runs one conditional UNet pass per prompt ("separate" mode, a step that
        starts within the first :data:`SEPARATE_END` of the steps)."""
        return (self.denoiser == "unet" and self.mode == "separate" and bool(self.region_embeds)
                and self.step < SEPARATE_END * max(self._total(), 1))

    def latent_weights(self, size: tuple[int, int], like: Any) -> Any:
        """The weights averaged down to a latent of ``size`` = (h, w): (1 + R, 1, 1, h, w)."""
        import torch
        import torch.nn.functional as F

        key = ("latent", tuple(size), like.device, like.dtype)
        if key not in self._levels:
            pooled = F.adaptive_avg_pool2d(torch.from_numpy(self.weights)[:, None], tuple(size))
            self._levels[key] = pooled[:, None].to(like.device, like.dtype)
        return self._levels[key]

    def level(self, tokens: int, like: Any) -> Any:
        """The weights at the attention resolution with ``tokens`` image tokens: (1 + R, 1, tokens, 1)."""
        import torch
        import torch.nn.functional as F

        key = (tokens, like.device, like.dtype)
        if key not in self._levels:
            height, width = self.weights.shape[1] // 8, self.weights.shape[2] // 8  # latents
            for factor in (1, 2, 4, 8, 16, 32, 64):
                rows, cols = -(-height // factor), -(-width // factor)
                if rows * cols == tokens:
                    break
            else:
                raise RuntimeError(f"no latent resolution has {tokens} tokens for a {width}x{height} latent")
            full = torch.from_numpy(self.weights)[:, None]
            pooled = F.adaptive_avg_pool2d(full, (rows, cols))
            self._levels[key] = pooled.reshape(len(self.weights), 1, tokens, 1).to(like.device, like.dtype)
        return self._levels[key]

    def self_bias(self, tokens: int, like: Any) -> Any:
        """The additive self-attention bias at the resolution with ``tokens`` image tokens, (tokens,
        tokens): ``SELF_ATTENTION_BIAS × Σ_prompts weight(query) × weight(key)``; None at the steps
        it does not cover (a step counts if it starts within the first ``SELF_ATTENTION_END``).
        Its rows are stored a multiple of 16 elements apart: PyTorch's memory-efficient attention
        (CUDA) reads a bias whose strides are multiples of 8 as it is, for every image and head, and
        pads a copy of any other, one per image and head."""
        if SELF_ATTENTION_BIAS <= 0 or self.step >= SELF_ATTENTION_END * max(self._total(), 1):
            return None
        if self.layout is not None:  # a pass of one prompt: measured, the bias changes nothing there
            return None
        key = ("self", tokens, like.device, like.dtype)
        if key not in self._levels:
            weights = self.level(tokens, like).float().reshape(len(self.weights), tokens)
            rows = weights.new_zeros(tokens, -(-tokens // 16) * 16)
            rows[:, :tokens] = SELF_ATTENTION_BIAS * weights.T @ weights
            self._levels[key] = rows.to(like.dtype)[:, :tokens]
        return self._levels[key]

    # ------------------------------------------------------------------ the Flux side

    def _update_flux_mask(self, device: Any, dtype: Any) -> None:
        total = self._total()
        scales = tuple(r.scale(self.step, total) for r in self.references)
        key = (scales, device, dtype)
        if key == self._flux_key:
            return
        self._flux_key = key
        self._flux_mask["attention_mask"] = self._flux_bias(scales).to(device, dtype)[None, None]

    def _flux_bias(self, scales: Sequence[float]) -> Any:
        """The additive (L, L) mask over [text groups…, image tokens] (see the module docstring)."""
        import torch
        import torch.nn.functional as F

        height, width = self.weights.shape[1] // 16, self.weights.shape[2] // 16  # packed 2×2 latents
        pooled = F.adaptive_avg_pool2d(torch.from_numpy(self.weights)[:, None], (height, width))
        image_w = pooled.reshape(len(self.weights), height * width)  # (1 + R, I)
        log_w = torch.log(image_w.clamp_min(0.0))  # log 0 = -inf
        groups = self._groups
        text = sum(groups)
        size = text + height * width
        bias = torch.zeros(size, size)
        starts = np.cumsum([0] + groups).tolist()
        prompts = len(self.region_embeds) + 1
        for g, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
            bias[a:b, :text] = float("-inf")
            bias[a:b, a:b] = 0.0
            if g < prompts:
                column = log_w[g]
            else:
                ref = self.references[g - prompts]
                column = log_w[ref.region + 1] if ref.region is not None else torch.zeros(height * width)
                scale = scales[g - prompts]
                bias[text:, a:b] = (column + (math.log(scale) if scale > 0 else float("-inf")))[:, None]
                bias[a:b, text:] = column[None]
                continue
            bias[a:b, text:] = column[None]
            bias[text:, a:b] = column[:, None]
        return bias


def torch_cat(tensors: Sequence[Any]) -> Any:
    import torch

    return torch.cat(list(tensors), dim=1)


class JobGuides:
    """One job's references and regions, decoded and encoded once per job, cut to each call
    (worker thread). ``payloads``: the job's images by id; ``choose`` (reference, field) → the
    :class:`~backend.references.Adapter` it uses; ``load`` (adapter, model) → its
    :class:`~backend.references.LoadedAdapter`; ``original``: outpaint's image size (a region mask of
    its aspect is placed over it)."""

    def __init__(self, params: ResolvedParams, payloads: Mapping[str, ImagePayload], choose: Callable[..., Any],
                 load: Callable[..., Any], original: tuple[int, int] | None = None) -> None:
        self.params = params
        self.payloads = payloads
        self.choose = choose
        self.load = load
        self.original = original
        self._masks: list[np.ndarray] | None = None
        self._tokens: dict[tuple, tuple[Any, Any, Any]] = {}

    def masks(self) -> list[np.ndarray]:
        """The regions' masks as uint8 (H, W) at the result's size."""
        if self._masks is None:
            p = self.params
            out = []
            for region in p.regions:
                mask = decode_mask(self.payloads[region.mask])
                if p.margins is not None and self.original is not None and \
                        not same_aspect((mask.shape[1], mask.shape[0]), (p.width, p.height)):
                    mask = place_control(np.repeat(mask[..., None], 3, axis=2), self.original, p.margins)[..., 0]
                out.append(resize(mask, (p.width, p.height)))
            self._masks = out
        return self._masks

    def call(self, model: Any, pipe: Any, work: tuple[int, int], box: Box | None, images: int,
             encode: Callable[[str], Any], max_rows: int | None = None) -> Guidance:
        """The :class:`Guidance` of one pipeline call generating ``images`` per prompt at ``work``
        (the model's working size) from ``box`` of the result (None: all of it). ``encode``: a
        region's prompt → its :class:`~backend.prompts.Conditioning` (``prompt_embeds`` (1, L, D),
        SDXL's ``pooled_prompt_embeds``). ``max_rows``: the most rows one UNet call may run."""
        masks = []
        for mask in self.masks():
            if box is not None:
                x0, y0, x1, y1 = box
                mask = mask[y0:y1, x0:x1]
            masks.append(resize(np.ascontiguousarray(mask), work))
        references = []
        for field_name, region, ref in self._all_references():
            adapter = self.choose(ref, field_name)
            tokens, uncond, layers = self._encoded(model, adapter, ref)
            references.append(RefTokens(tokens, uncond, ref.weight, ref.start, ref.end, layers, region))
        encoded = [encode(region.prompt) for region in self.params.regions]
        return Guidance(pipe, model.owner.denoiser, region_weights(masks, work), [e.prompt_embeds for e in encoded],
                        references, images, mode=self.params.region_mode or REGION_MODES[0],
                        region_pooled=[e.pooled_prompt_embeds for e in encoded], max_rows=max_rows)

    def _all_references(self) -> list[tuple[str, int | None, Any]]:
        out: list[tuple[str, int | None, Any]] = [("references", None, ref) for ref in self.params.references]
        for index, region in enumerate(self.params.regions):
            out += [("regions", index, ref) for ref in region.references]
        return out

    def _encoded(self, model: Any, adapter: Any, ref: Any) -> tuple[Any, Any, Any]:
        key = (adapter.id, str(adapter.path), ref.image, model.spec.id)
        if key not in self._tokens:
            loaded = self.load(adapter, model)
            tokens, uncond = loaded.tokens(over_white(decode_image(self.payloads[ref.image])))
            self._tokens[key] = (tokens, uncond, loaded.layers)
        return self._tokens[key]
