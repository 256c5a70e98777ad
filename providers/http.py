"""The one pooled HTTP client each gateway process shares across all adapters.

One client means one connection pool: TLS handshakes and TCP connects are paid once per upstream host,
not per request. Per-call time limits are passed on each request (see `CallOptions`); the client's own
defaults are only a backstop.
"""

from __future__ import annotations

import email.utils
import time

import httpx

from providers.base import CallOptions


def create_http_client(
    *, max_connections: int = 1000, max_keepalive: int = 200, keepalive_expiry_s: float = 30.0
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=5.0, read=600.0, write=60.0, pool=10.0),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_keepalive,
            keepalive_expiry=keepalive_expiry_s,
        ),
        follow_redirects=False,
        trust_env=True,  # corporate proxies via HTTPS_PROXY / NO_PROXY, as operators expect
    )


def request_timeout(options: CallOptions, *, streaming: bool) -> httpx.Timeout:
    """httpx time limits for one call.

    The read limit applies to each socket read. Non-streaming answers arrive all at once at the end, so
    their read limit is the whole remaining budget; streams must show a first byte within the
    first-token limit.
    """
    remaining = max(options.remaining_s(), 0.001)
    read = min(options.first_token_timeout_s, remaining) if streaming else remaining
    return httpx.Timeout(connect=min(options.connect_timeout_s, remaining), read=read, write=remaining, pool=remaining)


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds to wait, from `retry-after-ms` (Azure, OpenAI) or `retry-after` (seconds or HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(parsed.timestamp() - time.time(), 0.0)
