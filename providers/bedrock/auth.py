"""SigV4 request signing with botocore's signer, and AWS credentials from config or the standard chain."""

from __future__ import annotations

import asyncio
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, ReadOnlyCredentials

from providers.bedrock.config import BedrockConfig

SIGNING_NAME = "bedrock"  # the signing name of bedrock-runtime is "bedrock", not the endpoint prefix


class AWSSigner:
    """Signs requests for one provider connection.

    Static keys from the config are used as they are. Otherwise botocore's credential chain is resolved
    once, off the event loop (it may read files or call a metadata service), and its refreshable
    credentials are reused; when they near expiry, the refresh also runs off the event loop.
    """

    def __init__(self, config: BedrockConfig) -> None:
        self.region = config.region
        self._config = config
        self._credentials: Any = None
        if config.aws_access_key_id and config.aws_secret_access_key:
            self._credentials = Credentials(
                config.aws_access_key_id,
                config.aws_secret_access_key.get_secret_value(),
                config.aws_session_token.get_secret_value() if config.aws_session_token else None,
            )
        self._lock = asyncio.Lock()

    async def _frozen(self) -> ReadOnlyCredentials:
        credentials = self._credentials
        if credentials is None:
            async with self._lock:
                if self._credentials is None:
                    self._credentials = await asyncio.to_thread(self._resolve_chain)
                credentials = self._credentials
        if getattr(credentials, "refresh_needed", None) and credentials.refresh_needed():
            return await asyncio.to_thread(credentials.get_frozen_credentials)
        return credentials.get_frozen_credentials()

    def _resolve_chain(self) -> Any:
        import botocore.session

        session = botocore.session.Session(profile=self._config.profile)
        credentials = session.get_credentials()
        if credentials is None:
            raise LookupError("no AWS credentials found (config keys, environment, profile or instance role)")
        return credentials

    async def signed_headers(self, url: str, body: bytes, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Headers for a POST of `body` to `url` (the exact URL and bytes that will be sent)."""
        frozen = await self._frozen()
        request = AWSRequest(
            method="POST", url=url, data=body, headers={"Content-Type": "application/json", **(extra or {})}
        )
        SigV4Auth(Credentials(frozen.access_key, frozen.secret_key, frozen.token), SIGNING_NAME, self.region).add_auth(
            request
        )
        return dict(request.headers.items())
