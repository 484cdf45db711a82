"""Reference-image adapters: IP-Adapter (SD 1.x, SD 2.x, SDXL UNets) and Flux.1 Redux, found in the
models folders, listed as ``ModelInfo`` kind ``reference``, loaded on the worker and turned into the
image tokens :mod:`backend.guides` feeds the denoiser.

Finding them (headers and JSON only, like ControlNets; ``.safetensors`` only: :mod:`backend.catalog`
never opens a pickle):

* an **IP-Adapter** is one ``.safetensors`` file with ``image_proj.*`` and ``ip_adapter.N.to_k_ip/to_v_ip``
  tensors (h94's and ComfyUI's layout). Its variant comes from the image projection's tensors:
  ``ip_adapter`` (a linear projection of the CLIP image embedding), ``ip_adapter_plus`` (a resampler
  over the encoder's hidden states; ``face`` in the file name: a plus-face model) or
  ``ip_adapter_face`` (full-face: an MLP over the hidden states). FaceID adapters (LoRA tensors,
  insightface) are not served.
* a **Redux** model is one file with ``redux_up``/``redux_down`` (BFL's ``flux1-redux-dev``, ComfyUI's
  ``style_models/``); it maps SigLIP image features to 729 extra T5-wide tokens.
* the **image encoder** each needs is looked for beside it: an ``image_encoder/`` folder (transformers
  ``config.json`` + weights) in the adapter's folder or the one above (h94's layout), then every
  image encoder the scan met (``clip_vision/`` files or folders). The first one whose width fits the
  adapter's input (CLIP's projection for ``ip_adapter``, CLIP's hidden width for plus and face,
  SigLIP's hidden width for Redux) is used. Single encoder files get their transformers config from
  their header (ViT-L, ViT-H, ViT-bigG, SigLIP so400m). An adapter without a fitting encoder is not
  listed (the log says why).

The adapter's text width (``to_k_ip``'s input, ``redux_down``'s output) must be the model's
(``ModelFacts.context_dim``): a job pairing them otherwise fails with ``model_mismatch``.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from protocol.errors import ErrorCode
from protocol.messages import ModelInfo

from .construction import exclusive
from .errors import JobError
from .models import ModelFacts, safetensors_header

log = logging.getLogger(__name__)

#: Families that take reference images, and the kind of adapter each takes.
ADAPTER_OF_FAMILY = {"sd15": "ipadapter", "sd2": "ipadapter", "sdxl": "ipadapter", "demo": "ipadapter",
                     "flux": "redux"}
WHO_TAKES = "SD 1.x, SD 2.x and SDXL models (IP-Adapter) and Flux.1 models (Redux) do"
#: Loaded adapters kept (with their encoders).
ADAPTER_CACHE = 2
#: transformers settings of the released image encoders, by hidden width, for single encoder files.
_CLIP_KNOWN = {1024: dict(num_attention_heads=16, hidden_act="quick_gelu"),
               1280: dict(num_attention_heads=16, hidden_act="gelu"),
               1664: dict(num_attention_heads=16, hidden_act="gelu")}
_SIGLIP_KNOWN = {1152: dict(num_attention_heads=16, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)}
_VISION_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}


@dataclass(frozen=True)
class EncoderFacts:
    """An image encoder: ``kind`` ``clip`` or ``siglip``, its hidden and projection widths, image side."""

    path: Path
    kind: str
    hidden: int
    projection: int
    image_size: int


@dataclass(frozen=True)
class Adapter:
    """A served reference adapter: ``variant`` ``ip_adapter``, ``ip_adapter_plus``, ``ip_adapter_face``
    or ``redux``; ``context_dim`` the text width it feeds; ``input_width`` what it reads from the encoder."""

    id: str
    path: Path
    variant: str
    family: str
    context_dim: int
    encoder: EncoderFacts
    demo: bool = False

    @property
    def kind(self) -> str:
        return "redux" if self.variant == "redux" else "ipadapter"

    def info(self) -> ModelInfo:
        label = {"ip_adapter": "IP-Adapter", "ip_adapter_plus": "IP-Adapter plus",
                 "ip_adapter_face": "IP-Adapter face", "redux": "Redux"}[self.variant]
        return ModelInfo(id=self.id, name=f"{self.path.stem} ({label})", kind="reference", family=self.family,
                         control_type=self.variant, demo=self.demo)


# --------------------------------------------------------------------------- finding


def vision_folder_detail(folder: Path) -> str:
    """"CLIP vision"/"SigLIP" when ``folder`` holds a transformers image encoder, else ""."""
    facts = _folder_encoder(folder)
    return "" if facts is None else ("CLIP vision" if facts.kind == "clip" else "SigLIP")


def _folder_encoder(folder: Path) -> EncoderFacts | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    kind = _VISION_TYPES.get(config.get("model_type", ""))
    if kind is None or not any((folder / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
        return None
    return EncoderFacts(folder, kind, int(config.get("hidden_size", 0)), int(config.get("projection_dim", 0) or 0),
                        int(config.get("image_size", 224)))


def _file_encoder(path: Path) -> EncoderFacts | None:
    """Facts of a single-file encoder (transformers tensor names), when its width is a released one."""
    try:
        header = safetensors_header(path)
    except (OSError, ValueError):
        return None
    post = _shape(header, "vision_model.post_layernorm.weight")
    patch = _shape(header, "vision_model.embeddings.patch_embedding.weight")
    positions = _shape(header, "vision_model.embeddings.position_embedding.weight")
    if not post or len(patch) != 4 or not positions:
        return None
    siglip = any(k.startswith("vision_model.head.") for k in header)
    known = _SIGLIP_KNOWN if siglip else _CLIP_KNOWN
    if post[0] not in known:
        return None
    grid = round((positions[0] - (0 if siglip else 1)) ** 0.5)
    projection = _shape(header, "visual_projection.weight")
    return EncoderFacts(path, "siglip" if siglip else "clip", post[0], projection[0] if projection else 0,
                        grid * patch[2])


def _shape(header: Mapping[str, Any], key: str) -> list[int]:
    entry = header.get(key)
    return list(entry.get("shape", ())) if isinstance(entry, dict) else []


def adapter_needs(header: Mapping[str, Any], name: str) -> tuple[str, int, str, int] | str:
    """(variant, context_dim, encoder kind, encoder width it reads: ``projection`` for a plain
    IP-Adapter, else hidden) of an adapter file's header, or a reason it cannot be served."""
    keys = [k for k in header if k != "__metadata__"]
    if any("lora" in k for k in keys):
        return "a FaceID adapter (it needs insightface face embeddings, which Easel does not compute)"
    if "redux_up.weight" in header:
        up, down = _shape(header, "redux_up.weight"), _shape(header, "redux_down.weight")
        return ("redux", down[0], "siglip", up[1]) if up and down else "a Redux file without its weights' shapes"
    widths = {_shape(header, k)[1] for k in keys if k.endswith("to_k_ip.weight") and len(_shape(header, k)) == 2}
    if len(widths) != 1:
        return "its IP-Adapter layers do not agree on one text width"
    context = widths.pop()
    if "image_proj.latents" in header:
        proj_in = _shape(header, "image_proj.proj_in.weight")
        variant = "ip_adapter_face" if "face" in name.lower() else "ip_adapter_plus"
        return (variant, context, "clip", proj_in[1]) if proj_in else "a resampler without proj_in"
    if "image_proj.proj.3.weight" in header:  # full-face: an MLP over the hidden states
        return "ip_adapter_face", context, "clip", _shape(header, "image_proj.proj.0.weight")[1]
    proj = _shape(header, "image_proj.proj.weight")
    if proj and "image_proj.norm.weight" in header:
        return "ip_adapter", context, "clip", proj[1]
    return "an image projection of a kind Easel does not know"


