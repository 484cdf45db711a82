"""Tiny random Flux-shaped control models and transformer files, built offline from a tiny Flux
folder (``backend.demo.build_tiny_flux``) the way the real ones relate to FLUX.1-dev: a ControlNet
made from the transformer's first blocks, a Canny/Depth-style control transformer (128 input
channels), and the transformer written as fp8 safetensors and as a GGUF file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def build_tiny_flux_controlnet(folder: Path, flux_folder: Path, seed: int = 0) -> Path:
    """A ``FluxControlNetModel`` shaped from the tiny Flux transformer (one double, one single
    block), its zero-initialised control projections made random so it changes what it guides."""
    from diffusers import FluxControlNetModel, FluxTransformer2DModel

    transformer = FluxTransformer2DModel.from_pretrained(str(flux_folder), subfolder="transformer")
    torch.manual_seed(seed)
    net = FluxControlNetModel.from_transformer(transformer, num_layers=1, num_single_layers=1,
                                               attention_head_dim=transformer.config.attention_head_dim,
                                               num_attention_heads=transformer.config.num_attention_heads)
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.startswith("controlnet_"):
                parameter.normal_(0.0, 0.3)
    net.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def build_tiny_flux_control(folder: Path, flux_folder: Path, seed: int = 0) -> Path:
    """A FLUX.1-Canny/Depth-shaped model: the tiny Flux folder's text encoders and VAE with a
    transformer of 128 packed input channels (latents + control image), saved as a
    ``FluxControlPipeline`` folder."""
    from diffusers import FluxControlPipeline, FluxPipeline, FluxTransformer2DModel

    base = FluxPipeline.from_pretrained(str(flux_folder))
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(**{**{k: v for k, v in base.transformer.config.items()
                                               if not k.startswith("_")}, "in_channels": 128, "out_channels": 64})
    modules = {name: module for name, module in base.components.items()
               if name not in ("image_encoder", "feature_extractor")}
    FluxControlPipeline(**{**modules, "transformer": transformer.eval()}).save_pretrained(str(folder),
                                                                                         safe_serialization=True)
    return Path(folder)


def transformer_weights(flux_folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(flux_folder) / "transformer" / "diffusion_pytorch_model.safetensors"))


def write_fp8(flux_folder: Path, file: Path) -> Path:
    """The tiny Flux transformer as the fp8 files model sites share: matrices in ``float8_e4m3fn``,
    biases and norms as they were."""
    from safetensors.torch import save_file

    weights = transformer_weights(flux_folder)
    save_file({name: t.to(torch.float8_e4m3fn) if t.ndim == 2 else t for name, t in weights.items()}, str(file))
    return Path(file)


def write_upcast_fp8(flux_folder: Path, file: Path) -> Path:
    """The same values as :func:`write_fp8`, stored as float32: what an exact fp8 upcast must load."""
    from safetensors.torch import save_file

    weights = transformer_weights(flux_folder)
    save_file({name: t.to(torch.float8_e4m3fn).float() if t.ndim == 2 else t for name, t in weights.items()}, str(file))
    return Path(file)


def write_gguf(flux_folder: Path, file: Path, quant: str = "Q8_0") -> Path:
    """The tiny Flux transformer as a GGUF file (diffusers' tensor names), written by the ``gguf``
    package: matrices whose rows split into 32-value blocks quantized as ``quant``, the rest F32."""
    import gguf
    from gguf.quants import quantize

    kind = getattr(gguf.GGMLQuantizationType, quant)
    writer = gguf.GGUFWriter(str(file), "flux")
    for name, tensor in transformer_weights(flux_folder).items():
        values = tensor.float().numpy()
        if values.ndim == 2 and values.shape[1] % 32 == 0:
            packed = quantize(values, kind)
            writer.add_tensor(name, packed, raw_shape=packed.shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, np.ascontiguousarray(values, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(file)
