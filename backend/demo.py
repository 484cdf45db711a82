"""Tiny randomly initialised Stable-Diffusion-shaped models, built offline and deterministically.

With no model configured, the server serves the **demo models** built here: an SD-1.x-shaped base
model and a depth model (5-channel UNet), both a few MB, both saved with ``save_pretrained`` into a
cache folder and then loaded through the same code path as a user's diffusers folder. Their images
are noise; they exist so that a newcomer, a plugin developer and a test can drive every task end to
end without downloading anything.

The demo also has a ControlNet (``demo-canny``, made from the demo UNet; listed a second time as
``demo-depth-control`` with control type ``depth``, same random weights, so a client's depth-guided
ControlNet path can be driven too) and a LoRA (``demo-style``), so the ControlNet and LoRA paths
can be driven offline.

The builders are public so that tests, benchmarks and the plugins' harnesses can make the same
models: :func:`build_tiny_model` (``base`` / ``inpaint`` / ``depth``), :func:`build_tiny_sdxl`,
:func:`build_tiny_sd2` (SD 2.x shapes: 1024-wide text features, v-prediction),
:func:`build_tiny_flux2` and :func:`build_tiny_zimage` (Flux.2 Klein and Z-Image shapes, a tiny Qwen3
text encoder and the Qwen tokenizer of :func:`write_qwen_tokenizer`),
:func:`build_tiny_controlnet` (a ControlNet for any of them), :func:`build_tiny_lora` and
:func:`build_tiny_embedding` (``.safetensors`` add-ons in the formats users download),
:func:`build_mid_model` (the ~74 M parameter "mid" model HOSTS.md uses for benchmarks) and
:func:`write_single_file` (a diffusers folder → one original-layout ``.safetensors`` file plus a
config-only folder, the way users hold downloaded checkpoints).

Every builder is deterministic: a fixed torch seed per component, so the same call writes the same
weights on every machine.
"""
from __future__ import annotations

from backend.construction import exclusive

import json
import os
import shutil
import tempfile
from pathlib import Path

#: Bump when the demo models' shapes change, so old caches are not reused.
DEMO_VERSION = "demo-v1"

DEMO_NOTICE = "demo model: randomly initialised, its images are noise — configure a real model with --model"

#: SD 1.x's own scheduler settings (PNDM with the scaled-linear betas), so samplers built
#: ``from_config`` behave as they do on a real checkpoint.
SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "prediction_type": "epsilon",
}

_KINDS = {"base": 4, "inpaint": 9, "depth": 5}

#: The demo's add-ons and ControlNet: file or folder names under the demo cache folder.
DEMO_LORA = "demo-style"
DEMO_CONTROLNET = "demo-canny"
#: The same demo ControlNet listed as a depth one (its weights are random: any type is as true).
DEMO_DEPTH_CONTROLNET = "demo-depth-control"


#: The Flux-shaped demo model's id (a transformer-family model a newcomer can select).
DEMO_FLUX = "demo-flux"


def demo_key(family: str, kind: str) -> str:
    """The :func:`ensure_demo_models` key of the demo model of ``family`` and ``kind``."""
    return "flux" if family == "flux" else kind


