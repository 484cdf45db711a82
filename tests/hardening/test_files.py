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
