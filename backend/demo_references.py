"""Tiny random reference adapters, built offline for tests (like :mod:`backend.demo`'s models): an
IP-Adapter for a tiny SD-shaped model with its CLIP vision encoder beside it (h94's layout), and a
Flux.1 Redux embedder with a SigLIP encoder (ComfyUI's ``style_models/`` + ``clip_vision/``). The
files are written in the released layouts, so they load through the same code as real ones."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from .construction import exclusive
from .demo import DEMO_VERSION, ensure_demo_models
from .references import Adapter, EncoderFacts

#: The demo's reference adapters (random weights, like the demo models): an IP-Adapter for the demo
#: model (and the demo depth model) and a Redux for the demo Flux.
DEMO_IP_ADAPTER, DEMO_REDUX = "demo-ip-adapter", "demo-redux"


def demo_adapters(cache_folder: Path) -> list[Adapter]:
    """The demo adapters as they will be once built under ``cache_folder`` (:func:`build_demo_adapter`)."""
    root = Path(cache_folder) / DEMO_VERSION / "references"
    return [
        Adapter(DEMO_IP_ADAPTER, root / "ipadapter" / f"{DEMO_IP_ADAPTER}.safetensors", "ip_adapter", "demo", 32,
                EncoderFacts(root / "ipadapter" / "image_encoder", "clip", 32, 16, 32), demo=True),
        Adapter(DEMO_REDUX, root / "redux" / f"{DEMO_REDUX}.safetensors", "redux", "flux", 32,
                EncoderFacts(root / "redux" / "image_encoder", "siglip", 16, 0, 32), demo=True),
    ]


def build_demo_adapter(adapter: Adapter, cache_folder: Path) -> None:
    """Build one of :func:`demo_adapters` unless it is there: in a temporary folder renamed into
    place when complete, like the demo models."""
    folder = adapter.path.parent
    if adapter.path.is_file():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        file = tmp / "build" / adapter.path.name
        if adapter.variant == "redux":
            build_tiny_redux(file, tmp / "build" / "image_encoder")
        else:
            build_tiny_ip_adapter(ensure_demo_models(Path(cache_folder), ("base",))["base"], file)
        try:
            os.replace(tmp / "build", folder)
        except OSError:
            if not adapter.path.is_file():  # not a concurrent build that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@exclusive
def build_tiny_ip_adapter(model_folder: Path, file: Path, seed: int = 0, variant: str = "ip_adapter") -> Path:
    """An IP-Adapter for the UNet of the diffusers model at ``model_folder``, written to ``file``
    (``.safetensors``) in the released key layout, with a CLIP vision encoder (32 wide, a 16-wide
    projection) in ``file.parent / "image_encoder"``. ``variant``: ``ip_adapter`` (a linear
    projection of the image embedding to 4 tokens), ``ip_adapter_plus`` (a 4-layer resampler over
    the encoder's hidden states) or ``ip_adapter_face`` (full-face: an MLP over them). Returns ``file``."""
    import torch
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8,
        projection_dim=16)).eval()
    encoder.save_pretrained(str(file.parent / "image_encoder"), safe_serialization=True)
    unet = UNet2DConditionModel.from_pretrained(str(Path(model_folder) / "unet"))
    context = unet.config.cross_attention_dim
    state = {f"image_proj.{k}": v for k, v in _image_projection(variant, context).items()}
    key = 1
    for name, _ in unet.attn_processors.items():
        if name.endswith("attn1.processor"):
            continue
        module = unet.get_submodule(name[: -len(".processor")])
        width = module.to_q.out_features
        for which in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key}.{which}.weight"] = torch.randn(width, context) / context ** 0.5
        key += 2
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    return file


def _image_projection(variant: str, context: int) -> dict:
    """Random image-projection tensors under the original IP-Adapter names (encoder: 32 hidden, 16 projected)."""
    import torch

    def ones(n):
        return torch.ones(n)

    def rand(*shape):
        return torch.randn(*shape) / shape[-1] ** 0.5

    if variant == "ip_adapter":
        return {"proj.weight": rand(4 * context, 16) * 4, "proj.bias": rand(4 * context) * 0.1,
                "norm.weight": ones(context), "norm.bias": torch.zeros(context)}
    if variant == "ip_adapter_face":
        return {"proj.0.weight": rand(32, 32), "proj.0.bias": torch.zeros(32), "proj.2.weight": rand(context, 32),
                "proj.2.bias": torch.zeros(context), "proj.3.weight": ones(context), "proj.3.bias": torch.zeros(context)}
    if variant != "ip_adapter_plus":
        raise ValueError(f"variant must be ip_adapter, ip_adapter_plus or ip_adapter_face, got {variant!r}")
    hidden, inner = 64, 64  # one 64-wide head: diffusers reads the heads as to_q's width / 64
    out = {"latents": torch.randn(1, 4, hidden), "proj_in.weight": rand(hidden, 32), "proj_in.bias": torch.zeros(hidden),
           "proj_out.weight": rand(context, hidden), "proj_out.bias": torch.zeros(context),
           "norm_out.weight": ones(context), "norm_out.bias": torch.zeros(context)}
    for i in range(4):
        for norm in ("norm1", "norm2"):
            out[f"layers.{i}.0.{norm}.weight"], out[f"layers.{i}.0.{norm}.bias"] = ones(hidden), torch.zeros(hidden)
        out[f"layers.{i}.0.to_q.weight"] = rand(inner, hidden)
        out[f"layers.{i}.0.to_kv.weight"] = rand(2 * inner, hidden)
        out[f"layers.{i}.0.to_out.weight"] = rand(hidden, inner)
        out[f"layers.{i}.1.0.weight"], out[f"layers.{i}.1.0.bias"] = ones(hidden), torch.zeros(hidden)
        out[f"layers.{i}.1.1.weight"] = rand(4 * hidden, hidden)
        out[f"layers.{i}.1.3.weight"] = rand(hidden, 4 * hidden)
    return out


@exclusive
def build_tiny_redux(file: Path, encoder_folder: Path, context_dim: int = 32, seed: int = 0) -> Path:
    """A Flux.1 Redux embedder (``redux_up``/``redux_down``, BFL's names) feeding ``context_dim``-wide
    tokens, written to ``file``, and a 16-wide SigLIP vision encoder saved to ``encoder_folder``."""
    import torch
    from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder
    from safetensors.torch import save_file
    from transformers import SiglipVisionConfig, SiglipVisionModel

    file, encoder_folder = Path(file), Path(encoder_folder)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    SiglipVisionModel(SiglipVisionConfig(
        hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        patch_size=8)).eval().save_pretrained(str(encoder_folder), safe_serialization=True)
    embedder = ReduxImageEncoder(redux_dim=16, txt_in_features=context_dim)
    save_file({k: v.contiguous() for k, v in embedder.state_dict().items()}, str(file))
    return file
