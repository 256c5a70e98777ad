"""Bedrock's errors, as normalized kinds.

Bedrock names the error in the `x-amzn-ErrorType` header (`ThrottlingException:http://...`; the part
after `:` is noise) or in the body (`__type`, `code`); inside a ConverseStream the same errors arrive as
exception frames named in lower camel case (`throttlingException`).
"""

from __future__ import annotations

from providers.errors import ErrorKind, kind_for_status

_BY_TYPE: dict[str, ErrorKind] = {
    "ThrottlingException": ErrorKind.RATE_LIMITED,
    "ServiceQuotaExceededException": ErrorKind.RATE_LIMITED,
    "ModelNotReadyException": ErrorKind.UNAVAILABLE,
    "ServiceUnavailableException": ErrorKind.UNAVAILABLE,
    "AccessDeniedException": ErrorKind.AUTH,
    "UnrecognizedClientException": ErrorKind.AUTH,
    "InvalidSignatureException": ErrorKind.AUTH,
    "IncompleteSignatureException": ErrorKind.AUTH,
    "MissingAuthenticationTokenException": ErrorKind.AUTH,
    "ExpiredTokenException": ErrorKind.AUTH,
    "ResourceNotFoundException": ErrorKind.NOT_FOUND,
    "ModelTimeoutException": ErrorKind.TIMEOUT,
    "ModelErrorException": ErrorKind.INTERNAL,
    "ModelStreamErrorException": ErrorKind.INTERNAL,
    "InternalServerException": ErrorKind.INTERNAL,
}

# What Bedrock (and the models behind it) say when the prompt does not fit the context window.
_CONTEXT_WINDOW_HINTS = (
    "input is too long",
    "too long for requested model",
    "exceed context limit",
    "prompt is too long",
    "too many total text bytes",
    "maximum context length",
    "context window",
)


def error_type_name(raw: str | None) -> str:
    """`throttlingException` or `ThrottlingException:http://...` -> `ThrottlingException`."""
    if not raw:
        return ""
    name = raw.split(":", 1)[0].strip()
    return name[:1].upper() + name[1:]


def error_kind(status: int | None, error_type: str, message: str) -> ErrorKind:
    lowered = message.lower()
    if error_type == "ValidationException" or (status == 400 and not error_type):
        if any(hint in lowered for hint in _CONTEXT_WINDOW_HINTS):
            return ErrorKind.CONTEXT_WINDOW
        return ErrorKind.INVALID_REQUEST
    if error_type in _BY_TYPE:
        return _BY_TYPE[error_type]
    if status == 503:
        return ErrorKind.UNAVAILABLE
    return kind_for_status(status)
