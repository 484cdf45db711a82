"""The memory plan: before a job starts, its peak device memory is estimated from the model's facts
and the job's size, batch and ControlNets; the plan picks the measures that make it fit the device's
budget, and a job that cannot fit even with every measure is refused before any work.

    footprint = footprint_of_loaded(model) or footprint_of_folder(folder, family, dtype_bytes)
    plan = make_plan(footprint, params, budget, device, nets=[...])   # MemoryPlan, or raises JobError
    apply_plan(pipe, plan)                                            # on the worker thread

The estimate (bytes) is ``weights + max(denoise, text, decode)``:

* ``weights``: every component's parameters and buffers at the run dtype (numel × element size),
  counted from the loaded modules or, before a model loads, from its safetensors headers;
* ``denoise``: the denoiser's activations for ``passes`` = batch × 2 (classifier-free guidance
  runs the negative prompt in the same forward) or × 1 (distilled guidance, or CFG ≤ 1):
  ``DENOISE_FACTOR`` × width × tokens × element size per pass, where width is the UNet's first block
  channels (tokens: latent pixels) or the transformer's inner width (tokens: packed latent patches
  plus text tokens); plus each ControlNet's half of that;
* ``text``: the prompt encoding, 4 × heads × tokens² × element size for the largest text encoder
  (its attention scores, T5's position bias and the softmax; 512 T5 tokens for Flux, 256 for SD 3.5,
  CLIP's 77);
* ``decode``: the VAE decoder at full resolution, ``DECODE_FACTOR`` × its first block's channels ×
  pixels × element size per image decoded at once.

Measures, cheapest first, each kept only when it lowers the estimate:

* ``vae_slicing`` — decode one image of the batch at a time (diffusers' ``enable_vae_slicing``);
* ``vae_tiling`` — decode in tiles of the VAE's own sample size (``enable_vae_tiling``);
* ``attention_slicing`` — attention one head slice at a time (``enable_attention_slicing``); it
  lowers memory only where attention materialises its score matrix (the classic processor), so it
  is picked only for a denoiser not running PyTorch's fused scaled-dot-product attention;
* ``model_offload`` / ``sequential_offload`` (CUDA only; on the CPU the weights stay in the same
  memory) — one component / one layer on the device at a time (``enable_model_cpu_offload``,
  ``enable_sequential_cpu_offload``).

The budget: on CUDA the free device memory plus what this process's allocator already holds
(``torch.cuda.mem_get_info``); elsewhere ``device_memory`` (``--device-memory``), by default the
memory this machine had available when the engine started.
"""
from __future__ import annotations

import json
import os
import struct
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from protocol.errors import ErrorCode

from .errors import JobError
from .models.facts import safetensors_header

#: Activation bytes per (width × token × element) of one denoiser pass; see the module docstring.
DENOISE_FACTOR = 64
#: Activation bytes per (channel × pixel × element) of one VAE decode at full resolution.
DECODE_FACTOR = 4
#: The measures in the order the plan tries them.
MEASURES = ("vae_slicing", "vae_tiling", "attention_slicing", "model_offload", "sequential_offload")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I8": 1,
                "U8": 1, "BOOL": 1}
_TEXT_TOKENS = {"flux": 512, "sd3": 333, "flux2": 512, "zimage": 512}  # text tokens of the transformer families


@dataclass(frozen=True)
class Footprint:
    """What the estimate needs to know of a model (see the module docstring).

    ``weights``: component → bytes at the run dtype. ``width``: the UNet's first block channels or
    the transformer's inner width. ``patch``: latent pixels per token side (1 for a UNet).
    ``vae_width``: the widest channels the VAE decoder holds at full resolution (its second level's,
    upsampled before the last block). ``tile``: the VAE's tile side
    in pixels. ``scale``: image pixels per latent pixel. ``fused_attention``: attention runs as
    PyTorch's scaled-dot-product attention (no score matrix kept)."""

    weights: Mapping[str, int]
    element: int
    width: int
    heads: int
    vae_width: int
    tile: int
    scale: int = 8
    patch: int = 1
    text_tokens: int = 0
    fused_attention: bool = True
    #: Bytes the prompt encoding holds at its peak: the text encoders' attention scores (T5 and CLIP
    #: keep heads × tokens² of them, with T5's position bias and the softmax beside).
    text: int = 0

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights.values())


