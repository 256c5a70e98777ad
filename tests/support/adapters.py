"""Call a provider adapter directly, outside the gateway, to see the normalized error it raises."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from providers.base import CallOptions, ProviderAdapter
from providers.errors import ProviderError
from providers.http import create_http_client
from providers.schema import ChatCompletionRequest, ChatRequest


def adapter_error(
    make_adapter: Callable[[httpx.AsyncClient], ProviderAdapter],
    model: str,
    messages: list[dict[str, Any]],
    *,
    stream: bool,
) -> ProviderError:
    """Run one chat call (streamed or not) with short limits; it must fail, and its ProviderError is returned."""

    async def call() -> None:
        async with create_http_client() as http:
            adapter = make_adapter(http)
            body = {"model": "x", "messages": messages}
            request = ChatRequest(body, ChatCompletionRequest.model_validate(body))
            options = CallOptions.within(3, first_token_s=1)
            if stream:
                async for _ in adapter.stream(model, request, options):
                    pass
            else:
                await adapter.chat(model, request, options)

    with pytest.raises(ProviderError) as caught:
        asyncio.run(call())
    return caught.value