def default_cache_folder() -> Path:
    """``$XDG_CACHE_HOME/easel`` (``~/.cache/easel`` when unset). Callers pass it in; nothing here keeps it."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "easel"


def ensure_demo_models(cache_folder: Path, only: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Build the demo models under ``cache_folder/DEMO_VERSION`` unless already there; return their paths.

    Keys: ``"base"``, ``"depth"`` and ``"flux"`` (diffusers folders), ``"controlnet"`` (a ControlNet folder made
    from the base UNet), ``"loras"`` (a folder holding ``demo-style.safetensors``). ``only`` names the
    ones needed now (the base model is built too when they are made from it). A build goes to a
    temporary folder that is renamed into place when complete, so an interrupted build never leaves
    a half-written model to be loaded.
    """
    root = Path(cache_folder) / DEMO_VERSION
    out = {}
    builders = (
        ("base", "model_index.json", lambda tmp: build_tiny_model(tmp, kind="base")),
        ("depth", "model_index.json", lambda tmp: build_tiny_model(tmp, kind="depth")),
        ("flux", "model_index.json", lambda tmp: build_tiny_flux(tmp)),
        ("controlnet", "config.json", lambda tmp: build_tiny_controlnet(tmp, out["base"])),
        ("loras", f"{DEMO_LORA}.safetensors",
         lambda tmp: build_tiny_lora(out["base"], tmp / f"{DEMO_LORA}.safetensors", text_encoder=True)),
    )
    wanted = set(only or (kind for kind, _, _ in builders))
    if wanted & {"controlnet", "loras"}:
        wanted.add("base")
    for kind, marker, build in builders:
        if kind not in wanted:
            continue
        folder = root / kind
        if not (folder / marker).is_file():
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=root))
            try:
                build(tmp / "model")
                try:
                    os.replace(tmp / "model", folder)
                except OSError:
                    if not (folder / marker).is_file():  # not a concurrent build that won
                        raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        out[kind] = folder
    return out


# --------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


def write_tokenizer(folder: Path, max_length: int = 77) -> int:
    """Write a small byte-level CLIP tokenizer (vocab.json, merges.txt, config) into ``folder``.

    Returns the vocabulary size. Every byte has a symbol, so any prompt tokenizes; a few merges make
    it a real BPE. (transformers 5 ignores ``vocab_file=`` arguments: load it with ``from_pretrained``.)
    """
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for sym in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(sym, len(vocab))
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("e", "r</w>"), ("o", "n</w>")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=max_length)
    tokenizer.save_pretrained(str(folder))
    return len(vocab)


def _tokenizer(scratch: Path):
    from transformers import CLIPTokenizer

    size = write_tokenizer(scratch)
    return CLIPTokenizer.from_pretrained(str(scratch)), size


def _text_encoder(vocab_size: int, hidden: int, layers: int, heads: int, seed: int, projection: int | None = None):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden, intermediate_size=hidden * 2 + 5, num_attention_heads=heads,
        num_hidden_layers=layers, vocab_size=vocab_size, max_position_embeddings=77,
        bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1,
        layer_norm_eps=1e-5, **({"projection_dim": projection} if projection else {}),
    )
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def _vae(channels: tuple[int, ...], seed: int):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    # Four levels, like SD's VAE: images are 8x the latent size, so "multiple of 8" means what it does on a real model.
    return AutoencoderKL(
        block_out_channels=channels, in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * len(channels), up_block_types=("UpDecoderBlock2D",) * len(channels),
        layers_per_block=1, norm_num_groups=min(channels), sample_size=64,
    ).eval()


# --------------------------------------------------------------------------- models


@exclusive
def build_tiny_model(folder: Path, kind: str = "base", seed: int = 0) -> Path:
    """Write a tiny SD-1.x-shaped diffusers model to ``folder`` and return it.

    ``kind``: ``base`` (4-channel UNet, ``StableDiffusionPipeline``), ``inpaint`` (9-channel,
    ``StableDiffusionInpaintPipeline``) or ``depth`` (5-channel, ``StableDiffusionDepth2ImgPipeline``
    without a depth estimator: depth maps come from the client). Runs in well under a second.
    """
    import torch
    from diffusers import (
        PNDMScheduler, StableDiffusionDepth2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer, vocab_size = _tokenizer(Path(scratch))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=_KINDS[kind], out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    ).eval()
    parts = dict(
        unet=unet, vae=_vae((8, 16, 32, 32), seed + 1), text_encoder=_text_encoder(vocab_size, 32, 2, 4, seed + 2),
        tokenizer=tokenizer, scheduler=PNDMScheduler(**SD_SCHEDULER_CONFIG),
    )
    if kind == "depth":
        pipe = StableDiffusionDepth2ImgPipeline(**parts, depth_estimator=None, feature_extractor=None)
    else:
        cls = StableDiffusionInpaintPipeline if kind == "inpaint" else StableDiffusionPipeline
        pipe = cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@exclusive