def _fits(encoder: EncoderFacts, kind: str, width: int, variant: str) -> bool:
    if encoder.kind != kind:
        return False
    return (encoder.projection if variant == "ip_adapter" else encoder.hidden) == width


def find_adapters(found: Iterable[Any], families: Mapping[int, str]) -> tuple[list[Adapter], list[tuple[Path, str]]]:
    """The served adapters among a scan's ``found`` files (``backend.catalog.Found``), each paired
    with its encoder, and (path, reason) for the ones that cannot be served. ``families`` maps a text
    width to the family of the served models with it (a tiny model's 32 included)."""
    found = list(found)
    encoders: list[EncoderFacts] = []
    for item in found:
        if item.kind == "clip_vision":
            facts = _folder_encoder(item.path) if item.path.is_dir() else _file_encoder(item.path)
            if facts is not None:
                encoders.append(facts)
    adapters, skipped = [], []
    for item in found:
        if item.kind not in ("ipadapter", "redux") or not item.served:
            continue
        try:
            needs = adapter_needs(safetensors_header(item.path), item.path.name)
        except (OSError, ValueError) as exc:
            skipped.append((item.path, f"its header cannot be read ({exc})"))
            continue
        if isinstance(needs, str):
            skipped.append((item.path, needs))
            continue
        variant, context, kind, width = needs
        beside = [f for f in (_folder_encoder(d / "image_encoder") for d in (item.path.parent, item.path.parent.parent))
                  if f is not None]
        encoder = next((e for e in (*beside, *encoders) if _fits(e, kind, width, variant)), None)
        if encoder is None:
            what = "SigLIP image encoder" if kind == "siglip" else "CLIP vision image encoder"
            skipped.append((item.path, f"no {what} {width} wide was found beside it (an image_encoder/ folder next "
                                       f"to it, or a file in clip_vision/)"))
            continue
        family = "flux" if variant == "redux" else families.get(context) or item.family or ""
        adapters.append(Adapter(item.id, item.path, variant, family, context, encoder))
    return adapters, skipped


