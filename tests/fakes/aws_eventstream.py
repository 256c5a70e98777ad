"""An encoder for AWS event-stream frames (`application/vnd.amazon.eventstream`), for the Bedrock fake.

botocore only decodes this format and awscrt exposes no encoder, so the fake carries its own
the provider's API reference. Frames are byte-compatible with what Bedrock sends:
header order `:event-type`, `:content-type`, `:message-type` and JSON payloads with sorted keys,
compact separators, raw UTF-8 and a `p` padding field. The tests re-encode the recorded frames in
tests/data/recordings/bedrock/ and get identical bytes.

Layout (big-endian): total length u32 | headers length u32 | CRC-32 of those 8 bytes | headers |
payload | CRC-32 of everything before it. Each header: name length u8, name, type u8, value; only
type 7 (string: u16 length + UTF-8) is needed here.
"""

from __future__ import annotations

import json
import random
import struct
import zlib
from collections.abc import Mapping
from typing import Any

#: Limits botocore's decoder enforces; a frame beyond them would be rejected by every real client.
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024

#: Bedrock's padding is a prefix of this alphabet, of random length (2 to 62 chars in the recordings).
PADDING_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

_STRING_TYPE = 7
_PRELUDE_LENGTH = 12
_CRC_LENGTH = 4


def _crc32(data: bytes) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _encode_header(name: str, value: str) -> bytes:
    raw_name = name.encode("utf-8")
    raw_value = value.encode("utf-8")
    if not 0 < len(raw_name) <= 0xFF:
        raise ValueError(f"event-stream header name must be 1-255 bytes: {name!r}")
    if len(raw_value) > 0x7FFF:
        raise ValueError(f"event-stream header value too long for {name!r}")
    return struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", _STRING_TYPE, len(raw_value)) + raw_value


def encode_frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with string-typed headers, in the mapping's order (order is on the wire)."""
    raw_headers = b"".join(_encode_header(name, value) for name, value in headers.items())
    if len(raw_headers) > MAX_HEADERS_LENGTH:
        raise ValueError("event-stream headers exceed 128 KiB")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise ValueError("event-stream payload exceeds 24 MiB")
    total = _PRELUDE_LENGTH + len(raw_headers) + len(payload) + _CRC_LENGTH
    prelude = struct.pack(">II", total, len(raw_headers))
    message = prelude + struct.pack(">I", _crc32(prelude)) + raw_headers + payload
    return message + struct.pack(">I", _crc32(message))


def random_padding() -> str:
    """A value for the `p` field: Bedrock pads every event so payload sizes leak nothing."""
    return PADDING_ALPHABET[: random.randint(2, len(PADDING_ALPHABET))]


def json_payload(body: Mapping[str, Any]) -> bytes:
    """JSON exactly as Bedrock writes it: sorted keys, no spaces, non-ASCII as raw UTF-8."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_frame(event_type: str, body: Mapping[str, Any], *, padding: str | None = None) -> bytes:
    """An `:message-type: event` frame; `padding` fixes the `p` field (random otherwise)."""
    payload = dict(body)
    payload["p"] = padding if padding is not None else random_padding()
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_frame(headers, json_payload(payload))


def exception_frame(exception_type: str, message: str, *, fields: Mapping[str, Any] | None = None) -> bytes:
    """A modeled in-stream exception; `exception_type` is the lower-camel union member name.

    botocore looks `:exception-type` up among the stream union's members (`throttlingException`,
    not `ThrottlingException`) and raises `EventStreamError` with that code. `fields` adds members
    such as `originalStatusCode` / `originalMessage` of `modelStreamErrorException`.
    """
    payload = {"message": message, **(fields or {})}
    headers = {":exception-type": exception_type, ":content-type": "application/json", ":message-type": "exception"}
    return encode_frame(headers, json_payload(payload))


def error_frame(error_code: str, error_message: str) -> bytes:
    """A generic `:message-type: error` frame: code and message travel in headers, payload is empty."""
    headers = {":error-code": error_code, ":error-message": error_message, ":message-type": "error"}
    return encode_frame(headers, b"")