def build_mid_model(folder: Path, seed: int = 0) -> Path:
    """The "mid" benchmark model: UNet ``block_out_channels=(128, 256, 512)`` (~74 M parameters).

    Four steps at 256² take seconds on a CPU: heavy enough that per-step overheads show as they
    would on a real model, light enough to run in a benchmark.
    """
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer, vocab_size = _tokenizer(Path(scratch))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(128, 256, 512), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    ).eval()
    pipe = StableDiffusionPipeline(
        unet=unet, vae=_vae((32, 64, 128, 128), seed + 1), text_encoder=_text_encoder(vocab_size, 768, 2, 12, seed + 2),
        tokenizer=tokenizer, scheduler=PNDMScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@exclusive
def build_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    """A tiny SDXL-shaped model: two text encoders, ``text_time`` added conditioning (diffusers' test shapes)."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer, vocab_size = _tokenizer(Path(scratch))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    ).eval()
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading", num_train_timesteps=1000,
    )
    pipe = StableDiffusionXLPipeline(
        unet=unet, vae=_vae((8, 16, 32, 32), seed + 1), scheduler=scheduler,
        text_encoder=_text_encoder(vocab_size, 32, 2, 4, seed + 2), tokenizer=tokenizer,
        text_encoder_2=_text_encoder(vocab_size, 32, 2, 4, seed + 3, projection=32), tokenizer_2=tokenizer,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def write_t5_tokenizer(folder: Path) -> Path:
    """A small T5 tokenizer (a ``tokenizers`` Unigram model: ``<pad>``, ``</s>``, ``<unk>``, the
    letters and a few pieces) saved into ``folder``; no hub. Returns ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [("\u2581" + word, -2.0) for word in ("a", "the", "cat", "sky", "red", "of", "in")]
    pieces += [(letter, -5.0) for letter in "abcdefghijklmnopqrstuvwxyz0123456789.,!?-'\u2581"]
    core = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    core.pre_tokenizer = pre_tokenizers.Metaspace()
    core.decoder = decoders.Metaspace()
    core.save(str(folder / "tokenizer.json"))
    tokenizer = T5TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), extra_ids=0, model_max_length=512,
                                pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    tokenizer.save_pretrained(str(folder))
    return folder