# --------------------------------------------------------------------------- checking a job


class ReferenceAdapters:
    """The adapters of the engine's models folders (:meth:`refresh` after each scan), their checks
    for a job, and the loaded ones (worker thread)."""

    def __init__(self, demo: Sequence[Adapter] = (), build_demo: Callable[[Adapter], None] | None = None) -> None:
        """``demo``: the demo's adapters, listed before they are built; ``build_demo`` builds one
        (once, on its first load)."""
        self._demo = {a.id: a for a in demo}
        self._build_demo = build_demo
        self._adapters: dict[str, Adapter] = dict(self._demo)
        self._reported: set[tuple[str, str]] = set()
        self._loaded: OrderedDict[str, LoadedAdapter] = OrderedDict()
        self._lock = threading.Lock()

    def refresh(self, found: Iterable[Any], families: Mapping[int, str]) -> None:
        adapters, skipped = find_adapters(found, families)
        for path, reason in skipped:
            if (str(path), reason) not in self._reported:
                self._reported.add((str(path), reason))
                log.warning("reference model %s is not served: %s", path, reason)
        self._adapters = {**self._demo, **{a.id: a for a in adapters if a.id not in self._demo}}

    def infos(self) -> list[ModelInfo]:
        return [adapter.info() for adapter in self._adapters.values()]

    def ids(self) -> list[str]:
        return list(self._adapters)

    def get(self, adapter_id: str) -> Adapter | None:
        return self._adapters.get(adapter_id)

    def choose(self, adapter_id: str, model_id: str, facts: ModelFacts, label: str, field: str) -> Adapter:
        """The adapter a reference names ("" : the first that fits the model) for ``model_id``.
        Raises JobError: ``unsupported`` (the family takes none), ``unknown_model``, ``model_mismatch``."""
        kind = ADAPTER_OF_FAMILY.get(facts.family)
        if kind is None:
            raise JobError(ErrorCode.UNSUPPORTED, f"model {model_id!r} ({label}) takes no reference images; "
                                                  f"{WHO_TAKES}", {"field": field})
        if not adapter_id:
            fitting = [a for a in self._adapters.values() if a.kind == kind and a.context_dim == facts.context_dim]
            if not fitting:
                what = "a Redux model (style_models/)" if kind == "redux" else "an IP-Adapter (ipadapter/)"
                raise JobError(ErrorCode.UNKNOWN_MODEL, f"no reference model here fits {model_id!r} ({label}); put "
                                                        f"{what} with its image encoder into a models folder",
                               {"field": field})
            return fitting[0]
        adapter = self._adapters.get(adapter_id)
        if adapter is None:
            have = ", ".join(self._adapters) or "none"
            raise JobError(ErrorCode.UNKNOWN_MODEL, f"unknown reference model {adapter_id!r}; this server has: {have}",
                           {"field": field})
        if adapter.kind != kind or adapter.context_dim != facts.context_dim:
            raise JobError(ErrorCode.MODEL_MISMATCH,
                           f"reference model {adapter_id!r} is for {adapter.family or 'another family'} "
                           f"({adapter.context_dim}-wide text features) but model {model_id!r} is {label}; pick a "
                           f"reference model for {facts.family}", {"field": field})
        return adapter

    # ------------------------------------------------------------------ loading (worker thread)

    def load(self, adapter: Adapter, unet: Any, device: str, dtype: Any) -> "LoadedAdapter":
        """``adapter`` loaded on ``device`` (cached; a changed file loads again). ``unet``: the model's
        UNet for IP-Adapters (its attention layers pair with the adapter's), None for Redux."""
        with self._lock:
            if adapter.id in self._demo and self._build_demo is not None:
                self._build_demo(adapter)  # once: a no-op when built
            key = f"{adapter.id}:{adapter.path}:{_mtime(adapter.path)}:{device}:{dtype}:{id(unet)}"
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            while len(self._loaded) >= ADAPTER_CACHE:
                self._loaded.popitem(last=False)
            loaded = LoadedAdapter(adapter, unet, device, dtype)
            self._loaded[key] = loaded
            return loaded


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


