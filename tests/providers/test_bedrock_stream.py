"""ConverseStream decoding: the same chunks however the bytes are split (property-based)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from providers.bedrock.mapping import ConversePlan
from providers.bedrock.stream import ChunkBuilder, frames
from providers.schema import ChunkFactory
from tests.fakes.replay import load_cassette

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings" / "bedrock"
STREAMS = [
    interaction.body
    for name in ("test_bedrock_model_stream.yaml", "test_bedrock_model_iter_stream.yaml")
    for interaction in load_cassette(RECORDINGS / name)
]


def decode(body: bytes, cuts: list[int]) -> list[dict]:
    pieces, start = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(body[start:cut])
        start = cut
    pieces.append(body[start:])

    async def run() -> list[dict]:
        async def source() -> AsyncIterator[bytes]:
            for piece in pieces:
                yield piece

        builder = ChunkBuilder(ChunkFactory("chatcmpl-x", 0, "m"), ConversePlan({}))
        chunks = []
        async for message in frames(source()):
            chunk = builder.on_message(message)
            if chunk is not None:
                chunks.append(chunk.data)
        return chunks

    return anyio.run(run)


WHOLE = [decode(body, []) for body in STREAMS]


@settings(max_examples=60, deadline=None)
@given(which=st.integers(0, len(STREAMS) - 1), data=st.data())
def test_chunks_do_not_depend_on_where_the_bytes_are_split(which: int, data: st.DataObject) -> None:
    body = STREAMS[which]
    cuts = data.draw(st.lists(st.integers(1, len(body) - 1), max_size=40))
    assert decode(body, cuts) == WHOLE[which]


def test_every_byte_split_apart_still_decodes() -> None:
    body = STREAMS[0]
    assert decode(body, list(range(1, len(body)))) == WHOLE[0]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in WHOLE[0] if c["choices"])
    assert text.startswith("The capital of France is Paris")
    assert WHOLE[0][-1]["usage"]["total_tokens"] == 95 and json.dumps(WHOLE[0])