def _latent16_vae(scaling: float, shift: float, seed: int):
    """A 4-level VAE with 16 latent channels and no quant convs (SD 3's and Flux's layout)."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32), in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
        norm_num_groups=8, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=scaling, shift_factor=shift,
    ).eval()


def _t5_encoder(vocab_size: int, seed: int):
    """A 32-wide, two-layer T5 encoder."""
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1)).eval()


@exclusive
def build_tiny_flux(folder: Path, seed: int = 0, fill: bool = False, guidance: bool = True,
                    kontext: bool = False, blocks: tuple[int, int] = (1, 1), heads: int = 2, head_dim: int = 16) -> Path:
    """A tiny Flux.1-shaped model (diffusers' test sizes, Flux's own layout): a one double + one
    single block transformer over 16-channel latents packed 2×2 (64 input channels, 384 for a
    ``fill`` model), a 4-level VAE with Flux's scaling and shift (images 8× the latents, sides
    multiples of 16), a 32-wide CLIP and T5, flow-matching Euler. ``guidance``: dev-style distilled
    guidance input (False: schnell-style). ``kontext``: saved as a Flux.1 Kontext (instruction
    edit) model: the same modules under ``FluxKontextPipeline``. ``blocks`` (double, single),
    ``heads`` and ``head_dim`` size the transformer (the benchmarks' Flux-shaped "mid" model is larger)."""
    import torch
    from diffusers import (
        FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxKontextPipeline, FluxPipeline, FluxTransformer2DModel,
    )
    from transformers import T5TokenizerFast

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:
        write_tokenizer(Path(scratch) / "clip")
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(str(Path(scratch) / "clip"), model_max_length=77)
        vocab_size = len(tokenizer)
        tokenizer_2 = T5TokenizerFast.from_pretrained(str(write_t5_tokenizer(Path(scratch) / "t5")))
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=384 if fill else 64, out_channels=64, num_layers=blocks[0],
        num_single_layers=blocks[1], attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=32,
        pooled_projection_dim=32, guidance_embeds=guidance,
        axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, head_dim - head_dim // 4 - 3 * head_dim // 8),
    ).eval()
    vae = _latent16_vae(0.3611, 0.1159, seed + 1)
    t5 = _t5_encoder(len(tokenizer_2), seed + 3)
    cls = FluxFillPipeline if fill else FluxKontextPipeline if kontext else FluxPipeline
    pipe = cls(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=_text_encoder(vocab_size, 32, 2, 4, seed + 2, projection=None), tokenizer=tokenizer,
        text_encoder_2=t5, tokenizer_2=tokenizer_2,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@exclusive
def build_tiny_sd3(folder: Path, seed: int = 0) -> Path:
    """A tiny SD-3.5-shaped model (diffusers' test sizes, SD 3's layout): a two-layer MMDiT over
    16-channel latents in 2×2 patches, a 4-level VAE with SD 3's scaling and shift, two 32-wide
    CLIP encoders with projections (pooled 64) and a 32-wide T5, flow-matching Euler."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTokenizer, T5TokenizerFast

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:
        write_tokenizer(Path(scratch) / "clip")
        tokenizer = CLIPTokenizer.from_pretrained(str(Path(scratch) / "clip"), model_max_length=77)
        tokenizer_3 = T5TokenizerFast.from_pretrained(str(write_t5_tokenizer(Path(scratch) / "t5")))
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=16,
    ).eval()
    vae = _latent16_vae(1.5305, 0.0609, seed + 1)
    t5 = _t5_encoder(len(tokenizer_3), seed + 4)
    vocab_size = len(tokenizer)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=_text_encoder(vocab_size, 32, 2, 4, seed + 2, projection=32), tokenizer=tokenizer,
        text_encoder_2=_text_encoder(vocab_size, 32, 2, 4, seed + 3, projection=32), tokenizer_2=tokenizer,
        text_encoder_3=t5, tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


#: The chat template of Qwen3's tokenizer, reduced to what the Flux.2 and Z-Image pipelines use
#: (a user message, the generation prompt, and the empty thinking block when thinking is off).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}")


def write_qwen_tokenizer(folder: Path) -> Path:
    """A small Qwen2-style byte-level BPE tokenizer (every byte a symbol, a few merges, Qwen's
    ``<|endoftext|>``/``<|im_start|>``/``<|im_end|>`` and a chat template) saved into ``folder``;
    no hub. Returns ``folder``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab: dict[str, int] = {}
    for symbol in _bytes_to_unicode().values():
        vocab.setdefault(symbol, len(vocab))
    merges = [("t", "h"), ("a", "n"), ("i", "n"), ("e", "r"), ("o", "n")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    core = Tokenizer(models.BPE(vocab, merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    core.save(str(folder / "tokenizer.json"))
    tokenizer = Qwen2TokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), pad_token="<|endoftext|>",
                                   eos_token="<|im_end|>", unk_token=None, bos_token=None, model_max_length=512)
    tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(folder))
    return folder


def _qwen3(vocab_size: int, layers: int, seed: int, causal_lm: bool):
    """A 16-wide Qwen3 (the Flux.2 Klein pipelines take the causal-LM class, Z-Image's the bare model)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(hidden_size=16, intermediate_size=16, num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=2, head_dim=8, vocab_size=vocab_size, max_position_embeddings=512)
    torch.manual_seed(seed)
    return (Qwen3ForCausalLM if causal_lm else Qwen3Model)(config).eval()


@exclusive
def build_tiny_flux2(folder: Path, seed: int = 0, distilled: bool = True) -> Path:
    """A tiny Flux.2-Klein-shaped model (diffusers' test sizes, Klein's layout): a one double + one
    single block transformer over 32-channel latents patchified 2×2 (128 input channels), a 4-level
    ``AutoencoderKLFlux2`` (images 8× the latents, sides multiples of 16) with its batch-norm, a
    16-wide Qwen3 of 28 layers (the pipeline reads layers 9, 18 and 27: 48-wide text features), the
    Qwen tokenizer of :func:`write_qwen_tokenizer`, flow-matching Euler. ``distilled``: saved as a
    step-distilled model (Klein 4B/9B: no classifier-free guidance) or as an undistilled base."""
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
    from transformers import Qwen2TokenizerFast

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = Qwen2TokenizerFast.from_pretrained(str(write_qwen_tokenizer(Path(scratch) / "qwen")))
    torch.manual_seed(seed)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=48, timestep_guidance_channels=256, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    ).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16, 32, 32), in_channels=3, out_channels=3, latent_channels=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1,
        norm_num_groups=8, sample_size=64,
    ).eval()
    pipe = Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_qwen3(len(tokenizer), 28, seed + 2, True),
        tokenizer=tokenizer, transformer=transformer, is_distilled=distilled,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@exclusive
def build_tiny_zimage(folder: Path, seed: int = 0) -> Path:
    """A tiny Z-Image-shaped model (diffusers' test sizes, Z-Image's layout): a two-layer
    single-stream transformer (one noise and one context refiner) over 16-channel latents in 2×2
    patches, Flux.1's 4-level VAE with its scaling and shift, a two-layer 16-wide Qwen3, the Qwen
    tokenizer of :func:`write_qwen_tokenizer`, flow-matching Euler."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen2TokenizerFast

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = Qwen2TokenizerFast.from_pretrained(str(write_qwen_tokenizer(Path(scratch) / "qwen")))
    torch.manual_seed(seed)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2,
        n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0, t_scale=1000.0,
        axes_dims=[8, 4, 4], axes_lens=[1024, 128, 128],
    ).eval()
    with torch.no_grad():  # made with torch.empty: give them values, as diffusers' tests do
        transformer.x_pad_token.copy_(torch.ones_like(transformer.x_pad_token))
        transformer.cap_pad_token.copy_(torch.ones_like(transformer.cap_pad_token))
    pipe = ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_latent16_vae(0.3611, 0.1159, seed + 1),
        text_encoder=_qwen3(len(tokenizer), 2, seed + 2, False), tokenizer=tokenizer, transformer=transformer,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@exclusive
