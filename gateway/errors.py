"""Errors as OpenAI's SDKs expect them: `{"error": {"message", "type", "param", "code"}}`.

The status code and headers matter as much as the body: the SDKs pick their exception class from the
status, retry 408/409/429/5xx unless told `x-should-retry: false`, and wait for `retry-after`. Sending
the right ones keeps a failing upstream from being hit three times per client call.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from providers.errors import ErrorKind, ProviderError


class APIError(Exception):
    """A failure the edge answers with an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        retry_after_s: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.retry_after_s = retry_after_s
        self.should_retry = should_retry

    def payload(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.retry_after_s is not None:
            # `retry-after` is whole seconds (at least 1) by RFC 9110; `retry-after-ms` keeps precision
            # for the SDKs that read it first.
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
            headers["retry-after-ms"] = str(max(1, round(self.retry_after_s * 1000)))
        if self.should_retry is not None:
            headers["x-should-retry"] = "true" if self.should_retry else "false"
        return headers


# kind -> (client status, error type, error code, whether a client retry can help)
_PROVIDER_ERROR_MAP: dict[ErrorKind, tuple[int, str, str, bool | None]] = {
    ErrorKind.RATE_LIMITED: (429, "rate_limit_error", "rate_limit_exceeded", None),
    ErrorKind.TIMEOUT: (504, "server_error", "upstream_timeout", None),
    ErrorKind.UNAVAILABLE: (503, "server_error", "upstream_unavailable", None),
    ErrorKind.CONTEXT_WINDOW: (400, "invalid_request_error", "context_length_exceeded", False),
    ErrorKind.CONTENT_FILTER: (400, "invalid_request_error", "content_filter", False),
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error", "invalid_request", False),
    # The client's request was fine; our credentials or deployment config are not. Retrying the same
    # call cannot fix that, so tell the SDK not to.
    ErrorKind.AUTH: (502, "server_error", "upstream_auth_error", False),
    ErrorKind.NOT_FOUND: (502, "server_error", "upstream_model_not_found", False),
    ErrorKind.INTERNAL: (502, "server_error", "upstream_error", None),
}


def from_provider_error(error: ProviderError) -> APIError:
    status, error_type, code, should_retry = _PROVIDER_ERROR_MAP[error.kind]
    param = error.param
    if error.kind in (ErrorKind.INVALID_REQUEST, ErrorKind.CONTENT_FILTER, ErrorKind.CONTEXT_WINDOW):
        message = error.message  # the provider's own words help the client fix its request
        if error.kind is ErrorKind.CONTEXT_WINDOW:
            param = param or "messages"  # the code stays OpenAI's, whatever the provider called it
        elif error.kind is ErrorKind.INVALID_REQUEST:
            code = error.code or code  # an OpenAI-compatible upstream's own code, e.g. unsupported_value
    elif error.provider == "gateway":  # the gateway's own verdict (all resting, deadline passed)
        message = error.message[:1].upper() + error.message[1:] + "."
    else:
        message = f"Upstream provider '{error.provider}' failed: {error.message}"
        if error.kind is ErrorKind.AUTH and error.code == "insufficient_quota":
            code = error.code
    return APIError(
        status,
        message,
        type=error_type,
        param=param,
        code=code,
        retry_after_s=error.retry_after_s if status in (429, 503) else None,
        should_retry=should_retry,
    )


def internal_error() -> APIError:
    """What a client sees when the gateway itself fails: no stack trace, no internals."""
    return APIError(500, "The gateway failed to process the request.", type="server_error", code="internal_error")