@dataclass(frozen=True)
class MemoryPlan:
    """The plan of one job: the estimated peak (bytes) with ``measures`` applied, the budget it fits."""

    estimate: int
    budget: int
    measures: tuple[str, ...] = ()
    #: The estimate without any measure.
    unplanned: int = 0
    parts: Mapping[str, int] = field(default_factory=dict)
    #: Denoiser rows of one call the estimate counts: the batch, twice with classifier-free guidance.
    passes: int = 0

    def rows_fitting(self) -> int | None:
        """The most denoiser rows one call may run within the budget, at least :attr:`passes`: regions
        kept apart (``region_mode`` "separate") widen the call by a row set per region prompt, and
        run in more calls than one where the widened call would not fit. None: no estimate."""
        denoise = self.parts.get("denoise", 0)
        if self.passes <= 0 or denoise <= 0:
            return None
        room = self.budget - self.parts.get("weights", 0)  # the denoiser's activations grow with its rows
        return max(self.passes, self.passes * room // denoise)


def estimate(fp: Footprint, width: int, height: int, batch: int, cfg: bool, nets: int = 0,
             control_weights: int = 0, measures: tuple[str, ...] = ()) -> dict[str, int]:
    """The estimate's parts in bytes: ``weights``, ``denoise``, ``decode`` and ``peak``."""
    e = fp.element
    passes = batch * (2 if cfg else 1)
    latent_tokens = (height // fp.scale // fp.patch) * (width // fp.scale // fp.patch)
    tokens = latent_tokens + fp.text_tokens
    denoise = DENOISE_FACTOR * fp.width * tokens * e * passes
    denoise += nets * denoise // 2
    if not fp.fused_attention:  # the classic processor keeps heads × tokens² scores per pass
        scores = tokens * tokens * e * passes * (1 if "attention_slicing" in measures else fp.heads)
        denoise += scores
    images = 1 if "vae_slicing" in measures else batch
    pixels = min(width * height, fp.tile * fp.tile) if "vae_tiling" in measures else width * height
    decode = DECODE_FACTOR * fp.vae_width * pixels * e * images + 4 * 3 * width * height * batch  # + float results
    weights = fp.weight_bytes + control_weights
    if "sequential_offload" in measures:
        resident = 0  # one layer at a time: small beside the activations
    elif "model_offload" in measures:
        resident = max(max(fp.weights.values(), default=0), control_weights)
    else:
        resident = weights
    return {"weights": resident, "denoise": denoise, "decode": decode, "text": fp.text,
            "peak": resident + max(denoise, decode, fp.text)}


def make_plan(fp: Footprint, params: Any, budget: int, device: str, nets: int = 0, control_weights: int = 0,
              cfg: bool = True) -> MemoryPlan:
    """The cheapest set of measures whose estimate fits ``budget``; raises JobError(out_of_memory)
    naming the largest size of the job's aspect that would fit with every measure when none does."""
    width, height, batch = int(params.width), int(params.height), int(params.batch_size)
    available = [m for m in MEASURES if device.startswith("cuda") or "offload" not in m]
    if fp.fused_attention:
        available.remove("attention_slicing")
    if batch == 1:
        available.remove("vae_slicing")
    base = estimate(fp, width, height, batch, cfg, nets, control_weights)
    passes = batch * (2 if cfg else 1)
    chosen: tuple[str, ...] = ()
    parts = base
    for measure in available:
        if parts["peak"] <= budget:
            break
        trial = estimate(fp, width, height, batch, cfg, nets, control_weights, chosen + (measure,))
        if trial["peak"] < parts["peak"]:
            chosen, parts = chosen + (measure,), trial
    if parts["peak"] <= budget:
        return MemoryPlan(parts["peak"], budget, chosen, base["peak"], parts, passes)
    raise JobError(ErrorCode.OUT_OF_MEMORY, _refusal(fp, width, height, batch, cfg, nets, control_weights, budget,
                                                     tuple(available), parts["peak"]),
                   {"estimate": parts["peak"], "budget": budget, **_fitting(fp, width, height, batch, cfg, nets,
                                                                             control_weights, budget, tuple(available))})


def _fitting(fp: Footprint, width: int, height: int, batch: int, cfg: bool, nets: int, control_weights: int,
             budget: int, measures: tuple[str, ...]) -> dict[str, int]:
    """The largest size of the job's aspect (sides multiples of 64, at least 64) that fits with
    ``measures``: {"fits_width", "fits_height"}, or {} when not even 64 px does."""
    step = 64
    best: dict[str, int] = {}
    k = 1
    while True:
        w = max(step, int(width * k * step / min(width, height)) // step * step)
        h = max(step, int(height * k * step / min(width, height)) // step * step)
        if w > width or h > height:
            return best
        if estimate(fp, w, h, batch, cfg, nets, control_weights, measures)["peak"] > budget:
            return best
        best = {"fits_width": w, "fits_height": h}
        k += 1


def _refusal(fp: Footprint, width: int, height: int, batch: int, cfg: bool, nets: int, control_weights: int,
             budget: int, measures: tuple[str, ...], peak: int) -> str:
    fits = _fitting(fp, width, height, batch, cfg, nets, control_weights, budget, measures)
    using = f" even with {', '.join(m.replace('_', ' ') for m in measures)}" if measures else ""
    head = (f"this job needs about {_mib(peak)} MiB of device memory{using}, more than the {_mib(budget)} MiB "
            f"this server has for it")
    if fits:
        return f"{head}; {fits['fits_width']}x{fits['fits_height']} would fit" + (
            f" (or a smaller batch)" if batch > 1 else "")
    if batch > 1 and estimate(fp, min(width, 512), min(height, 512), 1, cfg, nets, control_weights, measures)["peak"] <= budget:
        return f"{head}; a batch of 1 at a smaller size would fit"
    return f"{head}; no size fits: the model's weights alone take {_mib(fp.weight_bytes + control_weights)} MiB " \
           f"(start the server with a larger --device-memory, or on a device with more memory)"


def _mib(n: int) -> int:
    return max(1, round(n / 2**20))


#: Denoisers whose attention :func:`apply_plan` sliced (nothing else here slices attention, and diffusers
#: never does on its own): checked instead of walking the denoiser's modules for its processors, which
#: took 1.3 ms per job on a tiny UNet and grows with the model's size.
_SLICED: "weakref.WeakSet[Any]" = weakref.WeakSet()


def apply_plan(pipe: Any, plan: MemoryPlan | None, device: str) -> None:
    """Switch the plan's measures on (and the others off, the modules are shared between jobs) on ``pipe``."""
    if plan is None:
        return
    chosen = set(plan.measures)
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        (vae.enable_slicing if "vae_slicing" in chosen else vae.disable_slicing)()
        (vae.enable_tiling if "vae_tiling" in chosen else vae.disable_tiling)()
    net = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if "attention_slicing" in chosen:
        if net is not None:
            _SLICED.add(net)
        pipe.enable_attention_slicing()
    elif net is not None and net in _SLICED:  # an earlier job's plan
        pipe.disable_attention_slicing()
        _SLICED.discard(net)
    if "sequential_offload" in chosen:
        pipe.enable_sequential_cpu_offload(device=device)
    elif "model_offload" in chosen:
        pipe.enable_model_cpu_offload(device=device)


# -------------------------------------------------------------------- footprints


def footprint_of_loaded(root: Any, denoiser: str, size_multiple: int, family: str, dtype: Any) -> Footprint:
    """The footprint of a loaded root pipeline (exact weights: its modules' parameters and buffers)."""
    import torch

    weights = {}
    for name, module in root.components.items():
        if isinstance(module, torch.nn.Module):
            weights[name] = sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))
    net = getattr(root, denoiser)
    processors = getattr(net, "attn_processors", {}) or {}
    fused = all(type(p).__name__ in ("AttnProcessor2_0", "FluxAttnProcessor", "FluxAttnProcessor2_0",
                                     "JointAttnProcessor2_0") or "2_0" in type(p).__name__ or "Flux" in type(p).__name__
                for p in processors.values())
    texts = [module.config.to_dict() for name, module in root.components.items()
             if name.startswith("text_encoder") and module is not None and hasattr(module, "config")]
    return _footprint(dict(net.config), dict(root.vae.config), weights, torch.tensor([], dtype=dtype).element_size(),
                      denoiser, size_multiple, family, fused, texts)


def footprint_of_folder(folder: Path, denoiser: str, size_multiple: int, family: str, element: int) -> Footprint | None:
    """The footprint of a diffusers folder from its configs and safetensors headers (no weights read);
    None when a component's weights are not in ``.safetensors`` files there."""
    index = _json(folder / "model_index.json")
    if index is None:
        return None
    weights = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[:2] == [None, None]:
            continue
        files = sorted((folder / name).glob("*.safetensors"))
        if (folder / name / "config.json").exists() and not files:
            return None
        numel = 0
        for path in files:
            try:
                header = safetensors_header(path)
            except (OSError, ValueError, struct.error):  # broken weights: no plan; loading says what is wrong
                return None
            for key, entry in header.items():
                if key != "__metadata__" and isinstance(entry, dict):
                    count = 1
                    for side in entry.get("shape", []):
                        count *= int(side)
                    numel += count
        if numel:
            weights[name] = numel * element
    net, vae = _json(folder / denoiser / "config.json"), _json(folder / "vae" / "config.json")
    if net is None or vae is None:
        return None
    texts = [config for name in index if name.startswith("text_encoder")
             for config in [_json(folder / name / "config.json")] if config is not None]
    return _footprint(net, vae, weights, element, denoiser, size_multiple, family, True, texts)


def _footprint(net: Mapping[str, Any], vae: Mapping[str, Any], weights: dict[str, int], element: int, denoiser: str,
               size_multiple: int, family: str, fused: bool, texts: list[Mapping[str, Any]] = ()) -> Footprint:
    text = max((_text_bytes(config, family, element) for config in texts), default=0)
    vae_blocks = list(vae.get("block_out_channels") or [128])
    full = vae_blocks[1] if len(vae_blocks) > 1 else vae_blocks[0]  # upsampled to full size before its last block
    tile = int(vae.get("sample_size") or 512)
    if isinstance(tile, (list, tuple)):
        tile = int(tile[0])
    if denoiser == "unet":
        heads = net.get("num_attention_heads") or net.get("attention_head_dim") or 8
        heads = max(heads) if isinstance(heads, (list, tuple)) else int(heads)
        return Footprint(weights, element, int(list(net["block_out_channels"])[0]), heads, full, tile,
                         scale=2 ** (len(vae_blocks) - 1), text=text)
    heads = int(net.get("num_attention_heads") or net.get("n_heads") or 1)  # n_heads, dim: Z-Image's names
    width = int(net.get("dim") or heads * int(net.get("attention_head_dim") or 64))
    patch = max(int(net.get("patch_size") or 1), size_multiple // 8)
    return Footprint(weights, element, width, heads, full, tile, scale=2 ** (len(vae_blocks) - 1),
                     patch=patch, text_tokens=_TEXT_TOKENS.get(family, 256), fused_attention=fused, text=text)


def _text_bytes(config: Mapping[str, Any], family: str, element: int) -> int:
    """The prompt encoding's peak of one text encoder (see the module docstring)."""
    t5 = "num_heads" in config or "d_model" in config
    heads = int(config.get("num_heads") or config.get("num_attention_heads") or 1)
    positions = int(config.get("max_position_embeddings") or 77)  # an LLM encoder's (Qwen3) reads the family's tokens
    tokens = (512 if family == "flux" else 256) if t5 else min(positions, _TEXT_TOKENS.get(family, 77))
    return 4 * heads * tokens * tokens * element


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -------------------------------------------------------------------- budget


def available_memory() -> int:
    """Bytes this machine has available now (``MemAvailable``; the physical memory where unreadable)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def device_budget(device: str, configured: int) -> int:
    """The bytes a job may use on ``device``: CUDA's free memory plus what this process holds there
    (``configured`` when given, to test with); elsewhere ``configured``, else the available memory."""
    if configured:
        return configured
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free + torch.cuda.memory_reserved(torch.device(device)))
    return available_memory()