def build_tiny_sd2(folder: Path, seed: int = 0, prediction_type: str = "v_prediction") -> Path:
    """A tiny SD-2.x-shaped model: the UNet cross-attends to 1024-wide text features (what marks
    SD 2.x), linear attention projections, upcast attention, and a DDIM scheduler predicting
    ``prediction_type`` (SD 2.x 768 models predict ``v``)."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer, vocab_size = _tokenizer(Path(scratch))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=1024, attention_head_dim=8, use_linear_projection=True, upcast_attention=True,
    ).eval()
    torch.manual_seed(seed + 2)
    # One narrow layer: 1024 wide (so the features are SD 2's width) but a few million weights only.
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=1024, intermediate_size=64, num_attention_heads=16, num_hidden_layers=1, vocab_size=vocab_size,
        max_position_embeddings=77, bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1, layer_norm_eps=1e-5)).eval()
    settings = {k: v for k, v in SD_SCHEDULER_CONFIG.items() if k not in ("skip_prk_steps", "prediction_type")}
    scheduler = DDIMScheduler(**settings, prediction_type=prediction_type, clip_sample=False)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=_vae((8, 16, 32, 32), seed + 1), text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


@exclusive
def build_tiny_controlnet(folder: Path, model_folder: Path, seed: int = 0) -> Path:
    """A ControlNet for the diffusers model in ``model_folder`` (any tiny model above, SDXL
    included), saved as a ControlNet folder (``config.json`` + weights).

    Made with ``ControlNetModel.from_unet`` like a real training run starts, then its zero
    convolutions are given small random weights (a freshly made ControlNet adds exactly nothing)
    and its control-image encoder weights that carry the image through (He-initialised, no bias):
    this one must visibly steer the image, and differently for different control images, so tests
    can tell that the control reached the UNet.
    """
    import math

    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(str(Path(model_folder) / "unet"))
    controlnet = ControlNetModel.from_unet(unet)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
            elif name.startswith("controlnet_cond_embedding."):
                if name.endswith(".bias"):
                    parameter.zero_()
                else:
                    fan_in = parameter[0].numel()
                    gain = 1.0 if ".conv_out." in name else math.sqrt(2.0)
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * gain / math.sqrt(fan_in))
    controlnet.eval().save_pretrained(str(folder), safe_serialization=True)
    return folder


@exclusive
def build_tiny_lora(model_folder: Path, file: Path, seed: int = 0, rank: int = 4, text_encoder: bool = False) -> Path:
    """A LoRA for the diffusers model in ``model_folder``, trained by nobody: peft adapters on the
    UNet's attention projections (and the first text encoder's, when ``text_encoder``) with random
    weights, written with diffusers' ``save_lora_weights`` as one ``.safetensors`` file — the
    layout diffusers and kohya-converted LoRAs load from. Returns ``file``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    model_folder, file = Path(model_folder), Path(file)
    unet = UNet2DConditionModel.from_pretrained(str(model_folder / "unet"))
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    layers = {"unet_lora_layers": unet}
    if text_encoder:
        layers["text_encoder_lora_layers"] = _text_encoder_with_lora(model_folder, rank)
    _randomize_lora(layers.values(), seed)
    states = {key: convert_state_dict_to_diffusers(get_peft_model_state_dict(module)) for key, module in layers.items()}
    if "text_encoder_lora_layers" in states:
        states["text_encoder_lora_layers"] = _as_released(states["text_encoder_lora_layers"])
    sdxl = (model_folder / "text_encoder_2").is_dir()
    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    with tempfile.TemporaryDirectory() as scratch:
        cls.save_lora_weights(scratch, safe_serialization=True, **states)
        file.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(os.path.join(scratch, "pytorch_lora_weights.safetensors"), file)
    return file


