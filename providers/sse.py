"""Incremental Server-Sent Events decoding.

Upstream bytes arrive split anywhere (inside a line, inside a UTF-8 sequence, between `\\r` and `\\n`),
so the decoder buffers only the unfinished line and yields each event's `data` as soon as its blank line
arrives. Data stays bytes: OpenAI-compatible chunks are forwarded without decoding or re-encoding.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    data: bytes
    event: str | None = None


async def iter_sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[SSEEvent]:
    """Events from a byte stream, per the WHATWG rules the OpenAI SDK follows.

    Lines end in `\\n`, `\\r\\n` or `\\r`; `:` lines are comments (keep-alives); several `data:` lines in
    one event are joined with `\\n`; an event is dispatched at a blank line, or at end of stream.
    """
    buffer = b""
    data_lines: list[bytes] = []
    event_name: str | None = None
    async for chunk in chunks:
        buffer += chunk
        while True:
            newline = buffer.find(b"\n")
            carriage = buffer.find(b"\r")
            if newline < 0 and carriage < 0:
                break
            if carriage >= 0 and (newline < 0 or carriage < newline):
                if carriage == len(buffer) - 1:
                    break  # a lone "\r" at the end may be the first half of "\r\n": wait for more
                end, skip = carriage, 2 if buffer[carriage + 1 : carriage + 2] == b"\n" else 1
            else:
                end, skip = newline, 1
            line = buffer[:end]
            buffer = buffer[end + skip :]
            if not line:
                if data_lines:
                    yield SSEEvent(b"\n".join(data_lines), event_name)
                data_lines = []
                event_name = None
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data_lines.append(value)
            elif name == b"event":
                event_name = value.decode("utf-8", "replace")
    if buffer.endswith(b"\r"):
        buffer = buffer[:-1]
    if buffer.startswith(b"data:"):
        value = buffer[5:]
        data_lines.append(value[1:] if value.startswith(b" ") else value)
    if data_lines:
        yield SSEEvent(b"\n".join(data_lines), event_name)
