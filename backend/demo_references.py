"""Tiny random reference adapters, built offline for tests (like :mod:`backend.demo`'s models): an
IP-Adapter for a tiny SD-shaped model with its CLIP vision encoder beside it (h94's layout), and a
Flux.1 Redux embedder with a SigLIP encoder (ComfyUI's ``style_models/`` + ``clip_vision/``). The
files are written in the released layouts, so they load through the same code as real ones."""
from __future__ import annotations

from pathlib import Path

from .construction import exclusive


@exclusive
def build_tiny_ip_adapter(model_folder: Path, file: Path, seed: int = 0, tokens: int = 4) -> Path:
    """A plain (``image_proj.proj``/``norm``) IP-Adapter for the UNet of the diffusers model at
    ``model_folder``, written to ``file`` (``.safetensors``), with a 16-wide-projection CLIP vision
    encoder in ``file.parent / "image_encoder"``. Returns ``file``."""
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
    state = {"image_proj.proj.weight": torch.randn(tokens * context, 16) * 0.5,
             "image_proj.proj.bias": torch.randn(tokens * context) * 0.1,
             "image_proj.norm.weight": torch.ones(context), "image_proj.norm.bias": torch.zeros(context)}
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