def _text_encoder_with_lora(model_folder: Path, rank: int):
    """The first text encoder of ``model_folder`` (a CLIP) with a peft adapter on its attention."""
    import transformers
    from peft import LoraConfig, inject_adapter_in_model

    cls = json.loads((model_folder / "model_index.json").read_text())["text_encoder"][1]
    encoder = getattr(transformers, cls).from_pretrained(str(model_folder / "text_encoder"))
    # peft directly: transformers' own add_adapter wants a newer peft than the pinned one.
    return inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                              target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),
                                   encoder, adapter_name="default")


def _as_released(state: dict) -> dict:
    """Downloaded LoRAs name the text encoder's layers from ``text_model.`` (transformers 4's layout)."""
    return {key if key.startswith("text_model.") else f"text_model.{key}": value for key, value in state.items()}


def _randomize_lora(modules, seed: int) -> None:
    """Give peft adapters random weights from ``seed`` (an adapter as peft makes it changes nothing)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in modules:
            for name, parameter in module.named_parameters():
                if "lora_A" in name:  # peft draws A from torch's global generator: draw it from ours
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[1] ** 0.5)
                elif "lora_B" in name:  # peft starts B at zero (a no-op adapter); give it an effect
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)


@exclusive
def build_tiny_transformer_lora(model_folder: Path, file: Path, seed: int = 0, rank: int = 4,
                                architecture: str = "", text_encoder: bool = False) -> Path:
    """A LoRA for the Flux.1, Flux.2 Klein, Z-Image or SD 3.5 diffusers model in ``model_folder``, trained
    by nobody: peft adapters on every attention projection of its transformer with random weights, written with
    the pipeline's ``save_lora_weights`` (``transformer.*.lora_A/B`` keys, the layout diffusers and
    most trainers write). ``architecture``: a ``modelspec.architecture`` to write in the file's
    metadata, as kohya's and other trainers do (e.g. ``stable-diffusion-v3.5-medium/lora``).
    ``text_encoder``: the first text encoder (CLIP-L) gets an adapter too. Returns ``file``."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    model_folder, file = Path(model_folder), Path(file)
    config = json.loads((model_folder / "transformer" / "config.json").read_text())
    transformer = getattr(diffusers, config["_class_name"]).from_pretrained(str(model_folder / "transformer"))
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                                       "add_v_proj", "to_add_out", "to_qkv_mlp_proj"]))
    modules = {"transformer_lora_layers": transformer}
    if text_encoder:
        modules["text_encoder_lora_layers"] = _text_encoder_with_lora(model_folder, rank)
    _randomize_lora(modules.values(), seed)
    # lora_A/lora_B, as diffusers' Flux and SD 3 trainers save
    states = {key: get_peft_model_state_dict(module) for key, module in modules.items()}
    if text_encoder:
        states["text_encoder_lora_layers"] = _as_released(states["text_encoder_lora_layers"])
    pipeline = getattr(diffusers, json.loads((model_folder / "model_index.json").read_text())["_class_name"])
    with tempfile.TemporaryDirectory() as scratch:
        pipeline.save_lora_weights(scratch, safe_serialization=True, **states)
        saved = os.path.join(scratch, "pytorch_lora_weights.safetensors")
        file.parent.mkdir(parents=True, exist_ok=True)
        if architecture:
            save_file(load_file(saved), str(file), metadata={"format": "pt", "modelspec.architecture": architecture})
        else:
            shutil.move(saved, file)
    return file


