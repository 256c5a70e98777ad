"""The adapter interface: what every provider offers the layers above it.

An adapter is built once per named provider connection in the config (not per request) and is shared by
every deployment that uses that connection. It speaks the canonical format (`providers.schema`) on one
side and the provider's wire protocol on the other, and raises only `ProviderError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp
import httpx
import orjson
from pydantic import BaseModel, ConfigDict, SecretStr

from providers.errors import ErrorKind, ProviderError
from providers.schema import ChatRequest, EmbedRequest, StreamChunk

_SECRET_HEADER_HINTS = ("key", "auth", "token", "secret", "password", "cookie")


class ProviderConfigBase(BaseModel):
    """Fields every provider type accepts. Each type adds its own and sets `type` to a literal."""

    model_config = ConfigDict(extra="forbid")

    type: str


@dataclass(frozen=True, slots=True)
class CallOptions:
    """Time limits for one upstream call, already resolved from config and the client's own timeout.

    `deadline` is absolute, on the event loop's clock: the whole call (connect, wait, and for streams the
    last chunk) must end by then. When streaming, `first_token_timeout_s` bounds the wait for the response
    and its first chunk, and `idle_timeout_s` any later gap between chunks. A non-streamed answer arrives
    whole at the end, so only the deadline bounds it.
    """

    deadline: float
    connect_timeout_s: float
    first_token_timeout_s: float
    idle_timeout_s: float

    @classmethod
    def within(
        cls,
        total_s: float,
        *,
        connect_s: float = 5.0,
        first_token_s: float | None = None,
        idle_s: float | None = None,
    ) -> CallOptions:
        loop = asyncio.get_running_loop()
        # `is None`, not `or`: a limit of 0 (a budget already spent) must stay 0, not become "unset".
        first = min(total_s if first_token_s is None else first_token_s, total_s)
        return cls(
            deadline=loop.time() + total_s,
            connect_timeout_s=min(connect_s, total_s),
            first_token_timeout_s=first,
            idle_timeout_s=min(first if idle_s is None else idle_s, total_s),
        )

    def remaining_s(self) -> float:
        return self.deadline - asyncio.get_running_loop().time()


class ProviderAdapter(ABC):
    """Base class for adapters; subclasses set `provider_type` and implement the calls they support."""

    provider_type: ClassVar[str]
    config_model: ClassVar[type[ProviderConfigBase]]
    supports_embeddings: ClassVar[bool] = False
    # The provider continues a final assistant message instead of answering it as a new turn.
    supports_prefill: ClassVar[bool] = False

    def __init__(self, name: str, config: Any, http: httpx.AsyncClient) -> None:
        self.name = name
        self.config = config
        self.http = http
        self._secrets = [
            value.get_secret_value()
            for value in config.__dict__.values()
            if isinstance(value, SecretStr) and value.get_secret_value()
        ]
        # Credentials also travel in custom headers (api-key, x-api-key, proxy tokens...).
        headers = getattr(config, "headers", None) or {}
        self._secrets += [
            value
            for name, value in headers.items()
            if value and any(hint in name.lower() for hint in _SECRET_HEADER_HINTS)
        ]

    @abstractmethod
    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        """A complete `chat.completion` object."""

    @abstractmethod
    def stream(self, model: str, request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        """`chat.completion.chunk` objects; the last one carries the whole call's `usage`.

        Adapters always report usage in a final chunk (with `choices: []`), whatever the client asked, so
        a streamed call is never accounted at zero; the edge drops that chunk when the client did not
        ask for it.
        """

    async def embed(self, model: str, request: EmbedRequest, options: CallOptions) -> dict[str, Any]:
        raise ProviderError(
            ErrorKind.INVALID_REQUEST,
            f"provider type '{self.provider_type}' does not serve embeddings",
            provider=self.name,
        )

    async def aclose(self) -> None:  # noqa: B027 - an optional hook, most adapters own nothing
        """Release resources the adapter owns (the shared HTTP client is not one of them)."""

    def scrub(self, text: str) -> str:
        """Remove this provider's secrets from text bound for a client, a log or a trace."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def error(self, kind: ErrorKind, message: str, **details: Any) -> ProviderError:
        return ProviderError(kind, self.scrub(message), provider=self.name, **details)

    def own(self, error: ProviderError) -> ProviderError:
        """Claim an error raised by shared code (request mapping, stream decoding): name this provider, scrub."""
        error.provider = error.provider or self.name
        error.message = self.scrub(error.message)
        return error

    def parse_json(self, content: bytes, upstream: str) -> dict[str, Any]:
        """An upstream answer that must be a JSON object; anything else is the upstream's fault."""
        try:
            answer = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise self.error(ErrorKind.INTERNAL, f"{upstream} sent malformed JSON", status=200) from None
        if not isinstance(answer, dict):
            raise self.error(ErrorKind.INTERNAL, f"{upstream}'s answer is not a JSON object", status=200)
        return answer

    @contextlib.contextmanager
    def failures_as_provider_errors(self, upstream: str) -> Iterator[None]:
        """Inside the block, time-outs, transport failures and unclaimed ProviderErrors become this
        provider's normalized errors; the block may be a streaming loop."""
        from providers.http import transport_error  # providers.http builds on this module

        try:
            yield
        except aiohttp.ClientError as exc:  # the direct path's; before TimeoutError, which some subclass
            raise self.error(*transport_error(exc)) from None
        except TimeoutError as exc:
            detail = f"{upstream} sent {exc}" if str(exc) else f"{upstream} did not answer in time"
            raise self.error(ErrorKind.TIMEOUT, detail) from None
        except httpx.HTTPError as exc:
            raise self.error(*transport_error(exc)) from None
        except ProviderError as exc:
            raise self.own(exc) from None
