"""Token counting with tiktoken, offline.

tiktoken downloads its BPE files on first use; the gateway ships the encodings it needs in
`tiktoken_cache/` and points tiktoken there unless the operator chose a cache directory already.
Encodings are loaded once per process (about a second) and then count at native speed.
"""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tiktoken

    from providers.schema import Usage

VENDORED_CACHE_DIR = Path(__file__).parent / "tiktoken_cache"
DEFAULT_ENCODING = "o200k_base"

# OpenAI's accounting for chat prompts: each message costs a few framing tokens, and every reply is
# primed with three more (from OpenAI's cookbook "How to count tokens with tiktoken").
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING_TOKENS = 3
# A low-detail image costs a flat 85 tokens at OpenAI; without decoding the image that is the best guess.
_TOKENS_PER_IMAGE = 85


_loaded: set[str] = set()


@functools.cache
def encoding(name: str = DEFAULT_ENCODING) -> tiktoken.Encoding:
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(VENDORED_CACHE_DIR))
    import tiktoken

    loaded = tiktoken.get_encoding(name)
    _drop_python_copy_of_ranks(loaded)
    _loaded.add(name)
    return loaded


def _drop_python_copy_of_ranks(loaded: tiktoken.Encoding) -> None:
    """Free the Python dict of the BPE ranks that tiktoken keeps beside its native tables: about 20 MB
    for o200k_base (200,000 bytes objects). tiktoken reads it only to pickle an encoding that is not
    registered (registered ones, like ours, pickle by name). A self-check after dropping it puts it back
    should a tiktoken version ever need it to count."""
    ranks = loaded.__dict__.pop("_mergeable_ranks", None)
    if ranks is None:
        return
    sample = "Token counting self-check: 123 ünïcödé 字"
    try:
        intact = loaded.decode(loaded.encode(sample, disallowed_special=())) == sample
    except Exception:
        intact = False
    if not intact:
        loaded._mergeable_ranks = ranks  # type: ignore[attr-defined]


_loading: dict[str, asyncio.Future[Any]] = {}


async def ready(name: str = DEFAULT_ENCODING) -> None:
    """Load the encoding in a worker thread unless it is loaded already; await it before counting on the
    event loop where the config did not need the tokenizer at start-up (a stream the client dropped
    before its usage chunk, an upstream that reports no usage). Loading takes about a second, which
    would otherwise stall every request in the process. Callers arriving meanwhile share the one load."""
    if name in _loaded:
        return
    loading = _loading.get(name)
    if loading is None or loading.get_loop() is not asyncio.get_running_loop():
        loading = _loading[name] = asyncio.ensure_future(asyncio.to_thread(encoding, name))
    try:
        await asyncio.shield(loading)
    finally:
        if loading.done():
            _loading.pop(name, None)


def count_text(text: str, encoding_name: str = DEFAULT_ENCODING) -> int:
    if not text:
        return 0
    return len(encoding(encoding_name).encode(text, disallowed_special=()))


def _content_tokens(content: Any, encoding_name: str) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text(content, encoding_name)
    total = 0
    for part in content:
        part_type = part.get("type")
        if part_type == "text":
            total += count_text(part.get("text", ""), encoding_name)
        elif part_type == "refusal":
            total += count_text(part.get("refusal", ""), encoding_name)
        elif part_type == "image_url":
            total += _TOKENS_PER_IMAGE
    return total


def count_messages(messages: list[dict[str, Any]], encoding_name: str = DEFAULT_ENCODING) -> int:
    """Prompt tokens of a chat request's `messages`, as OpenAI bills them (close estimate)."""
    total = _REPLY_PRIMING_TOKENS
    for message in messages:
        total += _TOKENS_PER_MESSAGE + _content_tokens(message.get("content"), encoding_name)
        if message.get("name"):
            total += _TOKENS_PER_NAME + count_text(message["name"], encoding_name)
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += count_text(function.get("name", ""), encoding_name)
            total += count_text(function.get("arguments", ""), encoding_name)
    return total


def estimate_usage(messages: list[dict[str, Any]], completion_parts: list[str]) -> Usage:
    """Usage counted here, for a completed stream whose provider reported none: better an estimate,
    marked as one, than a call accounted at zero."""
    from providers.schema import Usage

    return Usage(
        prompt_tokens=count_messages(messages),
        completion_tokens=count_text("".join(completion_parts)),
        estimated=True,
    )
