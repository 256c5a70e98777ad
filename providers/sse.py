"""Incremental Server-Sent Events decoding.

Upstream bytes arrive split anywhere (inside a line, inside a UTF-8 sequence, between `\\r` and `\\n`),
so the decoder keeps only the unfinished line and yields each event's `data` as soon as its blank line
arrives. Each byte is scanned once. Data stays bytes: OpenAI-compatible chunks are forwarded without
decoding or re-encoding.
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
    buffer = bytearray()
    data_lines: list[bytes] = []
    event_name: str | None = None
    async for chunk in chunks:
        start = len(buffer)
        buffer += chunk
        position = 0  # start of the current line
        # Earlier bytes held no complete line end, except perhaps a trailing "\r" awaiting its "\n".
        scan = max(start - 1, 0)
        while True:
            end = _line_end(buffer, scan)
            if end < 0:
                break
            if buffer[end] == 0x0D:  # "\r": a lone one ends the line, "\r\n" counts as one ending
                if end + 1 == len(buffer):
                    break  # may be the first half of "\r\n": wait for the next chunk
                skip = 2 if buffer[end + 1] == 0x0A else 1
            else:
                skip = 1
            line = bytes(buffer[position:end])
            position = scan = end + skip
            if not line:
                if data_lines:
                    yield SSEEvent(b"\n".join(data_lines), event_name)
                data_lines = []
                event_name = None
            elif line[0] != 0x3A:  # lines starting with ":" are comments
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    data_lines.append(value)
                elif name == b"event":
                    event_name = value.decode("utf-8", "replace")
        del buffer[:position]
    tail = bytes(buffer).rstrip(b"\r")
    if tail.startswith(b"data:"):
        value = tail[5:]
        data_lines.append(value[1:] if value[:1] == b" " else value)
    if data_lines:
        yield SSEEvent(b"\n".join(data_lines), event_name)


def _line_end(buffer: bytearray, start: int) -> int:
    newline = buffer.find(b"\n", start)
    carriage = buffer.find(b"\r", start, newline if newline >= 0 else len(buffer))
    return carriage if carriage >= 0 else newline
