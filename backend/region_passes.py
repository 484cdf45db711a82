"""Regions kept apart on a UNet: one conditional pass per prompt, blended by the region weights.

For ``region_mode`` "separate" (:mod:`backend.guides`), while :meth:`Guidance.separate_now` holds,
the UNet's forward is wrapped: the conditional half of the batch runs once with the base prompt and
once with each region's prompt, all in the call the pipeline makes (one forward with a larger batch),
and the conditional noise predictions are blended by the feathered region weights averaged down to
the latent size (base ``1 − Σ regions``); the negative prompt's half runs once, as before. The
pipeline sees a batch of the size it sent. This is Regional Prompter's "latent" mode: each
prompt's prediction is a whole picture made with only that prompt, so GroupNorm statistics and
convolutions cannot carry one region's prompt into another region within the step — the blend
places it.

Rows of the larger batch: ``[negative × U, base × B, region 1 × B, …]`` (``U`` = 0 without CFG,
else ``B``; ``B`` the images per prompt). Every tensor argument whose first dimension is the
pipeline's batch (the sample, with an inpainting UNet's mask and masked-image channels; a
ControlNet's residuals; SDXL's ``time_ids``; a per-row timestep) has its conditional rows repeated
per prompt; the text embeddings are each prompt's, and SDXL's pooled ``text_embeds`` too. Prompts
whose embeddings are longer than the base prompt's (over 75 tokens) run in a call of their own, one
per length; and no call runs more rows than the job's memory plan lets one call hold
(:meth:`backend.memory.MemoryPlan.rows_fitting`, at least the pipeline's own rows): regions that
would not fit in one call run in several. While a call runs, :attr:`Guidance.layout` tells the
wrapped attention processors which prompt each row has (a region's reference image guides its
region's rows only).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Layout:
    """The rows of one widened UNet call: ``uncond`` negative-prompt rows first, then ``images``
    rows per entry of ``prompts`` (0 = the base prompt, r = region r)."""

    uncond: int
    images: int
    prompts: tuple[int, ...]

    @property
    def batch(self) -> int:
        return self.uncond + self.images * len(self.prompts)


def wrap_forward(unet: Any, guidance: Any) -> Callable[[], None]:
    """Wrap ``unet``'s forward for ``guidance`` (a :class:`backend.guides.Guidance`); returns the undo,
    which restores the forward exactly (an accelerate offload hook's wrapper included)."""
    had = "forward" in unet.__dict__
    saved = unet.__dict__.get("forward")
    inner = unet.forward

    def forward(sample: Any, timestep: Any, encoder_hidden_states: Any = None, *args: Any, **kwargs: Any) -> Any:
        images = guidance.images
        batch = sample.shape[0]
        if args or encoder_hidden_states is None or not guidance.separate_now() or batch not in (images, 2 * images):
            return inner(sample, timestep, encoder_hidden_states, *args, **kwargs)
        return _blended(inner, guidance, sample, timestep, encoder_hidden_states, kwargs)

    unet.forward = forward

    def undo() -> None:
        if had:
            unet.forward = saved
        else:
            del unet.forward

    return undo


def _blended(inner: Callable[..., Any], guidance: Any, sample: Any, timestep: Any, text: Any,
             kwargs: dict[str, Any]) -> Any:
    import torch

    images = guidance.images
    uncond = sample.shape[0] - images
    embeds = [text[uncond:]] + [e.to(text.device, text.dtype).expand(images, -1, -1) for e in guidance.region_embeds]
    pooled = _pooled(guidance, kwargs, uncond, images)  # (negative rows, per prompt) or None
    predictions: dict[int, Any] = {}
    negative = None
    wrapper = None
    for rows, prompts in _calls(embeds, uncond, images, max(sample.shape[0], guidance.max_rows or 0) or None):
        layout = Layout(rows, images, tuple(prompts))

        def widen(value: Any) -> Any:
            return _widen(value, sample.shape[0], uncond, rows, len(prompts))

        call_kwargs = {name: widen(value) for name, value in kwargs.items()}
        if pooled is not None:
            added = dict(call_kwargs["added_cond_kwargs"])
            added["text_embeds"] = torch.cat(([pooled[0]] if rows else []) + [pooled[1][p] for p in prompts])
            call_kwargs["added_cond_kwargs"] = added
        hidden = torch.cat(([text[:uncond]] if rows else []) + [embeds[p] for p in prompts])
        guidance.layout = layout
        try:
            out = inner(widen(sample), widen(timestep), hidden, **call_kwargs)
        finally:
            guidance.layout = None
        wrapper = out
        noise = out[0] if isinstance(out, tuple) else out.sample
        if rows:
            negative = noise[:rows]
        for slot, number in enumerate(prompts):
            predictions[number] = noise[rows + slot * images: rows + (slot + 1) * images]
    weights = guidance.latent_weights(sample.shape[-2:], predictions[0])
    mixed = sum(predictions[number] * weights[number] for number in range(len(embeds)))
    result = torch.cat([negative, mixed]) if uncond else mixed
    if isinstance(wrapper, tuple):
        return (result,)
    return type(wrapper)(sample=result)


def _calls(embeds: list[Any], uncond: int, images: int, max_rows: int | None) -> list[tuple[int, list[int]]]:
    """The UNet calls of one step: (negative rows, the prompts whose rows follow) each. Prompts share a
    call when their embeddings have one length (the base prompt's call first, with the negative
    rows), and a call has at most ``max_rows`` rows (None: no limit), at least one prompt's."""
    by_length: dict[int, list[int]] = {}
    for number, one in enumerate(embeds):
        by_length.setdefault(one.shape[1], []).append(number)
    calls: list[tuple[int, list[int]]] = []
    for prompts in by_length.values():
        while prompts:
            rows = 0 if calls else uncond
            take = len(prompts) if max_rows is None else max(1, (max_rows - rows) // images)
            calls.append((rows, prompts[:take]))
            prompts = prompts[take:]
    return calls


def _pooled(guidance: Any, kwargs: dict[str, Any], uncond: int, images: int) -> tuple[Any, list[Any]] | None:
    """SDXL: the pooled text embeddings, (the negative prompt's rows, [the base prompt's rows, each
    region's own expanded to ``images`` rows]); None for a UNet that takes none."""
    added = kwargs.get("added_cond_kwargs") or {}
    base = added.get("text_embeds")
    if base is None:
        return None
    cond = base[uncond:]
    own = list(guidance.region_pooled) + [None] * len(guidance.region_embeds)  # a region without its own: the base's
    regions = [(p if p is not None else cond[:1]).to(base.device, base.dtype).expand(images, -1)
               for p in own[:len(guidance.region_embeds)]]
    return base[:uncond], [cond, *regions]


def _widen(value: Any, batch: int, uncond: int, keep: int, copies: int) -> Any:
    """``value`` for a widened call: a tensor whose first dimension is ``batch`` becomes its first
    ``keep`` (negative) rows, then its conditional rows ``copies`` times; tuples, lists and dicts
    are widened item by item; anything else is passed as it is."""
    import torch

    if isinstance(value, torch.Tensor):
        if value.ndim == 0 or value.shape[0] != batch:
            return value
        cond = value[uncond:]
        return torch.cat(([value[:keep]] if keep else []) + [cond] * copies)
    if isinstance(value, (tuple, list)):
        return type(value)(_widen(v, batch, uncond, keep, copies) for v in value)
    if isinstance(value, dict):
        return {k: _widen(v, batch, uncond, keep, copies) for k, v in value.items()}
    return value
