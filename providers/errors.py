"""The one error type every adapter raises, with a provider-neutral `kind`.

Routing decides retries and fallbacks from `kind` alone and the HTTP edge picks the client-facing status
from it, so no layer above `providers/` ever looks at a provider's own error codes.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorKind(StrEnum):
    RATE_LIMITED = "rate_limited"  # the provider asked us to slow down (429 and friends)
    TIMEOUT = "timeout"  # no answer (or no first token) within the deadline
    UNAVAILABLE = "unavailable"  # connection refused, 502/503/529, model not ready
    CONTEXT_WINDOW = "context_window"  # prompt + requested output exceed the model's window
    CONTENT_FILTER = "content_filter"  # the provider's safety system refused the input
    INVALID_REQUEST = "invalid_request"  # the request itself is wrong; another provider will say the same
    AUTH = "auth"  # our credentials for this provider were refused
    NOT_FOUND = "not_found"  # the deployment's model does not exist at the provider
    INTERNAL = "internal"  # a 500, or an answer we could not understand


#: Kinds worth another attempt on the same deployment after a pause.
RETRYABLE_KINDS = frozenset({ErrorKind.RATE_LIMITED, ErrorKind.TIMEOUT, ErrorKind.UNAVAILABLE, ErrorKind.INTERNAL})


class ProviderError(Exception):
    """A failed provider call, normalized.

    `message` is safe to show a client: adapters scrub their own secrets from it before raising.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        provider: str = "",
        status: int | None = None,
        retry_after_s: float | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.provider = provider
        self.status = status  # the upstream HTTP status, when there was one
        self.retry_after_s = retry_after_s
        self.param = param
        self.code = code

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE_KINDS

    def __repr__(self) -> str:
        return f"ProviderError({self.kind.value!r}, {self.message!r}, provider={self.provider!r}, status={self.status})"


def kind_for_status(status: int | None) -> ErrorKind:
    """The kind an HTTP status alone implies, for errors a provider did not name more precisely."""
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status in (401, 403):
        return ErrorKind.AUTH
    if status == 404:
        return ErrorKind.NOT_FOUND
    if status in (408, 504):
        return ErrorKind.TIMEOUT
    if status in (502, 503, 529):
        return ErrorKind.UNAVAILABLE
    if status is not None and 400 <= status < 500:
        return ErrorKind.INVALID_REQUEST
    return ErrorKind.INTERNAL
