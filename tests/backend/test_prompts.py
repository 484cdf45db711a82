"""Prompts: A1111 emphasis parsed exactly, weights reaching the text embedding through compel,
prompts longer than 77 tokens, plain prompts identical to diffusers' own encoding, and the cache."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.errors import JobError
from backend.prompts import PromptEncoder, encode, parse, plain_text
from protocol import ErrorCode, JobParams, SubmitJob
from tiny_guidance import guided_dirs, guided_engine  # noqa: F401 - fixtures
from tiny_models import Recorder, model_dirs, pixels  # noqa: F401 - fixture


@pytest.mark.parametrize("prompt, fragments", [
    ("a cat", [("a cat", 1.0)]),
    ("a (cat)", [("a ", 1.0), ("cat", 1.1)]),
    ("a ((cat))", [("a ", 1.0), ("cat", 1.21)]),
    ("a [cat]", [("a ", 1.0), ("cat", round(1 / 1.1, 6))]),
    ("a (red cat:1.3) sits", [("a ", 1.0), ("red cat", 1.3), (" sits", 1.0)]),
    ("(a (cat:1.5):1.2)", [("a ", 1.2), ("cat", 1.8)]),
    ("a \\(literal\\) cat", [("a (literal) cat", 1.0)]),
    ("(unclosed cat", [("unclosed cat", 1.1)]),
    ("closing) only", [("closing) only", 1.0)]),
    ("time: 5 (x:0)", [("time: 5 ", 1.0), ("x", 0.0)]),
    ("", [("", 1.0)]),
])
def test_a1111_emphasis_rules(prompt, fragments):
    assert parse(prompt) == fragments


def test_plain_text_drops_the_syntax():
    assert plain_text("a (red cat:1.3), [blurry]") == "a red cat, blurry"


@pytest.mark.parametrize("prompt, message", [
    ("a (cat:5)", "the emphasis weight 5 in the prompt must be between 0 and 3, e.g. (word:1.3)"),
    ("a (cat:-1)", "the emphasis weight -1 in the prompt must be between 0 and 3"),
])
def test_out_of_range_weights_are_refused_before_any_model_work(guided_engine, prompt, message):
    with pytest.raises(JobError) as caught:
        guided_engine.prepare(SubmitJob("p", "txt2img", JobParams(model="tiny", prompt=prompt)), {})
    assert caught.value.code is ErrorCode.INVALID_PARAMETER and caught.value.message.startswith(message)


def root_of(engine, model_id: str):
    model, _ = engine.models.get(model_id)
    return model.root


@pytest.mark.parametrize("model_id", ["tiny", "tiny-xl", "tiny-sd2"])
def test_plain_prompts_encode_exactly_as_diffusers_does(guided_engine, model_id):
    root = root_of(guided_engine, model_id)
    ours = encode(root, "", "a red cat", "blurry")
    if hasattr(root, "text_encoder_2"):
        theirs = root.encode_prompt("a red cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                    negative_prompt="blurry")
        pairs = zip((ours.prompt_embeds, ours.negative_prompt_embeds, ours.pooled_prompt_embeds,
                     ours.negative_pooled_prompt_embeds), theirs)
    else:
        theirs = root.encode_prompt("a red cat", "cpu", 1, True, negative_prompt="blurry")
        pairs = zip((ours.prompt_embeds, ours.negative_prompt_embeds), theirs)
    for a, b in pairs:
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_sdxl_empty_negative_is_zeros_as_in_diffusers(guided_engine):
    root = root_of(guided_engine, "tiny-xl")
    ours = encode(root, "sdxl", "a red cat", "")
    theirs = root.encode_prompt("a red cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    assert torch.equal(ours.negative_prompt_embeds, theirs[1]) and not ours.negative_prompt_embeds.any()
    assert not ours.negative_pooled_prompt_embeds.any()


@pytest.mark.parametrize("model_id", ["tiny", "tiny-xl"])
def test_emphasis_changes_the_text_embedding(guided_engine, model_id):
    root = root_of(guided_engine, model_id)
    plain = encode(root, "", "a red cat", "").prompt_embeds
    stronger = encode(root, "", "a (red:1.5) cat", "").prompt_embeds
    weaker = encode(root, "", "a [red] cat", "").prompt_embeds
    unit = encode(root, "", "a (red:1.0) cat", "").prompt_embeds
    assert not torch.allclose(plain, stronger) and not torch.allclose(plain, weaker)
    assert not torch.allclose(stronger, weaker)
    assert torch.allclose(plain, unit, atol=1e-6)  # weight 1 is the plain word


def test_prompts_longer_than_77_tokens_are_encoded_whole(guided_engine):
    root = root_of(guided_engine, "tiny")
    words = " ".join(f"word{i}" for i in range(60))  # ~300 tokens with the tiny byte-level tokenizer
    long = encode(root, "", words + ", end", "blurry")
    cut = encode(root, "", words + ", other end", "blurry")
    assert long.prompt_embeds.shape[1] > 77 and long.prompt_embeds.shape[1] % 77 == 0
    assert long.negative_prompt_embeds.shape == long.prompt_embeds.shape  # the negative is padded to match
    assert not torch.allclose(long.prompt_embeds, cut.prompt_embeds)  # the words past token 77 count


@pytest.mark.parametrize("model_id", ["tiny", "tiny-xl"])
def test_long_and_weighted_prompts_run_in_a_job(guided_engine, model_id):
    words = " ".join(f"(word{i}:1.2)" if i % 7 == 0 else f"word{i}" for i in range(60))
    submit = SubmitJob("p", "txt2img", JobParams(model=model_id, prompt=words, negative_prompt="[ugly]", steps=2, seed=1,
                                                 width=64, height=64))
    output = guided_engine.run(guided_engine.prepare(submit, {}), Recorder())
    assert pixels(output.images[0]).shape == (64, 64, 4)


def test_the_cache_is_keyed_and_bounded(guided_engine):
    encoder = PromptEncoder(size=2)
    made = []

    def make(value):
        return lambda: made.append(value) or value

    assert encoder.get(("m", "a"), make("A")) == "A"
    assert encoder.get(("m", "a"), make("again")) == "A"
    encoder.get(("m", "b"), make("B"))
    encoder.get(("m", "c"), make("C"))  # pushes out ("m", "a")
    assert encoder.get(("m", "a"), make("A2")) == "A2"
    assert made == ["A", "B", "C", "A2"] and len(encoder) == 2 and (encoder.hits, encoder.misses) == (1, 4)
    encoder.forget("m")
    assert len(encoder) == 0


def test_a_repeated_job_skips_the_text_encoders(guided_engine):
    submit = SubmitJob("p", "txt2img", JobParams(model="tiny", prompt="a cached (prompt:1.2)", steps=1, seed=2,
                                                 width=64, height=64))
    first = guided_engine.run(guided_engine.prepare(submit, {}), Recorder())
    misses = guided_engine.prompts.misses
    second = guided_engine.run(guided_engine.prepare(submit, {}), Recorder())
    assert guided_engine.prompts.misses == misses and np.array_equal(pixels(first.images[0]), pixels(second.images[0]))
