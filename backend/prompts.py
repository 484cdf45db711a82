"""Prompts → text embeddings: A1111 emphasis, prompts of any length, and a small cache.

Syntax (A1111's, which painters already know): ``(word)`` multiplies the attention to ``word`` by
1.1, ``((word))`` by 1.21, ``[word]`` divides it by 1.1, ``(word:1.3)`` sets it to 1.3, and ``\\(``
``\\)`` ``\\[`` ``\\]`` are literal brackets. :func:`parse` turns a prompt into (text, weight) fragments
— pure Python, so :mod:`backend.params` checks prompts with it before any model work.

Encoding goes through compel's ``EmbeddingsProvider``: it weights the fragments and, for a prompt
longer than the text encoder's 77 tokens, encodes 77-token chunks and concatenates them (the
negative prompt is padded with empty-prompt chunks to the same length). SD 1.x/2.x use the last
hidden state; SDXL concatenates both encoders' penultimate states and takes the pooled embedding
from the second — the same tensors diffusers' own ``encode_prompt`` makes for an unweighted prompt.

:class:`PromptEncoder` keeps the last :data:`CACHE_SIZE` results per (model, prompt, negative
prompt, LoRAs, embeddings), so a live preview that re-runs the same prompt skips the text encoders.
"""
from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping

from .errors import invalid

#: Text-embedding results kept (each is a few hundred KB on the device).
CACHE_SIZE = 32
#: Emphasis weights outside this range make noise; ``(word:0)`` removes a word.
MIN_WEIGHT, MAX_WEIGHT = 0.0, 3.0
ROUND, SQUARE = 1.1, 1 / 1.1

# Linear on every input: the weight's digits have one way to match (``\d+(\.\d*)?``, not the
# ambiguous ``\d+\.?\d*`` that backtracked quadratically on ``(:111…``), and a failed weight
# costs one scan of the digits or spaces after its colon, which no other colon re-scans.
_TOKENS = re.compile(r"\\[()\[\]\\]|\(|\[|:\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*\)|\)|\]|[^\\()\[\]:]+|:|\\")
_LOG_MAX = math.log(MAX_WEIGHT)


def parse(prompt: str, field: str = "prompt") -> list[tuple[str, float]]:
    """Split ``prompt`` into (text, weight) fragments by A1111's emphasis rules; neighbours of equal
    weight are merged. Unclosed brackets apply to the end of the prompt (as in A1111). Raises
    invalid_parameter for an explicit weight outside [0, 3], and for text whose nested brackets
    multiply to more than 3. Linear in the prompt's length: each bracket pair is one span of
    fragments, and a fragment's weight is the product of the spans over it, summed as logarithms
    along one pass (so no weight overflows, and a deep nesting costs no more than a flat one)."""
    texts: list[str] = []
    spans: list[tuple[int, int, float]] = []  # (first fragment, end fragment, factor)
    round_open: list[int] = []
    square_open: list[int] = []
    for match in _TOKENS.finditer(prompt):
        text, weight = match.group(0), match.group(1)
        if text.startswith("\\") and len(text) == 2:
            texts.append(text[1])
        elif text == "(":
            round_open.append(len(texts))
        elif text == "[":
            square_open.append(len(texts))
        elif weight is not None and round_open:
            value = float(weight)
            if not MIN_WEIGHT <= value <= MAX_WEIGHT:
                raise invalid(f"the emphasis weight {weight} in the {field} must be between {MIN_WEIGHT:g} and "
                              f"{MAX_WEIGHT:g}, e.g. (word:1.3)", field=field)
            spans.append((round_open.pop(), len(texts), value))
        elif text == ")" and round_open:
            spans.append((round_open.pop(), len(texts), ROUND))
        elif text == "]" and square_open:
            spans.append((square_open.pop(), len(texts), SQUARE))
        else:
            texts.append(text)
    spans += [(start, len(texts), ROUND) for start in round_open]
    spans += [(start, len(texts), SQUARE) for start in square_open]
    # Per fragment: the change in the sum of log factors, and in the count of zero factors.
    log_step = [0.0] * (len(texts) + 1)
    zero_step = [0] * (len(texts) + 1)
    for start, end, factor in spans:
        if factor == 0:
            zero_step[start] += 1
            zero_step[end] -= 1
        else:
            log_step[start] += math.log(factor)
            log_step[end] -= math.log(factor)
    merged: list[tuple[list[str], float]] = []  # joined at the end: concatenating as we go is quadratic
    log_weight, zeros = 0.0, 0
    for index, text in enumerate(texts):
        log_weight += log_step[index]
        zeros += zero_step[index]
        if zeros:
            weight = 0.0
        elif log_weight > _LOG_MAX + 1e-9 and text.strip():
            reached = math.exp(min(log_weight, 709.0))
            raise invalid(f"the emphasis on {text.strip()[:40]!r} in the {field} reaches {reached:.3g}: "
                          f"nested brackets multiply (each ( ) by 1.1, (word:w) by w); at most {MAX_WEIGHT:g}, "
                          f"so use fewer brackets or one weight, e.g. (word:1.3)", field=field)
        else:
            weight = round(math.exp(log_weight), 6)
        if merged and merged[-1][1] == weight:
            merged[-1][0].append(text)
        else:
            merged.append(([text], weight))
    joined = [("".join(parts), weight) for parts, weight in merged]
    return [(text, weight) for text, weight in joined if text.strip()] or [("", 1.0)]


def plain_text(prompt: str) -> str:
    """The prompt without emphasis syntax (what the pooled SDXL embedding is made from)."""
    return "".join(text for text, _ in parse(prompt))


