"""Helpers for adapters that translate OpenAI requests into another wire format (Bedrock, Vertex, ...).

Each rejects what its provider cannot take with an `invalid_request` error naming the OpenAI `param`,
so the client learns which part of its request to change.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

import orjson

from providers.errors import ErrorKind, ProviderError
from providers.schema import TextPart, ToolCall


def invalid(message: str, param: str | None = None) -> ProviderError:
    return ProviderError(ErrorKind.INVALID_REQUEST, message, param=param)


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list (other parts skipped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content if isinstance(part, TextPart))


def data_url(url: str, param: str, provider: str) -> tuple[str, str]:
    """(media type, base64 data) of a `data:` URL, checked.

    Images are never fetched from other URLs on a client's behalf: that would let any client make the
    gateway reach hosts on its private network.
    """
    if not url.startswith("data:"):
        raise invalid(f"{provider} needs images inline, as base64 data: URLs.", param)
    header, _, data = url.partition(",")
    if ";base64" not in header:
        raise invalid("Image data: URLs must be base64-encoded.", param)
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid("The image's base64 data is not valid.", param) from None
    return header[5:].split(";", 1)[0].lower(), data


def function_arguments(call: Any, param: str, provider: str) -> dict[str, Any]:
    """A function tool call's arguments as the object the provider wants (OpenAI sends a JSON string)."""
    if not isinstance(call, ToolCall):
        raise invalid(f"Custom tool calls are not supported for {provider}.", param)
    try:
        arguments = orjson.loads(call.function.arguments or "{}")
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise invalid("Tool-call arguments must be a JSON object.", f"{param}.function.arguments")
    return arguments


class Turns:
    """Conversation turns for APIs that insist roles alternate (Bedrock, Vertex, Anthropic): content for the
    same role as the previous turn joins that turn (e.g. several tool results become one user turn)."""

    def __init__(self, items_key: str = "content") -> None:
        self.items_key = items_key  # "content" (Bedrock, Anthropic) or "parts" (Gemini)
        self.turns: list[dict[str, Any]] = []

    def add(self, role: str, items: list[dict[str, Any]]) -> None:
        if not items:
            return
        if self.turns and self.turns[-1]["role"] == role:
            self.turns[-1][self.items_key].extend(items)
        else:
            self.turns.append({"role": role, self.items_key: items})


def single_choice(n: int | None, provider: str) -> None:
    """Providers that answer once per call cannot honour `n` > 1: say so rather than return fewer choices."""
    if (n or 1) > 1:
        raise invalid(f"{provider} returns one choice per call: n must be 1.", "n")


def trim_prefill(turns: list[dict[str, Any]], is_text: Callable[[dict[str, Any]], bool]) -> None:
    """Providers that continue a final assistant turn (prefill) refuse one ending in whitespace: strip it.
    A text block of nothing but whitespace goes, block and then turn, so the model answers the user turn."""
    if not turns or turns[-1]["role"] != "assistant":
        return
    blocks = turns[-1]["content"]
    if not blocks or not is_text(blocks[-1]):
        return
    text = blocks[-1]["text"].rstrip()
    if text:
        blocks[-1]["text"] = text
        return
    blocks.pop()
    if not blocks:
        turns.pop()
