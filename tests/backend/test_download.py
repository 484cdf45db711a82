"""``easel download`` against a hub-shaped HTTP server on loopback (``HF_ENDPOINT`` pointed at it;
tests/backend/hub_server.py). The server can cut a transfer midway, announce a
wrong checksum, or a file larger than the disk. Nothing is mocked but the free-space figure in one
test (a real disk cannot be filled for a test).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from backend import download
from backend.cli import main
from backend.download import (
    PRESETS, ChecksumError, DiskSpaceError, DownloadError, Preset, RemoteFile, fetch, file_url, head, install, needs,
)
from hub_server import COMMIT, Hub

@pytest.fixture
def hub(monkeypatch):
    server = Hub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield server
    server.close()


BLOB = bytes(range(256)) * 4096 * 3  # 3 MiB: several chunks


def test_head_reads_the_hubs_headers(hub):
    hub.files["owner/repo/model.safetensors"] = BLOB
    remote = head(file_url("owner/repo", "model.safetensors"))
    assert (remote.size, remote.sha256, remote.commit) == (len(BLOB), hashlib.sha256(BLOB).hexdigest(), COMMIT)
    with pytest.raises(DownloadError, match="does not exist"):
        head(file_url("owner/repo", "nothing.safetensors"))


def test_a_file_arrives_with_progress_and_is_verified(hub, tmp_path):
    hub.files["owner/repo/model.safetensors"] = BLOB
    seen: list[tuple[int, int]] = []
    dest = fetch(head(file_url("owner/repo", "model.safetensors")), tmp_path / "model.safetensors",
                 progress=lambda done, total: seen.append((done, total)))
    assert dest.read_bytes() == BLOB and not (tmp_path / "model.safetensors.part").exists()
    assert seen[-1] == (len(BLOB), len(BLOB)) and len(seen) >= 3
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_transfer_cut_midway_is_resumed_from_where_it_stopped(hub, tmp_path):
    hub.files["owner/repo/model.safetensors"] = BLOB
    hub.cut_after = 1_000_000
    dest = fetch(head(file_url("owner/repo", "model.safetensors")), tmp_path / "m.safetensors", retry_wait=0)
    assert dest.read_bytes() == BLOB
    ranges = [r[2] for r in hub.gets("/cdn/")]
    assert ranges == ["", "bytes=1000000-"]  # the second GET asked only for the rest


def test_a_part_left_by_an_earlier_run_is_resumed(hub, tmp_path):
    hub.files["owner/repo/model.safetensors"] = BLOB
    (tmp_path / "m.safetensors.part").write_bytes(BLOB[:500_000])
    fetch(head(file_url("owner/repo", "model.safetensors")), tmp_path / "m.safetensors")
    assert (tmp_path / "m.safetensors").read_bytes() == BLOB
    assert [r[2] for r in hub.gets("/cdn/")] == ["bytes=500000-"]


def test_a_checksum_mismatch_is_refused_and_the_partial_file_removed(hub, tmp_path):
    hub.files["owner/repo/model.safetensors"] = BLOB
    hub.lie = "ab" * 32
    with pytest.raises(ChecksumError, match="SHA-256"):
        fetch(head(file_url("owner/repo", "model.safetensors")), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_too_little_disk_space_is_refused_before_the_first_byte(hub, tmp_path):
    hub.files["owner/repo/huge.safetensors"] = BLOB
    hub.announce = 10**15  # a petabyte: no disk has that free
    with pytest.raises(DiskSpaceError, match="needs 1000000.00 GB more"):
        fetch(head(file_url("owner/repo", "huge.safetensors")), tmp_path / "huge.safetensors")
    assert hub.gets("/cdn/") == [] and list(tmp_path.iterdir()) == []
    hub.announce = None  # the real size, but a disk said to be nearly full (the one stubbed figure)
    with pytest.raises(DiskSpaceError):
        fetch(head(file_url("owner/repo", "huge.safetensors")), tmp_path / "huge.safetensors",
              free_bytes=lambda folder: len(BLOB))
    assert hub.gets("/cdn/") == []


def test_the_token_goes_to_the_endpoint_only(hub, tmp_path):
    hub.files["owner/repo/model.safetensors"] = BLOB
    remote = head(file_url("owner/repo", "model.safetensors"), token="secret")
    fetch(remote, tmp_path / "m.safetensors", token="secret")
    assert all(auth == "Bearer secret" for _, auth in hub.auth)  # same host here: the token is kept
    # (the cross-host drop is urllib's redirect handler: _SameHostAuth, checked directly)
    import urllib.request

    request = urllib.request.Request("http://a.example/x", headers={"Authorization": "Bearer secret"})
    new = download._SameHostAuth().redirect_request(request, None, 302, "Found", {}, "http://cdn.example/x")
    assert not new.has_header("Authorization")


def preset_for_tests() -> Preset:
    return Preset("test-sd15", "sd15", "base", "a test checkpoint",
                  (RemoteFile("owner/repo", "model.safetensors", "checkpoint", "model.safetensors"),
                   RemoteFile("lllyasviel/Annotators", "netG.pth", "hf-cache")), 0)


def test_install_places_files_by_layout_and_into_the_hub_cache(hub, tmp_path):
    hub.files["owner/repo/model.safetensors"] = BLOB
    hub.files["lllyasviel/Annotators/netG.pth"] = b"annotator weights"
    a1111 = tmp_path / "webui"
    (a1111 / "models" / "Stable-diffusion").mkdir(parents=True)
    cache = tmp_path / "hub"
    paths = install(preset_for_tests(), a1111, hub_cache=cache)
    assert paths[0] == a1111 / "models" / "Stable-diffusion" / "model.safetensors"
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache("lllyasviel/Annotators", "netG.pth", cache_dir=str(cache))
    assert isinstance(found, str) and Path(found).read_bytes() == b"annotator weights"
    empty = tmp_path / "fresh"
    assert install(preset_for_tests(), empty, hub_cache=cache)[0] == empty / "models" / "checkpoints" / "model.safetensors"
    lineart = [n for n in needs([], {}, cache) if n.feature == "preprocessor lineart_anime"]
    assert lineart[0].have


def test_downloaded_taesd_is_what_the_server_previews_with(hub, tmp_path, monkeypatch):
    from backend import demo
    from backend.config import ServerConfig
    from backend.engine import EngineConfig

    taesd = demo.build_tiny_taesd(tmp_path / "taesd")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        hub.files[f"madebyollin/taesd/{name}"] = (taesd / name).read_bytes()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    assert EngineConfig.from_settings(ServerConfig()).taesd == {}
    install(PRESETS["taesd"], tmp_path / "models")
    assert EngineConfig.from_settings(ServerConfig()).taesd == {"sd15": "madebyollin/taesd"}
    from backend.previews import load_taesd

    assert type(load_taesd("madebyollin/taesd", "cpu", None)).__name__ == "AutoencoderTiny"


def test_cli_download_and_missing(hub, tmp_path, capsys, monkeypatch):
    hub.files["stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors"] = BLOB
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "checkpoints").mkdir(parents=True)
    assert main(["download"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in PRESETS)
    assert main(["download", "sd15", "--to", str(comfy)]) == 0
    out, err = capsys.readouterr()
    assert (comfy / "models/checkpoints/v1-5-pruned-emaonly.safetensors").read_bytes() == BLOB
    assert "100%" in err and str(comfy / "models/checkpoints/v1-5-pruned-emaonly.safetensors") in out
    assert main(["download", "nonsense"]) == 2
    assert main(["download", "sdxl", "--to", str(comfy)]) == 1  # not on this hub: a sentence, exit 1
    assert "does not exist" in capsys.readouterr().err


def test_models_missing_names_each_fix(tmp_path, capsys, monkeypatch):
    from safetensors.numpy import save_file
    import numpy as np

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    checkpoints = tmp_path / "models" / "checkpoints"
    checkpoints.mkdir(parents=True)
    save_file({"model.diffusion_model.input_blocks.0.0.weight": np.zeros((2, 4, 3, 3), np.float16),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": np.zeros(768, np.float16)},
              str(checkpoints / "mine.safetensors"))
    assert main(["models", "--missing", "--models-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "a canny ControlNet for sd15" in out and "easel download sd15-canny" in out
    assert "easel download annotators" in out and "easel download taesd" in out
    assert "easel download sdxl" not in out  # a family with no checkpoint here is not asked for
    assert "easel download taesdxl" not in out and "(sdxl)" not in out  # nor its previews
    assert main(["models", "--missing", "--models-dir", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'} is not a folder" in capsys.readouterr().err


def test_previews_are_needed_for_the_families_found():
    """TAESD serves SD 1.x and 2.x; TAESDXL serves SDXL; with no checkpoint, both are listed."""
    def previews(families):
        return sorted(n.fix for n in needs(families, {}) if n.feature == "sharp previews")

    assert previews(["sd15"]) == previews(["sd2"]) == ["easel download taesd"]
    assert previews(["sdxl"]) == ["easel download taesdxl"]
    assert previews([]) == previews(["sd15", "sdxl"]) == ["easel download taesd", "easel download taesdxl"]
    # A folder with only a Flux.1 checkpoint has a base model: no SD download is asked for
    assert [n for n in needs(["flux"], {}) if n.feature in ("generate", "sharp previews")] == []
