"""Add-on and model files: overlapping LoRA/embedding folders are refused at start with a sentence;
files are recognised by their content (a safetensors header, a pickle or a torch zip), not their
suffix; and every open re-checks that the real path is still inside its folder.

Real files on disk, the real add-on store and loaders; the pickle payloads are harmless markers.
"""
from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest

from backend.config import ConfigError, ServerConfig


@pytest.mark.parametrize("layout", ["same", "embeddings-inside", "loras-inside", "via-symlink"])
def test_overlapping_lora_and_embedding_folders_are_refused_at_start(tmp_path, layout):
    (tmp_path / "addons" / "sub").mkdir(parents=True)
    loras, embeddings = {
        "same": (tmp_path / "addons", tmp_path / "addons"),
        "embeddings-inside": (tmp_path / "addons", tmp_path / "addons" / "sub"),
        "loras-inside": (tmp_path / "addons" / "sub", tmp_path / "addons"),
        "via-symlink": (tmp_path / "addons", tmp_path / "link"),
    }[layout]
    if layout == "via-symlink":
        (tmp_path / "link").symlink_to(tmp_path / "addons" / "sub")
    with pytest.raises(ConfigError) as caught:
        ServerConfig(lora_dirs=(loras,), embedding_dirs=(embeddings,))
    message = str(caught.value)
    assert str(loras) in message and str(embeddings) in message
    assert "give LoRAs and embeddings folders of their own" in message


def test_separate_folders_side_by_side_are_fine(tmp_path):
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras-extra").mkdir()  # a name that starts like the other is not inside it
    config = ServerConfig(lora_dirs=(tmp_path / "loras",), embedding_dirs=(tmp_path / "loras-extra",))
    assert config.embedding_dirs == (tmp_path / "loras-extra",)


# --------------------------------------------------------------------------- content, not suffix

class Marker:
    """Unpickling this appends to a list (a harmless stand-in for a payload that runs code)."""

    ran: list[str] = []

    def __reduce__(self):
        return (Marker.ran.append, ("unpickled",))


def _write_lora(path: Path) -> Path:
    """A minimal SD 1.x kohya LoRA (the tensor names and shapes the store reads)."""
    import torch
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight": torch.zeros(4, 768),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight": torch.zeros(320, 4)},
              str(path))
    return path


def _write_pickle(path: Path, how: str) -> Path:
    import torch

    if how == "pickle":
        path.write_bytes(pickle.dumps(Marker(), protocol=4))
    elif how == "torch-zip":
        torch.save({"x": torch.zeros(1)}, str(path))
    else:  # torch's legacy format: a bare pickle stream
        torch.save({"x": torch.zeros(1)}, str(path), _use_new_zipfile_serialization=False)
    return path


@pytest.mark.parametrize("how, kind", [("pickle", "pickle"), ("torch-zip", "torch-zip"), ("legacy", "pickle")])
@pytest.mark.parametrize("name", ["evil.pkl", "evil", "evil.", "evil.safetensors"])
def test_pickles_are_recognised_by_content_whatever_their_name(tmp_path, how, kind, name):
    from backend.filesafety import is_pickle_based, weights_kind

    path = _write_pickle(tmp_path / name, how)
    assert weights_kind(path) == kind and is_pickle_based(path)


@pytest.mark.parametrize("name", ["lora.safetensors", "lora", "lora.", "lora.bin"])
def test_safetensors_are_recognised_by_content_whatever_their_name(tmp_path, name):
    from backend.filesafety import SAFETENSORS, weights_kind

    assert weights_kind(_write_lora(tmp_path / name)) == SAFETENSORS
    (tmp_path / "notes.txt").write_text("{}")
    assert weights_kind(tmp_path / "notes.txt") == "other"


@pytest.mark.parametrize("name", ["model.pkl", "model", "model.", "model.safetensors"])
def test_a_pickled_checkpoint_is_refused_at_start_whatever_its_name(tmp_path, name):
    from backend.models import ModelConfigError, ModelSpec, check_spec

    path = _write_pickle(tmp_path / name, "legacy")
    with pytest.raises(ModelConfigError) as caught:
        check_spec(ModelSpec("m", str(path)), allow_unsafe=False)
    assert "pickle-based (whatever its name says)" in str(caught.value) and "--allow-unsafe-checkpoints" in str(caught.value)


def test_the_lora_folder_lists_by_content_and_never_unpickles(tmp_path):
    from backend.addons import AddonStore

    folder = tmp_path / "loras"
    folder.mkdir()
    _write_lora(folder / "plain.safetensors")
    _write_lora(folder / "nosuffix")
    for name in ("evil.pkl", "evil2", "evil3.", "evil4.safetensors", "evil5.pt"):
        _write_pickle(folder / name, "pickle")
    Marker.ran.clear()
    store = AddonStore([folder])
    loras, _ = store.infos()
    assert sorted(info.id for info in loras) == ["nosuffix", "plain"]
    assert Marker.ran == []
    # With allow_unsafe the pickles are listed (family unknown) but still not unpickled by the scan.
    unsafe = AddonStore([folder], allow_unsafe=True)
    assert {"evil", "evil2", "evil3.", "evil4", "evil5"} <= {info.id for info in unsafe.infos()[0]}
    assert Marker.ran == []


def test_a_lora_swapped_for_a_link_outside_its_folder_is_not_read(tmp_path, opened_files):
    from backend.addons import AddonStore
    from backend.errors import JobError
    from protocol import ErrorCode

    folder, outside = tmp_path / "loras", tmp_path / "secret"
    folder.mkdir()
    outside.mkdir()
    _write_lora(folder / "style.safetensors")
    _write_lora(outside / "other.safetensors")
    store = AddonStore([folder])
    addon = store.lora("style")
    assert store.resolve_path(addon) == (folder / "style.safetensors").resolve()
    (folder / "style.safetensors").unlink()  # swapped after the scan
    (folder / "style.safetensors").symlink_to(outside / "other.safetensors")
    with opened_files() as opened:
        with pytest.raises(JobError) as caught:
            store.resolve_path(addon)
    assert caught.value.code is ErrorCode.MODEL_UNAVAILABLE and opened.under(outside) == []


def test_a_lora_swapped_for_a_pickle_after_the_scan_is_not_read(tmp_path):
    from backend.addons import AddonStore
    from backend.errors import JobError

    folder = tmp_path / "loras"
    folder.mkdir()
    _write_lora(folder / "style.safetensors")
    store = AddonStore([folder])
    addon = store.lora("style")
    _write_pickle(folder / "style.safetensors", "pickle")
    Marker.ran.clear()
    with pytest.raises(JobError):
        store.resolve_path(addon)
    assert Marker.ran == []
