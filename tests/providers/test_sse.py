"""The incremental SSE decoder: events survive being split anywhere, in any line-ending style."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from providers.sse import SSEEvent, iter_sse_events

STREAM = (
    b": keep-alive\n\n"
    b'data: {"a": 1}\n\n'
    b"event: message_start\n"
    b'data: {"b":\n'
    b"data: 2}\n\n"
    b"data:no-space\n\n"
    b"id: 7\nretry: 100\n\n"  # no data: no event
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent(b'{"a": 1}'),
    SSEEvent(b'{"b":\n2}', "message_start"),
    SSEEvent(b"no-space"),
    SSEEvent(b"[DONE]"),
]


async def decode(pieces: list[bytes]) -> list[SSEEvent]:
    async def source() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    return [event async for event in iter_sse_events(source())]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("piece_size", [1, 2, 3, 7, 1000])
async def test_events_survive_any_split_and_line_ending(newline: bytes, piece_size: int) -> None:
    stream = STREAM.replace(b"\n", newline)
    pieces = [stream[start : start + piece_size] for start in range(0, len(stream), piece_size)]
    assert await decode(pieces) == EXPECTED


async def test_last_event_without_trailing_blank_line_is_still_delivered() -> None:
    assert await decode([b'data: {"x": 1}\n\ndata: {"y": 2}']) == [SSEEvent(b'{"x": 1}'), SSEEvent(b'{"y": 2}')]
    assert await decode([b'data: {"y": 2}\r']) == [SSEEvent(b'{"y": 2}')]


async def test_utf8_split_inside_a_character_is_kept_intact() -> None:
    payload = 'data: {"t": "żółw 🐢"}\n\n'.encode()
    pieces = [payload[index : index + 1] for index in range(len(payload))]
    (event,) = await decode(pieces)
    assert event.data.decode() == '{"t": "żółw 🐢"}'