class LoadedAdapter:
    """An adapter's modules on the device: the image encoder and its preprocessing, and either an
    IP-Adapter's image projection and per-cross-attention key/value layers (``layers``, in the
    UNet's cross-attention order) or Redux's embedder."""

    @exclusive  # builds modules: no other thread's load may patch torch meanwhile (backend.construction)
    def __init__(self, adapter: Adapter, unet: Any, device: str, dtype: Any) -> None:
        from safetensors.torch import load_file

        self.adapter = adapter
        self.device, self.dtype = device, dtype
        state = load_file(str(adapter.path))
        self.encoder, self.processor = _load_encoder(adapter.encoder, device, dtype)
        self.layers: list[tuple[Any, Any]] = []
        if adapter.variant == "redux":
            from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder

            up = state["redux_up.weight"]
            embedder = ReduxImageEncoder(redux_dim=up.shape[1], txt_in_features=state["redux_down.weight"].shape[0])
            embedder.load_state_dict(state)
            self.projection = embedder.to(device, dtype).eval()
            return
        proj = {k[len("image_proj."):]: v for k, v in state.items() if k.startswith("image_proj.")}
        self.projection = unet._convert_ip_adapter_image_proj_to_diffusers(proj, low_cpu_mem_usage=False)
        self.projection = self.projection.to(device, dtype).eval()
        ids = sorted({int(m.group(1)) for k in state if (m := re.match(r"ip_adapter\.(\d+)\.to_k_ip\.weight$", k))})
        cross = [name for name in unet.attn_processors if not name.endswith("attn1.processor")]
        if len(ids) != len(cross):
            raise JobError(ErrorCode.MODEL_MISMATCH,
                           f"reference model {adapter.id!r} has {len(ids)} attention layers but the model's UNet has "
                           f"{len(cross)}; pick an IP-Adapter made for this model's family", {"field": "references"})
        import torch

        for index in ids:
            pair = []
            for which in ("to_k_ip", "to_v_ip"):
                weight = state[f"ip_adapter.{index}.{which}.weight"]
                layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
                layer.weight.data.copy_(weight)
                pair.append(layer.to(device, dtype).eval())
            self.layers.append(tuple(pair))
        self.cross_names = cross

    def tokens(self, rgb: Any) -> tuple[Any, Any | None]:
        """(tokens, unconditional tokens) for one RGB uint8 image: ``(1, T, D)`` tensors; Redux
        has no unconditional tokens (no negative pass in Flux's distilled guidance)."""
        import torch

        pixels = self.processor(images=rgb, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        with torch.no_grad():
            if self.adapter.variant == "redux":
                features = self.encoder(pixels).last_hidden_state
                return self.projection(features).image_embeds, None
            if self.adapter.variant == "ip_adapter":
                embeds = self.encoder(pixels).image_embeds
                return self.projection(embeds), self.projection(torch.zeros_like(embeds))
            hidden = self.encoder(pixels, output_hidden_states=True).hidden_states[-2]
            empty = self.encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
            return self.projection(hidden), self.projection(empty)


def _load_encoder(facts: EncoderFacts, device: str, dtype: Any) -> tuple[Any, Any]:
    """The image encoder (safetensors only) and its image processor."""
    from transformers import (
        CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection, SiglipImageProcessor, SiglipVisionConfig,
        SiglipVisionModel,
    )

    side = facts.image_size
    if facts.kind == "siglip":
        cls, processor = SiglipVisionModel, SiglipImageProcessor(size={"height": side, "width": side})
    else:
        cls = CLIPVisionModelWithProjection
        processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    if facts.path.is_dir():
        model = cls.from_pretrained(str(facts.path), use_safetensors=True, local_files_only=True)
    else:
        from safetensors.torch import load_file

        model = cls(_config_from_file(facts, SiglipVisionConfig if facts.kind == "siglip" else CLIPVisionConfig))
        state = load_file(str(facts.path))
        missing, _ = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing:
            raise JobError(ErrorCode.MODEL_UNAVAILABLE, f"the image encoder {facts.path.name} lacks {len(missing)} "
                                                        f"tensors (e.g. {missing[0]}); use a complete copy",
                           {"field": "references"})
    return model.to(device, dtype).eval(), processor


def _config_from_file(facts: EncoderFacts, config_cls: Any) -> Any:
    header = safetensors_header(facts.path)
    layers = len({k.split(".")[3] for k in header if k.startswith("vision_model.encoder.layers.")})
    patch = _shape(header, "vision_model.embeddings.patch_embedding.weight")[2]
    intermediate = _shape(header, "vision_model.encoder.layers.0.mlp.fc1.weight")[0]
    known = (_SIGLIP_KNOWN if facts.kind == "siglip" else _CLIP_KNOWN)[facts.hidden]
    extra = {} if facts.kind == "siglip" else {"projection_dim": facts.projection}
    return config_cls(hidden_size=facts.hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      patch_size=patch, image_size=facts.image_size, **known, **extra)

