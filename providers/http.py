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
from providers.errors import ErrorKind


def create_http_client(
    *, max_connections: int = 1000, keepalive_expiry_s: float = 30.0, proxy: str | None = None
) -> httpx.AsyncClient:
    """httpx's API on aiohttp's connection pool.

    Adapters speak httpx (its request and response types, its exceptions, its per-call timeouts), but
    httpcore's async pool scans every pooled connection on every request and costs about 3 ms of CPU
    per call under load; aiohttp's pool, through the `httpx-aiohttp` transport (the one the OpenAI SDK
    offers as its fast client), serves the same calls at about a third of the cost.

    Proxy settings are not read from the environment: aiohttp would re-parse HTTPS_PROXY and NO_PROXY
    on every request, which halved throughput when measured. An outbound proxy is set once, in config.
    """
    from aiohttp import ClientSession, TCPConnector
    from httpx_aiohttp import AiohttpTransport

    def session() -> ClientSession:
        # `limit` bounds all connections of the process, idle keep-alive ones included.
        connector = TCPConnector(
            limit=max_connections, limit_per_host=0, keepalive_timeout=keepalive_expiry_s, ttl_dns_cache=300
        )
        return ClientSession(connector=connector)

    return httpx.AsyncClient(
        # The session is made lazily, inside the running loop, on the first call.
        transport=AiohttpTransport(client=session, proxy=httpx.Proxy(proxy) if proxy else None),
        timeout=httpx.Timeout(connect=5.0, read=600.0, write=60.0, pool=10.0),
        follow_redirects=False,
    )


def transport_error(exc: httpx.HTTPError) -> tuple[ErrorKind, str]:
    """The error kind (and a client-safe description) of a failure below HTTP: connect, read, timeout.

    The aiohttp transport re-raises aiohttp's exceptions as httpx ones, but coarsely (a server that
    hangs up mid-answer comes out as a connect timeout), so the original, kept as `__cause__`, decides.
    """
    import aiohttp

    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectorError) or isinstance(exc, httpx.ConnectError):
        return ErrorKind.UNAVAILABLE, "could not connect to upstream"
    if isinstance(cause, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError) or isinstance(
        exc, httpx.RemoteProtocolError | httpx.ReadError
    ):
        return ErrorKind.INTERNAL, "upstream closed the connection mid-answer"
    if isinstance(cause, TimeoutError) or isinstance(exc, httpx.TimeoutException):
        return ErrorKind.TIMEOUT, "upstream timed out"
    return ErrorKind.UNAVAILABLE, f"upstream transport error ({type(cause or exc).__name__})"


def request_timeout(options: CallOptions, *, streaming: bool) -> httpx.Timeout:
    """httpx time limits for one call: the socket-level backstop behind the adapters' own limits.

    The read limit applies to every socket read. Streams get the whole remaining budget here because
    their first-token and idle limits differ and are enforced per item (`providers.streaming`); a
    non-streamed answer arrives all at once at the end, so the remaining budget is its limit too.
    """
    remaining = max(options.remaining_s(), 0.001)
    return httpx.Timeout(
        connect=min(options.connect_timeout_s, remaining), read=remaining, write=remaining, pool=remaining
    )


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