@exclusive
def build_tiny_embedding(file: Path, widths: tuple[int, ...] = (32,), vectors: int = 1, seed: int = 0) -> Path:
    """A textual-inversion embedding of ``vectors`` random vectors, as a ``.safetensors`` file.

    One width: A1111's layout (``emb_params``: vectors × width) for SD 1.x/2.x. Two widths: the
    SDXL layout (``clip_l`` and ``clip_g``, one per text encoder). Returns ``file``."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    if len(widths) == 1:
        tensors = {"emb_params": torch.randn((vectors, widths[0]), generator=generator)}
    else:
        tensors = {"clip_l": torch.randn((vectors, widths[0]), generator=generator),
                   "clip_g": torch.randn((vectors, widths[1]), generator=generator)}
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(file))
    return file


@exclusive
def build_tiny_taesd(folder: Path, seed: int = 0) -> Path:
    """A tiny random ``AutoencoderTiny`` (TAESD-shaped: 8x upsampling decoder) for preview tests."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    model = AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=4,
    ).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


@exclusive
def build_tiny_dpt(folder: Path, seed: int = 0) -> Path:
    """A tiny random DPT depth estimator (``DPTForDepthEstimation`` + its image processor, 32 px
    input), laid out like ``Intel/dpt-hybrid-midas``: for depth2img without a depth map."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(seed)
    config = DPTConfig(image_size=32, patch_size=16, num_channels=3, hidden_size=32, num_hidden_layers=2,
                       backbone_out_indices=[0, 1], num_attention_heads=4, intermediate_size=37,
                       neck_hidden_sizes=[16, 32], reassemble_factors=[4, 2], fusion_hidden_size=16,
                       head_hidden_size=16, is_hybrid=False)
    DPTForDepthEstimation(config).eval().save_pretrained(str(folder))
    DPTImageProcessor(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(str(folder))
    return Path(folder)


# --------------------------------------------------------------------------- single-file checkpoints


def write_single_file(model_folder: Path, checkpoint: Path, config_folder: Path | None = None) -> Path:
    """Write an SD-1.x diffusers folder as one original-layout (LDM) ``.safetensors`` checkpoint.

    The keys are the ones a downloaded ``model.safetensors`` from a model site has
    (``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``), so
    loading it exercises diffusers' real conversion. When ``config_folder`` is given, the folder's
    configs, tokenizer and scheduler — but no weights — are copied there: the local config folder
    ``from_single_file(..., config=...)`` needs offline. Returns ``checkpoint``.
    """
    from safetensors.torch import load_file, save_file

    model_folder, checkpoint = Path(model_folder), Path(checkpoint)
    unet_config = json.loads((model_folder / "unet" / "config.json").read_text())
    vae_config = json.loads((model_folder / "vae" / "config.json").read_text())
    state: dict = {}
    for key, value in load_file(str(model_folder / "unet" / "diffusion_pytorch_model.safetensors")).items():
        state["model.diffusion_model." + _ldm_unet_key(key, unet_config)] = value
    for key, value in load_file(str(model_folder / "vae" / "diffusion_pytorch_model.safetensors")).items():
        new_key = _ldm_vae_key(key, len(vae_config["block_out_channels"]))
        if ".mid.attn_1." in new_key and new_key.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE's attention projections are 1x1 convolutions
        state["first_stage_model." + new_key] = value
    for key, value in load_file(str(model_folder / "text_encoder" / "model.safetensors")).items():
        bare = key.removeprefix("text_model.")
        state["cond_stage_model.transformer.text_model." + bare] = value
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(checkpoint))
    if config_folder is not None:
        shutil.copytree(model_folder, config_folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"),
                        dirs_exist_ok=True)
    return checkpoint


_LDM_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def _ldm_unet_key(key: str, config: dict) -> str:
    """The original-SD name of one diffusers UNet parameter (SD 1.x/2.x layout)."""
    per = config["layers_per_block"] + 1
    parts = key.split(".")
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    head = ".".join(parts[:-1])
    if head in simple:
        return f"{simple[head]}.{parts[-1]}"

    def resnet(rest: list[str]) -> str:
        return ".".join([_LDM_RESNET.get(rest[0], rest[0])] + rest[1:])

    if parts[0] == "down_blocks":
        i, what = int(parts[1]), parts[2]
        if what == "downsamplers":
            return f"input_blocks.{(i + 1) * per}.0.op." + ".".join(parts[5:])
        j = int(parts[3])
        index = 1 + i * per + j
        if what == "resnets":
            return f"input_blocks.{index}.0." + resnet(parts[4:])
        return f"input_blocks.{index}.1." + ".".join(parts[4:])
    if parts[0] == "mid_block":
        j = int(parts[2])
        if parts[1] == "resnets":
            return f"middle_block.{2 * j}." + resnet(parts[3:])
        return "middle_block.1." + ".".join(parts[3:])
    if parts[0] == "up_blocks":
        i, what = int(parts[1]), parts[2]
        if what == "upsamplers":
            has_attention = "CrossAttn" in config["up_block_types"][i]
            return f"output_blocks.{i * per + per - 1}.{2 if has_attention else 1}.conv." + ".".join(parts[5:])
        j = int(parts[3])
        if what == "resnets":
            return f"output_blocks.{i * per + j}.0." + resnet(parts[4:])
        return f"output_blocks.{i * per + j}.1." + ".".join(parts[4:])
    raise ValueError(f"no original-layout name for UNet parameter {key!r}")


def _ldm_vae_key(key: str, levels: int) -> str:
    """The original-SD name of one diffusers ``AutoencoderKL`` parameter."""
    parts = key.split(".")
    if parts[0] in ("quant_conv", "post_quant_conv"):
        return key
    coder, rest = parts[0], parts[1:]
    if rest[0] in ("conv_in", "conv_out"):
        return key
    if rest[0] == "conv_norm_out":
        return f"{coder}.norm_out." + ".".join(rest[1:])
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            return f"{coder}.mid.block_{int(rest[2]) + 1}." + ".".join([_vae_resnet(rest[3])] + rest[4:])
        names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out": "proj_out"}
        tail = rest[4:] if rest[3] != "to_out" else rest[5:]  # to_out.0.weight → proj_out.weight
        return f"{coder}.mid.attn_1.{names[rest[3]]}." + ".".join(tail)
    block = int(rest[1])
    if coder == "encoder":
        level, group = block, "down"
    else:
        level, group = levels - 1 - block, "up"
    if rest[2] == "resnets":
        return f"{coder}.{group}.{level}.block.{rest[3]}." + ".".join([_vae_resnet(rest[4])] + rest[5:])
    sampler = "downsample" if coder == "encoder" else "upsample"
    return f"{coder}.{group}.{level}.{sampler}.conv." + ".".join(rest[5:])


def _vae_resnet(name: str) -> str:
    return "nin_shortcut" if name == "conv_shortcut" else name
