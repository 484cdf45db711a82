"""The UNet attention processors of one call's references and regions (:mod:`backend.guides`).

:class:`backend.guides.Guidance` wraps every cross-attention layer's processor in a
:class:`RegionalCrossAttention` (regional prompts mixed by the region weights, IP-Adapter attention
added) and, with regions, every self-attention layer's in a :class:`RegionalSelfAttention` (the
self-attention bias); the scheme and its measurements are in :mod:`backend.guides`' docstring.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .guides import Guidance, RefTokens


class UNetState:
    """What the wrapped cross-attention processors of one call read: the guidance and the scales
    of the current step."""

    def __init__(self, guidance: Guidance) -> None:
        self.guidance = guidance

    def scales(self) -> list[float]:
        g = self.guidance
        total = g._total()
        return [r.scale(g.step, total) for r in g.references]


class RegionalCrossAttention:
    """A UNet cross-attention processor wrapped for regions and IP-Adapter references (see
    :mod:`backend.guides`). ``inner`` is the processor it wraps; ``index`` the layer's place among the
    UNet's cross-attention layers (the IP-Adapter's key/value layers are in that order)."""

    def __init__(self, inner: Any, state: UNetState, index: int) -> None:
        self.inner = inner
        self.state = state
        self.index = index

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        guidance = self.state.guidance
        if hidden_states.ndim != 3:
            return out
        scales = self.state.scales()
        if guidance.layout is not None:
            return self._separate(attn, hidden_states, out, scales, guidance.layout)
        if not guidance.region_embeds and not any(scales):
            return out
        batch, tokens = hidden_states.shape[:2]
        images = guidance.images
        cond = slice(batch - images, batch)  # with CFG the negative prompt's half comes first
        weights = guidance.level(tokens, out)
        if guidance.region_embeds:
            mixed = out[cond] * weights[0]
            for number, embeds in enumerate(guidance.region_embeds, 1):
                embeds = embeds.to(out.device, out.dtype).expand(images, -1, -1)
                part = self.inner(attn, hidden_states[cond], embeds, None, temb, *args, **kwargs)
                mixed = mixed + part * weights[number]
            out = out.clone()
            out[cond] = mixed
        for ref, scale in zip(guidance.references, scales):
            if scale == 0:
                continue
            added = _ip_attention(attn, hidden_states, ref, self.index, batch - images)
            if ref.region is not None:
                added = added * weights[ref.region + 1]
            out = out + scale * added
        return out

    def _separate(self, attn: Any, hidden_states: Any, out: Any, scales: Sequence[float], layout: Any) -> Any:
        """A row of a widened "separate" call already attended to its own prompt; the references add
        to it: the job's in every row, a region's only in its region's rows, at full weight (the blend
        places them). Not in the negative prompt's rows: that pass covers the whole picture, and
        classifier-free guidance would carry a change there (×(1 − cfg_scale)) across every border
        (measured on the tiny UNet with a ControlNet, 128²: 61 % of the change inside the region with it
        there, 77 % without)."""
        import torch

        guidance = self.state.guidance
        for ref, scale in zip(guidance.references, scales):
            if scale == 0:
                continue
            added = _ip_attention(attn, hidden_states, ref, self.index, layout.uncond)
            if ref.region is not None:
                rows = [0.0] * layout.uncond + [float(p == ref.region + 1) for p in layout.prompts
                                                for _ in range(layout.images)]
                added = added * torch.tensor(rows, dtype=out.dtype, device=out.device)[:, None, None]
            out = out + scale * added
        return out


class RegionalSelfAttention:
    """A UNet self-attention processor wrapped for regions: it passes the inner processor (diffusers'
    own: its masks are additive, one per image and head) :meth:`Guidance.self_bias` as the
    attention mask, one (tokens, tokens) tensor viewed for every image and head, not copied. A layer
    given a mask of its own, or attending to something other than its input, runs unchanged."""

    def __init__(self, inner: Any, guidance: Guidance) -> None:
        self.inner = inner
        self.guidance = guidance

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        if hidden_states.ndim == 3 and encoder_hidden_states is None and attention_mask is None:
            batch, tokens = hidden_states.shape[:2]
            bias = self.guidance.self_bias(tokens, hidden_states)
            if bias is not None:
                attention_mask = bias.expand(batch * attn.heads, tokens, tokens)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def _ip_attention(attn: Any, hidden_states: Any, ref: RefTokens, index: int, negative: int) -> Any:
    """attention(query, the reference's image tokens), through the layer's output projection
    (without its bias, which the text attention's output already carries); the first ``negative``
    rows of the batch attend to the reference's negative-pass tokens."""
    import torch
    import torch.nn.functional as F

    to_k, to_v = ref.layers[index]
    dtype = hidden_states.dtype
    batch = hidden_states.shape[0]
    tokens = ref.tokens.to(hidden_states.device, dtype).expand(batch - negative, -1, -1)
    if negative:
        uncond = ref.uncond.to(hidden_states.device, dtype).expand(negative, -1, -1)
        tokens = torch.cat([uncond, tokens])
    query = attn.to_q(hidden_states)
    key, value = to_k(tokens), to_v(tokens)
    heads = attn.heads
    head_dim = query.shape[-1] // heads
    query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
    found = F.scaled_dot_product_attention(query, key, value)
    found = found.transpose(1, 2).reshape(batch, -1, heads * head_dim)
    return F.linear(found, attn.to_out[0].weight)
