"""The one pooled HTTP client each gateway process shares across all adapters.

One client means one connection pool: TLS handshakes and TCP connects are paid once per upstream host,
not per request. Per-call time limits are passed on each request (see `CallOptions`); the client's own
defaults are only a backstop.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncIterator, Mapping

import aiohttp
import httpx

from providers.base import CallOptions
from providers.errors import ErrorKind


def create_http_client(
    *, max_connections: int = 1000, keepalive_expiry_s: float = 30.0, proxy: str | None = None
) -> UpstreamClient:
    """The process's client; see `UpstreamClient`."""
    return UpstreamClient(max_connections=max_connections, keepalive_expiry_s=keepalive_expiry_s, proxy=proxy)


class UpstreamClient(httpx.AsyncClient):
    """httpx's API on aiohttp's connection pool, plus a direct aiohttp path for the busiest calls.

    Adapters speak httpx (its request and response types, its exceptions, its per-call timeouts), but
    httpcore's async pool scans every pooled connection on every request and costs about 3 ms of CPU
    per call under load; aiohttp's pool, through the `httpx-aiohttp` transport (the one the OpenAI SDK
    offers as its fast client), serves the same calls at about a third of the cost.

    The OpenAI-compatible adapters (most of the traffic) skip httpx altogether through `post_direct`:
    httpx's own request building (URL merging, cookies, auth and redirect hooks, response wrapping) was
    about 15% of the gateway's CPU per call under load. Both paths share one aiohttp session, so one
    connection pool.

    Proxy settings are not read from the environment: aiohttp would re-parse HTTPS_PROXY and NO_PROXY
    on every request, which halved throughput when measured. An outbound proxy is set once, in config.
    """

    def __init__(self, *, max_connections: int, keepalive_expiry_s: float, proxy: str | None) -> None:
        from httpx_aiohttp import AiohttpTransport

        self._max_connections = max_connections
        self._keepalive_expiry_s = keepalive_expiry_s
        self._proxy = proxy
        self._session: aiohttp.ClientSession | None = None
        super().__init__(
            # The session is made lazily, inside the running loop, on the first call.
            transport=AiohttpTransport(client=self.session, proxy=httpx.Proxy(proxy) if proxy else None),
            timeout=httpx.Timeout(connect=5.0, read=600.0, write=60.0, pool=10.0),
            follow_redirects=False,
        )

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # `limit` bounds all connections of the process, idle keep-alive ones included.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                keepalive_timeout=self._keepalive_expiry_s,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def post_direct(
        self, url: str, content: bytes, headers: Mapping[str, str], options: CallOptions, *, streaming: bool
    ) -> UpstreamResponse:
        """POST `content`; a non-streamed answer is read whole (and its connection back in the pool) on return.

        Only the connect time is bounded here: callers bound the whole call (and a stream's waits) with
        asyncio time-outs on `options`, which cost no timer per socket read.
        """
        remaining = max(options.remaining_s(), 0.001)
        response = await self.session().post(
            url,
            data=content,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(options.connect_timeout_s, remaining)),
            proxy=self._proxy,
            allow_redirects=False,
        )
        answer = UpstreamResponse(response)
        if not streaming:
            try:
                await answer.aread()
            finally:
                answer.close()
        return answer

    async def aclose(self) -> None:
        await super().aclose()  # closes the session if the httpx path ever used it
        if self._session is not None and not self._session.closed:
            await self._session.close()


class UpstreamResponse:
    """An answer from `UpstreamClient.post_direct`: the parts of `httpx.Response` the adapters read."""

    __slots__ = ("_response", "status_code", "headers", "content")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers = response.headers
        self.content = b""

    @property
    def reason_phrase(self) -> str:
        return self._response.reason or ""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    async def aread(self) -> bytes:
        self.content = await self._response.read()
        return self.content

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives, in whatever pieces the socket gives (a stream's events are not held back)."""
        return self._response.content.iter_any()

    def close(self) -> None:
        """A body read to its end returns the connection to the pool; any other is closed, so the upstream
        sees the caller leave (and stops generating)."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()

    async def aclose(self) -> None:
        self.close()


def transport_error(exc: httpx.HTTPError | aiohttp.ClientError) -> tuple[ErrorKind, str]:
    """The error kind (and a client-safe description) of a failure below HTTP: connect, read, timeout.

    The aiohttp transport re-raises aiohttp's exceptions as httpx ones, but coarsely (a server that
    hangs up mid-answer comes out as a connect timeout), so the original, kept as `__cause__`, decides;
    the direct path raises aiohttp's own.
    """
    cause = exc.__cause__ if isinstance(exc, httpx.HTTPError) else exc
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
