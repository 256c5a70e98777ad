"""Vertex errors (google.rpc.Status bodies) as normalized kinds."""

from __future__ import annotations

from providers.errors import ErrorKind, kind_for_status

_BY_STATUS: dict[str, ErrorKind] = {
    "RESOURCE_EXHAUSTED": ErrorKind.RATE_LIMITED,
    "UNAVAILABLE": ErrorKind.UNAVAILABLE,
    "DEADLINE_EXCEEDED": ErrorKind.TIMEOUT,
    "UNAUTHENTICATED": ErrorKind.AUTH,
    "PERMISSION_DENIED": ErrorKind.AUTH,
    "NOT_FOUND": ErrorKind.NOT_FOUND,
    "INTERNAL": ErrorKind.INTERNAL,
    "CANCELLED": ErrorKind.INTERNAL,
    "UNKNOWN": ErrorKind.INTERNAL,
    "FAILED_PRECONDITION": ErrorKind.INVALID_REQUEST,
    "OUT_OF_RANGE": ErrorKind.INVALID_REQUEST,
}
_CONTEXT_WINDOW_HINTS = (
    "exceeds the maximum number of tokens",
    "input token count",
    "too many tokens",
    "context window",
)


def error_kind(http_status: int | None, rpc_status: str, message: str) -> ErrorKind:
    if rpc_status == "INVALID_ARGUMENT" or (http_status == 400 and not rpc_status):
        lowered = message.lower()
        if any(hint in lowered for hint in _CONTEXT_WINDOW_HINTS):
            return ErrorKind.CONTEXT_WINDOW
        return ErrorKind.INVALID_REQUEST
    if rpc_status in _BY_STATUS:
        return _BY_STATUS[rpc_status]
    return kind_for_status(http_status)