@dataclass(frozen=True)
class Conditioning:
    """Text embeddings for one job: what the pipelines take instead of prompt strings."""

    prompt_embeds: Any
    negative_prompt_embeds: Any
    pooled_prompt_embeds: Any = None
    negative_pooled_prompt_embeds: Any = None

    def kwargs(self) -> dict[str, Any]:
        """The pipeline arguments: the embeddings that are there (a distilled-guidance family has no negative)."""
        out = {"prompt_embeds": self.prompt_embeds, "negative_prompt_embeds": self.negative_prompt_embeds,
               "pooled_prompt_embeds": self.pooled_prompt_embeds,
               "negative_pooled_prompt_embeds": self.negative_pooled_prompt_embeds}
        return {name: value for name, value in out.items() if value is not None}


class _Expander:
    """compel's textual-inversion hook for one tokenizer: a multi-vector embedding's token becomes
    all its tokens (``name name_1 name_2``), by id, so nothing else in the prompt is re-tokenized."""

    def __init__(self, tokenizer: Any, expansions: Mapping[str, list[str]]) -> None:
        self._map = {}
        for trigger, tokens in expansions.items():
            if len(tokens) > 1:
                self._map[tokenizer.convert_tokens_to_ids(trigger)] = tokenizer.convert_tokens_to_ids(tokens)

    def expand_textual_inversion_token_ids_if_necessary(self, token_ids: list[int]) -> list[int]:
        if not self._map:
            return token_ids
        out: list[int] = []
        for token_id in token_ids:
            out.extend(self._map.get(token_id, [token_id]))
        return out


def encode(root: Any, family: str, prompt: str, negative: str, expansions: Mapping[str, list[str]] | None = None) -> Conditioning:
    """Encode ``prompt`` and ``negative`` with ``root``'s text encoders (any SD/SDXL pipeline)."""
    import torch
    from compel.embeddings_provider import EmbeddingsProvider, ReturnedEmbeddingsType

    sdxl = getattr(root, "text_encoder_2", None) is not None
    pairs = [(root.tokenizer, root.text_encoder)] + ([(root.tokenizer_2, root.text_encoder_2)] if sdxl else [])
    pairs = [(t, e) for t, e in pairs if t is not None and e is not None]
    kind = (ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED if sdxl
            else ReturnedEmbeddingsType.LAST_HIDDEN_STATES_NORMALIZED)
    device = getattr(root, "_execution_device", None) or pairs[0][1].device
    providers = [EmbeddingsProvider(tokenizer, encoder, textual_inversion_manager=_Expander(tokenizer, expansions or {}),
                                    truncate=False, returned_embeddings_type=kind, device=device)
                 for tokenizer, encoder in pairs]

    def embed(text: str, field: str) -> Any:
        fragments = parse(text, field)
        texts, weights = [f[0] for f in fragments], [f[1] for f in fragments]
        parts = [p.get_embeddings_for_weighted_prompt_fragments([texts], [weights], device=device) for p in providers]
        return torch.cat(parts, dim=-1)

    def empty_chunk() -> Any:
        return torch.cat([p.get_embeddings_for_weighted_prompt_fragments([[""]], [[1.0]], device=device)
                          for p in providers], dim=-1)

    with torch.no_grad():
        positive = embed(prompt, "prompt")
        zero_negative = sdxl and not negative and bool(getattr(root.config, "force_zeros_for_empty_prompt", False))
        if zero_negative:  # what SDXL's own encode_prompt does for an empty negative prompt
            negative_embeds = torch.zeros_like(positive)
        else:
            negative_embeds = embed(negative, "negative_prompt")
        if positive.shape[1] != negative_embeds.shape[1]:
            filler = torch.zeros_like(positive[:, :77]) if zero_negative else empty_chunk()
            longest = max(positive.shape[1], negative_embeds.shape[1])
            positive, negative_embeds = (_pad(t, filler, longest) for t in (positive, negative_embeds))
        pooled = negative_pooled = None
        if sdxl:
            pooled = providers[-1].get_pooled_embeddings([plain_text(prompt)], device=device)
            negative_pooled = (torch.zeros_like(pooled) if zero_negative
                               else providers[-1].get_pooled_embeddings([plain_text(negative)], device=device))
    dtype = pairs[-1][1].dtype
    cast = (lambda t: None if t is None else t.to(device=device, dtype=dtype))
    return Conditioning(cast(positive), cast(negative_embeds), cast(pooled), cast(negative_pooled))


def _pad(tensor: Any, filler: Any, length: int) -> Any:
    import torch

    while tensor.shape[1] < length:
        tensor = torch.cat([tensor, filler], dim=1)
    return tensor


class PromptEncoder:
    """:func:`encode` behind a bounded LRU cache. ``key`` must name everything that changes the
    result besides the prompts: the loaded model, its active LoRAs and the embeddings used."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self._size = size
        self._cache: OrderedDict[Hashable, Conditioning] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, make: Callable[[], Conditioning]) -> Conditioning:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                self.hits += 1
                return self._cache[key]
        value = make()
        with self._lock:
            self.misses += 1
            self._cache[key] = value
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return value

    def forget(self, owner: Hashable) -> None:
        """Drop every entry whose key starts with ``owner`` (a model that was unloaded)."""
        with self._lock:
            for key in [k for k in self._cache if isinstance(k, tuple) and k and k[0] == owner]:
                del self._cache[key]

    def __len__(self) -> int:
        return len(self._cache)
