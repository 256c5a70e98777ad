"""ConverseStream's binary event stream → OpenAI chunks, incrementally.

Frames are decoded with botocore's own `EventStreamBuffer` (it checks both CRCs) as bytes arrive, so
nothing waits for the whole answer. Real Bedrock streams differ from the docs in ways handled here:
text blocks get no `contentBlockStart`, tool input streams as string pieces, usage (`metadata`) comes
after `messageStop`, and every payload carries a padding field `p`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError

from providers.bedrock.errors import error_kind, error_type_name
from providers.bedrock.mapping import JSON_TOOL_NAME, ConversePlan, finish_reason, usage_from
from providers.errors import ErrorKind, ProviderError
from providers.schema import ChunkFactory, StreamChunk, Usage


async def frames(chunks: AsyncIterator[bytes]) -> AsyncIterator[EventStreamMessage]:
    buffer = EventStreamBuffer()
    async for chunk in chunks:
        buffer.add_data(chunk)
        try:
            for message in buffer:
                yield message
        except ParserError as exc:  # a bad CRC or length: the bytes were damaged on the way
            raise ProviderError(
                ErrorKind.INTERNAL, f"Bedrock sent a corrupt event stream ({type(exc).__name__})"
            ) from None


@dataclass
class ChunkBuilder:
    """Turns Converse stream events into `chat.completion.chunk`s for one answer."""

    chunks: ChunkFactory
    plan: ConversePlan
    tool_index_by_block: dict[int, int] = field(default_factory=dict)
    json_blocks: set[int] = field(default_factory=set)
    stop_reason: str | None = None
    usage: Usage | None = None
    text_parts: list[str] = field(default_factory=list)  # for a usage estimate if metadata never comes

    def on_message(self, message: EventStreamMessage) -> StreamChunk | None:
        headers = message.headers
        message_type = headers.get(":message-type")
        if message_type == "exception":
            raise _stream_error(headers.get(":exception-type"), message.payload)
        if message_type == "error":
            raise _stream_error(headers.get(":error-code"), orjson.dumps({"message": headers.get(":error-message")}))
        event = orjson.loads(message.payload) if message.payload else {}
        return self.on_event(headers.get(":event-type", ""), event)

    def on_event(self, event_type: str, event: dict[str, Any]) -> StreamChunk | None:
        if event_type == "messageStart":
            return self.chunks.delta({"role": "assistant", "content": ""})
        if event_type == "contentBlockStart":
            use = (event.get("start") or {}).get("toolUse")
            if not use:
                return None
            block = int(event.get("contentBlockIndex", 0))
            if self.plan.json_via_tool and use.get("name") == JSON_TOOL_NAME:
                self.json_blocks.add(block)  # its input is the answer: stream it as content
                return None
            index = self.tool_index_by_block[block] = len(self.tool_index_by_block)
            call = {
                "index": index,
                "id": use.get("toolUseId"),
                "type": "function",
                "function": {"name": use.get("name"), "arguments": ""},
            }
            return self.chunks.delta({"tool_calls": [call]})
        if event_type == "contentBlockDelta":
            block = int(event.get("contentBlockIndex", 0))
            delta = event.get("delta") or {}
            if "text" in delta:
                self.text_parts.append(delta["text"])
                return self.chunks.delta({"content": delta["text"]})
            if "toolUse" in delta:
                piece = (delta["toolUse"] or {}).get("input", "")
                self.text_parts.append(piece)
                if block in self.json_blocks:
                    return self.chunks.delta({"content": piece})
                index = self.tool_index_by_block.get(block, 0)
                return self.chunks.delta({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
            return None  # reasoning content and other block kinds have no OpenAI chat equivalent
        if event_type == "messageStop":
            self.stop_reason = event.get("stopReason")
            reason = finish_reason(self.stop_reason, has_tool_calls=bool(self.tool_index_by_block))
            return self.chunks.delta({}, finish=reason)
        if event_type == "metadata":
            self.usage = usage_from(event.get("usage"))
            return self.chunks.usage(self.usage)
        return None  # event types added after this was written are skipped, as botocore does


def _stream_error(raw_type: str | None, payload: bytes) -> ProviderError:
    try:
        body = orjson.loads(payload) if payload else {}
    except orjson.JSONDecodeError:
        body = {}
    message = str(body.get("message") or body.get("Message") or "error inside the stream")
    error_type = error_type_name(raw_type)
    return ProviderError(error_kind(None, error_type, message), f"{error_type}: {message}")


def incomplete_stream_error() -> ProviderError:
    return ProviderError(ErrorKind.INTERNAL, "Bedrock ended the stream before it finished")
