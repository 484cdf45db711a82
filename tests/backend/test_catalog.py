"""Models folders (``--models-dir``): synthetic A1111, ComfyUI and InvokeAI trees with a tiny
``.safetensors`` of every kind and family (tensor names and shapes as the real files have them,
values zero), a pickle ``.ckpt`` (refused, never opened), links leading outside the folder
(refused), 0-byte, broken and vanished files (each listed with its reason), stable ids, rescans —
and an engine serving a ComfyUI folder's checkpoint and LoRA with no other setting.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from backend import catalog, demo
from backend.catalog import ModelFolders, kind_from_header, layout_folders, scan
from backend.cli import main
from backend.engine import Engine, EngineConfig
from protocol import JobParams, LoraWeight, SubmitJob
from tiny_models import Recorder, pixels


def write(path: Path, shapes: dict[str, list[int]]) -> Path:
    """A valid ``.safetensors`` file with zero tensors of ``shapes``."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(v, np.float16) for k, v in shapes.items()}, str(path))
    return path


UNET = "model.diffusion_model."
#: Tensor names and (shrunk) shapes of each kind of file, as the real files have them.
FILES: dict[str, dict[str, list[int]]] = {
    "sd15": {UNET + "input_blocks.0.0.weight": [8, 4, 3, 3],
             UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [8, 768],
             "first_stage_model.decoder.conv_in.weight": [8, 4, 3, 3],
             "cond_stage_model.transformer.text_model.final_layer_norm.weight": [768]},
    "sd15_inpaint": {UNET + "input_blocks.0.0.weight": [8, 9, 3, 3], "first_stage_model.decoder.conv_in.weight": [8, 4, 3, 3],
                     "cond_stage_model.transformer.text_model.final_layer_norm.weight": [768]},
    "sd2": {UNET + "input_blocks.0.0.weight": [8, 4, 3, 3], "first_stage_model.decoder.conv_in.weight": [8, 4, 3, 3],
            "cond_stage_model.model.ln_final.weight": [1024]},
    "sdxl": {UNET + "input_blocks.0.0.weight": [8, 4, 3, 3], UNET + "label_emb.0.0.weight": [8, 8],
             "first_stage_model.decoder.conv_in.weight": [8, 4, 3, 3],
             "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": [768],
             "conditioner.embedders.1.model.ln_final.weight": [1280]},
    "flux_checkpoint": {UNET + "double_blocks.0.img_attn.qkv.weight": [8, 8], "vae.decoder.conv_in.weight": [8, 16, 3, 3]},
    "controlnet_sd15": {"control_model.input_hint_block.0.weight": [8, 3, 3, 3],
                        "control_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [8, 768]},
    "controlnet_sdxl": {"controlnet_cond_embedding.conv_in.weight": [8, 3, 3, 3], "add_embedding.linear_1.weight": [8, 8],
                        "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight": [8, 2048]},
    "lora_sd15": {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 768],
                  "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": [8, 4]},
    "lora_sdxl": {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": [4, 2048],
                  "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": [4, 1280]},
    "vae": {"encoder.conv_in.weight": [8, 3, 3, 3], "decoder.conv_in.weight": [8, 4, 3, 3]},
    "embedding_sd15": {"emb_params": [2, 768]},
    "embedding_sdxl": {"clip_l": [2, 768], "clip_g": [2, 1280]},
    "clip_vision": {"vision_model.post_layernorm.weight": [1280], "visual_projection.weight": [8, 8]},
    "ipadapter_sd15": {"image_proj.proj.weight": [8, 8], "ip_adapter.1.to_k_ip.weight": [8, 768]},
    "ipadapter_sdxl": {"image_proj.proj.weight": [8, 8], "ip_adapter.1.to_k_ip.weight": [8, 2048]},
    "esrgan": {"model.0.weight": [4, 3, 3, 3], "model.1.sub.0.RDB1.conv1.0.weight": [4, 4, 3, 3]},
    "clip_l": {"text_model.final_layer_norm.weight": [768], "text_model.encoder.layers.0.mlp.fc1.weight": [8, 8]},
    "t5": {"encoder.block.0.layer.0.SelfAttention.q.weight": [8, 8], "shared.weight": [10, 8]},
    "flux_transformer": {"double_blocks.0.img_attn.qkv.weight": [8, 8]},
    "sdxl_unet": {"input_blocks.0.0.weight": [8, 4, 3, 3], "middle_block.0.in_layers.0.weight": [8],
                  "label_emb.0.0.weight": [8, 8]},
}
#: (kind, family, status) each file must be listed with.
EXPECTED: dict[str, tuple[str, str, str]] = {
    "sd15": ("checkpoint", "sd15", "served"), "sd15_inpaint": ("checkpoint", "sd15", "served"),
    "sd2": ("checkpoint", "sd2", "served"), "sdxl": ("checkpoint", "sdxl", "served"),
    "flux_checkpoint": ("checkpoint", "flux", "listed"),
    "controlnet_sd15": ("controlnet", "sd15", "served"), "controlnet_sdxl": ("controlnet", "sdxl", "served"),
    "lora_sd15": ("lora", "sd15", "served"), "lora_sdxl": ("lora", "sdxl", "served"),
    "vae": ("vae", "", "listed"), "embedding_sd15": ("embedding", "sd15", "served"),
    "embedding_sdxl": ("embedding", "sdxl", "served"), "clip_vision": ("clip_vision", "", "listed"),
    "ipadapter_sd15": ("ipadapter", "sd15", "listed"), "ipadapter_sdxl": ("ipadapter", "sdxl", "listed"),
    "esrgan": ("upscaler", "", "served"), "clip_l": ("text_encoder", "", "listed"), "t5": ("text_encoder", "", "listed"),
    "flux_transformer": ("diffusion_model", "flux", "listed"), "sdxl_unet": ("diffusion_model", "sdxl", "listed"),
}


