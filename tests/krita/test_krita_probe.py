"""The settings dialog's connection test (probe.py) against a real ``easel serve --token``."""
from __future__ import annotations

import asyncio
import socket

from easel_krita.probe import probe
from krita_backend import SERVER_TOKEN as TOKEN


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_right_token_connects_and_brings_the_servers_models(token_server):
    result = asyncio.run(probe(token_server.url, TOKEN))
    assert result.ok and result.sentence.startswith("Connected to ")
    assert result.models and all(model_id for _, model_id in result.models)
    assert result.max_image_side == 8192


def test_a_wrong_token_is_said_in_words_naming_the_token(token_server):
    result = asyncio.run(probe(token_server.url, "wrong-token-0000"))
    assert not result.ok
    assert f"The server at {token_server.url} refused the token \"wr…00\" (16 characters)" in result.sentence
    assert "wrong-token-0000" not in result.sentence and "Start it with" not in result.sentence


def test_no_token_for_a_token_server_says_a_token_is_needed(token_server):
    result = asyncio.run(probe(token_server.url, ""))
    assert not result.ok and "needs a token" in result.sentence and "Token" in result.sentence


def test_nothing_listening_says_cannot_reach():
    url = f"ws://127.0.0.1:{_free_port()}"
    result = asyncio.run(probe(url, "", timeout=2.0))
    assert not result.ok and result.sentence.startswith(f"Cannot reach the Easel server at {url}")
    assert "easel serve" in result.sentence
