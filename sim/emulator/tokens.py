"""Deterministic stand-ins for a tokenizer and a model's output.

No model is loaded, so text is cut into tokens by a fixed rule: **one token per 4 characters**
(the last one may be shorter; any non-empty text is at least one token, empty text is one BOS token).
A token's id is a CRC-32 of its characters modulo the vocabulary, so equal text prefixes give equal
id prefixes and hit the emulated prefix cache the way they would hit SGLang's radix cache.

The output is filler: token i of a completion is ``FILLER[i % len(FILLER)]``, each exactly four
characters, so re-tokenizing a completion gives back its token count.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

CHARS_PER_TOKEN = 4
VOCAB_SIZE = 129_280
"""DeepSeek-V3's vocabulary size; ids are below it."""
BOS_ID = 0
FILLER = (" the", " and", " for", " one", " two", " sun", " sky", " sea", " red", " map", " cup", " owl")
FILLER_IDS = tuple(zlib.crc32(w.encode()) % VOCAB_SIZE for w in FILLER)


def encode(text: str) -> list[int]:
    """Token ids of `text` (one per 4 characters; empty text is one BOS token)."""
    if not text:
        return [BOS_ID]
    step = CHARS_PER_TOKEN
    return [zlib.crc32(text[i : i + step].encode()) % VOCAB_SIZE for i in range(0, len(text), step)]


def chat_prompt(messages: Sequence[object]) -> str:
    """The prompt text of an OpenAI chat request: ``<|role|>content`` per message, then the
    assistant turn marker (a fixed template in the spirit of a real chat template)."""
    parts = []
    for m in messages:
        if not isinstance(m, dict):
            raise ValueError(f"each message must be an object, got {type(m).__name__}")
        content = m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if not all(isinstance(t, str) for t in texts):
                raise ValueError("a 'text' content part needs a string 'text'")  # SGLang's 400 too
            content = "".join(texts)
        parts.append(f"<|{m.get('role', 'user')}|>{content or ''}")
    parts.append("<|assistant|>")
    return "".join(parts)


_CACHED = 16_384
_TEXT = "".join(FILLER[i % len(FILLER)] for i in range(_CACHED))
_IDS = tuple(FILLER_IDS[i % len(FILLER_IDS)] for i in range(_CACHED))
_IDS_JSON = ",".join(map(str, _IDS))
_IDS_JSON_END = [0]
for _id in _IDS:
    _IDS_JSON_END.append(_IDS_JSON_END[-1] + len(str(_id)) + (1 if len(_IDS_JSON_END) > 1 else 0))


def output_ids(n: int) -> list[int]:
    """The ids of the first `n` output tokens of any request."""
    if n <= _CACHED:
        return list(_IDS[:n])
    k = len(FILLER_IDS)
    return [FILLER_IDS[i % k] for i in range(n)]


def output_text(n: int, start: int = 0) -> str:
    """The text of output tokens `start` .. `n - 1`."""
    if n <= _CACHED:
        return _TEXT[CHARS_PER_TOKEN * start : CHARS_PER_TOKEN * n]
    k = len(FILLER)
    return "".join(FILLER[i % k] for i in range(start, n))


def output_json(n: int) -> str:
    """`"text":...,"output_ids":[...]` of the first `n` output tokens, JSON-encoded (streams resend the
    cumulative output every chunk, so this is sliced from precomputed text rather than encoded)."""
    if n > _CACHED:
        return f'"text":"{output_text(n)}","output_ids":[{",".join(map(str, output_ids(n)))}]'
    return f'"text":"{_TEXT[: CHARS_PER_TOKEN * n]}","output_ids":[{_IDS_JSON[: _IDS_JSON_END[n]]}]'


def block_hashes(ids: Sequence[int], block_tokens: int) -> tuple[int, ...]:
    """Chained hashes of the prompt's whole blocks (block i's hash covers blocks 0..i), the key the
    prefill engine's prefix cache matches on. A trailing partial block is never cached."""
    out = []
    h = 0
    for i in range(0, len(ids) - block_tokens + 1, block_tokens):
        h = hash((h, tuple(ids[i : i + block_tokens])))  # ints and tuples hash the same in every run
        out.append(h)
    return tuple(out)