class Exploding:
    """Unpickling this writes a marker file: proof that a scan opened the ``.ckpt``."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def write_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Exploding(str(marker))))
    return path


#: Where each file goes in each layout (folder relative to the root, file name).
LAYOUTS = {
    "comfyui": {
        "sd15": "models/checkpoints/sd15/dreamshaper_8", "sd15_inpaint": "models/checkpoints/sd15-inpainting",
        "sd2": "models/checkpoints/v2-1_768", "sdxl": "models/checkpoints/juggernautXL",
        "flux_checkpoint": "models/checkpoints/flux1-dev-fp8", "controlnet_sd15": "models/controlnet/control_v11p_sd15_canny",
        "controlnet_sdxl": "models/controlnet/controlnet-depth-sdxl", "lora_sd15": "models/loras/ink",
        "lora_sdxl": "models/loras/xl/pixel art", "vae": "models/vae/sdxl_vae",
        "embedding_sd15": "models/embeddings/easynegative", "embedding_sdxl": "models/embeddings/negxl",
        "clip_vision": "models/clip_vision/CLIP-ViT-H-14", "ipadapter_sd15": "models/ipadapter/ip-adapter_sd15",
        "ipadapter_sdxl": "models/ipadapter/ip-adapter_sdxl", "esrgan": "models/upscale_models/4x-UltraSharp",
        "clip_l": "models/text_encoders/clip_l", "t5": "models/text_encoders/t5xxl_fp8",
        "flux_transformer": "models/diffusion_models/flux1-schnell", "sdxl_unet": "models/unet/sdxl_unet",
    },
    "a1111": {
        "sd15": "models/Stable-diffusion/sd15/dreamshaper_8", "sdxl": "models/Stable-diffusion/juggernautXL",
        "controlnet_sd15": "models/ControlNet/control_v11p_sd15_canny", "lora_sd15": "models/Lora/ink",
        "lora_sdxl": "models/LyCORIS/pixel", "vae": "models/VAE/vae-ft-mse",
        "embedding_sd15": "embeddings/easynegative", "esrgan": "models/ESRGAN/4x-UltraSharp",
    },
    "invokeai": {
        "sd15": "models/sd-1/main/dreamshaper_8", "sdxl": "models/sdxl/main/juggernautXL",
        "controlnet_sd15": "models/sd-1/controlnet/canny", "lora_sdxl": "models/sdxl/lora/pixel",
        "embedding_sd15": "models/sd-1/embedding/easynegative", "clip_vision": "models/any/clip_vision/vit-h",
        "ipadapter_sd15": "models/sd-1/ip_adapter/ip_adapter_sd15", "t5": "models/any/t5_encoder/t5",
    },
}


def build_tree(root: Path, layout: str) -> dict[str, Path]:
    return {name: write(root / f"{where}.safetensors", FILES[name]) for name, where in LAYOUTS[layout].items()}


@pytest.fixture
def header_reads(monkeypatch) -> list[Path]:
    """Every path whose safetensors header is read (the real reader, recorded)."""
    from backend import addons, models

    seen: list[Path] = []
    real = models.safetensors_header

    def recording(path):
        seen.append(Path(path))
        return real(path)

    for module in (models, addons, catalog):
        monkeypatch.setattr(module, "safetensors_header", recording)
    return seen


@pytest.mark.parametrize("layout", ["comfyui", "a1111", "invokeai"])
def test_each_layout_is_understood(tmp_path, layout):
    files = build_tree(tmp_path / layout, layout)
    result = scan([tmp_path / layout])
    assert result.layouts == {tmp_path / layout: layout}
    by_path = {f.path: f for f in result.found}
    assert set(by_path) == set(files.values())
    for name, path in files.items():
        found = by_path[path]
        assert (found.kind, found.family, found.status) == EXPECTED[name], (name, found)
        assert bool(found.id) == found.served
        assert found.layout == layout
    assert {f.model_kind for f in result.found if f.kind == "checkpoint" and f.served} <= {"base", "inpaint"}


def test_comfyui_details_ids_and_specs(tmp_path):
    files = build_tree(tmp_path, "comfyui")
    result = scan([tmp_path])
    by_name = {name: next(f for f in result.found if f.path == path) for name, path in files.items()}
    assert by_name["sd15"].id == "sd15/dreamshaper_8"  # path inside the kind folder, no suffix
    assert by_name["lora_sdxl"].id == "xl/pixel_art"  # a space is not part of an id
    assert by_name["sd15_inpaint"].model_kind == "inpaint"
    assert by_name["controlnet_sd15"].detail == "canny"
    assert by_name["vae"].detail.startswith("4 latent channels")
    assert by_name["clip_vision"].detail == "ViT-H"
    assert by_name["clip_l"].detail == "CLIP-L" and by_name["t5"].detail == "T5"
    assert "Easel runs SD 1.x, SD 2.x and SDXL" in by_name["flux_checkpoint"].reason
    specs = {s.id: s for s in result.specs()}
    assert set(specs) == {"sd15/dreamshaper_8", "sd15-inpainting", "v2-1_768", "juggernautXL",
                          "control_v11p_sd15_canny", "controlnet-depth-sdxl"}
    assert specs["control_v11p_sd15_canny"].kind == "controlnet"
    assert specs["juggernautXL"].family == "sdxl"
    assert [p.name for p in result.lora_dirs] == ["loras"]
    assert [p.name for p in result.embedding_dirs] == ["embeddings"]
    assert [p.name for p in result.upscaler_dirs] == ["upscale_models"]


def test_ids_are_stable_and_unique(tmp_path):
    for root in ("one", "two"):
        write(tmp_path / root / "models/checkpoints/model.safetensors", FILES["sd15"])
    first = [f.id for f in scan([tmp_path / "one", tmp_path / "two"]).found]
    again = [f.id for f in scan([tmp_path / "one", tmp_path / "two"]).found]
    assert first == again
    assert first[0] == "model" and first[1].startswith("model~") and len(first[1]) == len("model~") + 6
    # a configured model's id is never taken by a found one
    assert scan([tmp_path / "one"], taken=["model"]).found[0].id.startswith("model~")


def test_refused_and_unreadable_files_are_listed_with_their_reason(tmp_path, header_reads):
    root = tmp_path / "ComfyUI"
    good = write(root / "models/checkpoints/good.safetensors", FILES["sd15"])
    marker = tmp_path / "unpickled"
    ckpt = write_pickle(root / "models/checkpoints/old.ckpt", marker)
    empty = root / "models/checkpoints/empty.safetensors"
    empty.write_bytes(b"")
    broken = root / "models/loras/broken.safetensors"
    broken.parent.mkdir(parents=True)
    broken.write_bytes((10**6).to_bytes(8, "little") + b"{not json")
    gone = root / "models/loras/gone.safetensors"
    gone.symlink_to(root / "models/loras/deleted.safetensors")  # dangling, inside the folder
    outside = write(tmp_path / "elsewhere" / "secret.safetensors", FILES["sd15"])
    (root / "models/checkpoints/linked.safetensors").symlink_to(outside)
    (root / "models/checkpoints/linked-folder").symlink_to(outside.parent, target_is_directory=True)
    disguised = write_pickle(root / "models/checkpoints/disguised.safetensors", marker)
    inside = root / "models/checkpoints/alias.safetensors"
    inside.symlink_to(good)  # a link that stays inside the folder is fine
    result = scan([root])
    by_name = {f.path.name: f for f in result.found}
    assert by_name["good.safetensors"].served and by_name["alias.safetensors"].served
    assert by_name["old.ckpt"].status == "refused" and "pickle" in by_name["old.ckpt"].reason
    assert by_name["empty.safetensors"].status == "unreadable" and "0 bytes" in by_name["empty.safetensors"].reason
    assert by_name["broken.safetensors"].status == "unreadable"
    assert "not a readable .safetensors" in by_name["broken.safetensors"].reason
    assert by_name["gone.safetensors"].status == "unreadable"
    assert by_name["disguised.safetensors"].status == "refused" and "pickle" in by_name["disguised.safetensors"].reason
    assert disguised not in header_reads
    for name in ("linked.safetensors", "linked-folder"):
        assert by_name[name].status == "refused" and "links outside" in by_name[name].reason
    assert not marker.exists()
    assert ckpt not in header_reads and outside not in header_reads
    assert all(p.resolve() != outside for p in header_reads)
    assert [s.id for s in result.specs()] == ["alias", "good"]


def test_a_kind_folder_that_links_outside_is_listed_as_refused(tmp_path, capsys):
    """``models/loras`` as a link to a LoRA folder elsewhere (a common set-up) is refused like any
    link leading outside, and said so; it was skipped in silence ("no model files found")."""
    from backend.cli import main

    root = tmp_path / "ComfyUI"
    write(root / "models/checkpoints/good.safetensors", FILES["sd15"])
    elsewhere = write(tmp_path / "shared" / "loras" / "ink.safetensors", FILES["lora_sd15"]).parent
    (root / "models" / "loras").symlink_to(elsewhere, target_is_directory=True)
    (root / "models" / "controlnet").symlink_to(root / "models" / "checkpoints", target_is_directory=True)  # inside
    result = scan([root])
    refused = [f for f in result.found if f.status == "refused"]
    assert [(f.path, f.kind) for f in refused] == [(root / "models" / "loras", "lora")]
    assert "links outside" in refused[0].reason and "--models-dir of its own" in refused[0].reason
    assert result.lora_dirs == [] and [s.id for s in result.specs()] == ["good"]
    assert main(["models", "--models-dir", str(root)]) == 0
    assert "refused (1):" in capsys.readouterr().out


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_file_without_read_permission_is_listed_as_unreadable(tmp_path):
    path = write(tmp_path / "models/checkpoints/locked.safetensors", FILES["sd15"])
    path.chmod(0)
    try:
        found = scan([tmp_path]).found[0]
    finally:
        path.chmod(0o644)
    assert found.status == "unreadable" and "permission" in found.reason


def test_a_plain_folder_is_judged_by_headers_alone(tmp_path):
    for name in ("sd15", "lora_sd15", "controlnet_sdxl", "vae"):
        write(tmp_path / f"{name}.safetensors", FILES[name])
    (tmp_path / "notes.txt").write_text("not a model")
    layout, folders = layout_folders(tmp_path)
    assert layout == "folder" and folders == [(tmp_path, "", "")]
    kinds = {f.path.stem: (f.kind, f.status) for f in scan([tmp_path]).found}
    assert kinds == {"sd15": ("checkpoint", "served"), "lora_sd15": ("lora", "served"),
                     "controlnet_sdxl": ("controlnet", "served"), "vae": ("vae", "listed")}


def test_the_header_overrules_the_folder(tmp_path):
    write(tmp_path / "models/loras/actually-a-checkpoint.safetensors", FILES["sd15"])
    found = scan([tmp_path]).found[0]
    assert (found.kind, found.status) == ("checkpoint", "served")


def test_kind_from_header_knows_nothing_of_unknown_tensors():
    assert kind_from_header({"weight": {"shape": [3, 3, 3]}, "bias": {"shape": [3]}}) == ("", "", "")


def test_rescans_read_only_new_or_changed_files(tmp_path, header_reads):
    write(tmp_path / "models/checkpoints/a.safetensors", FILES["sd15"])
    cache: dict = {}
    scan([tmp_path], cache=cache)
    header_reads.clear()
    scan([tmp_path], cache=cache)
    assert header_reads == []
    write(tmp_path / "models/checkpoints/b.safetensors", FILES["sdxl"])
    ids = [f.id for f in scan([tmp_path], cache=cache).found]
    assert ids == ["a", "b"] and {p.name for p in header_reads} == {"b.safetensors"}


def test_models_cli_lists_a_folder_without_a_server(tmp_path, capsys):
    build_tree(tmp_path, "a1111")
    write_pickle(tmp_path / "models/Stable-diffusion/old.ckpt", tmp_path / "marker")
    assert main(["models", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path}: a1111 layout" in out
    assert "sd15/dreamshaper_8" in out and "checkpoint sd15, base" in out
    assert "refused (1):" in out and "old.ckpt" in out and "pickle-based" in out
    assert main(["models", "--models-dir", str(tmp_path / "missing")]) == 2


def test_models_dirs_in_the_toml_config(tmp_path):
    from backend.config import ConfigError, load_toml

    config = tmp_path / "easel.toml"
    config.write_text(f'models_dirs = ["{tmp_path}"]\n')
    assert load_toml(config)["models_dirs"] == (tmp_path,)
    from backend.cli import build_parser, server_config

    args = build_parser().parse_args(["serve", "--config", str(config), "--models-dir", str(tmp_path)])
    assert server_config(args).models_dirs == (tmp_path,)
    with pytest.raises(ConfigError, match="models_dirs"):
        server_config(build_parser().parse_args(["serve", "--models-dir", str(tmp_path / "nope")]))


@pytest.mark.parametrize("given", ["embedding_dirs", "lora_dirs"])
def test_an_addon_folder_overlapping_a_models_dirs_own_is_refused_at_start(tmp_path, given):
    """--embedding-dir ComfyUI/models/loras with --models-dir ComfyUI listed every LoRA as an embedding
    too, whose trigger matched prompts: every job failed. Refused at start, as for two add-on flags."""
    from backend.config import ConfigError, ServerConfig

    root = tmp_path / "ComfyUI"
    write(root / "models/checkpoints/good.safetensors", FILES["sd15"])
    (root / "models/loras").mkdir()
    (root / "models/embeddings").mkdir()
    other = root / "models" / ("loras" if given == "embedding_dirs" else "embeddings")
    with pytest.raises(ConfigError, match="give LoRAs and embeddings folders of their own") as caught:
        ServerConfig(models_dirs=(root,), **{given: (other,)})
    assert str(other) in str(caught.value)
    assert ServerConfig(models_dirs=(root,)).models_dirs == (root,)  # its own loras and embeddings are apart


# --------------------------------------------------------------------------- an engine over a folder


@pytest.fixture(scope="module")
def comfy(tmp_path_factory) -> Path:
    """A ComfyUI folder with a tiny diffusers model in ``models/diffusers`` and a tiny LoRA for it."""
    root = tmp_path_factory.mktemp("ComfyUI")
    model = demo.build_tiny_model(root / "models" / "diffusers" / "tiny-sd", "base")
    demo.build_tiny_lora(model, root / "models" / "loras" / "styles" / "ink.safetensors", seed=3)
    write(root / "models" / "vae" / "vae.safetensors", FILES["vae"])
    return root


def test_engine_serves_a_comfyui_folder_with_no_other_setting(comfy, tmp_path):
    engine = Engine(EngineConfig(models_dirs=(comfy,), device="cpu", cache_folder=tmp_path))
    assert not engine.demo
    infos = {i.id: i for i in engine.model_infos()}
    assert set(infos) == {"tiny-sd"} and infos["tiny-sd"].kind == "base"
    loras, _ = engine.addon_infos()
    assert [lora.id for lora in loras] == ["styles/ink"]

    def txt2img(loras=()):
        submit = SubmitJob("j", "txt2img", JobParams(prompt="a cat", width=64, height=64, steps=2, seed=5,
                                                     loras=tuple(LoraWeight(i, 1.0) for i in loras)))
        return pixels(engine.run(engine.prepare(submit, {}), Recorder()).images[0])

    plain, styled = txt2img(), txt2img(["styles/ink"])
    assert plain.shape == (64, 64, 4) and not np.array_equal(plain, styled)


def test_listing_rescans_the_folders(comfy, tmp_path):
    root = tmp_path / "ComfyUI"
    write(root / "models/controlnet/control_sd15_canny.safetensors", FILES["controlnet_sd15"])
    engine = Engine(EngineConfig(models_dirs=(root,), device="cpu", cache_folder=tmp_path))
    assert engine.demo  # no checkpoint at start: the demo models keep the server useful
    assert [i.id for i in engine.model_infos() if not i.demo] == ["control_sd15_canny"]
    added = write(root / "models/checkpoints/later.safetensors", FILES["sd15"])
    ids = [i.id for i in engine.model_infos()]
    assert "later" in ids and engine.models.facts("later").family == "sd15"
    added.unlink()
    assert "later" not in [i.id for i in engine.model_infos()]
    # a job naming a model put there since the last listing finds it
    write(root / "models/checkpoints/fresh.safetensors", FILES["sdxl"])
    prepared = engine.prepare(SubmitJob("j", "txt2img", JobParams(model="fresh")), {})
    assert prepared.model == "fresh" and prepared.width == 1024
