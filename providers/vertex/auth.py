"""OAuth access tokens for Vertex, from google-auth, cached and refreshed before they expire.

google-auth refreshes synchronously (over `requests`), so refreshes run in a worker thread and are
shared: one refresh at a time per provider, however many requests are waiting. A token is refreshed
when it has less than five minutes left, so requests never carry one that expires on the way.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import orjson

from providers.vertex.config import VertexConfig

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
_REFRESH_MARGIN = datetime.timedelta(minutes=5)


class GoogleTokenSource:
    def __init__(self, config: VertexConfig) -> None:
        self._config = config
        self._credentials: Any = None
        self._lock = asyncio.Lock()

    def _load(self) -> Any:
        config = self._config
        if config.adc:
            import google.auth

            credentials, _ = google.auth.default(scopes=SCOPES)
            return credentials
        from google.oauth2 import service_account

        if config.credentials_json is not None:
            info = orjson.loads(config.credentials_json.get_secret_value())
            return service_account.Credentials.from_service_account_info(info, scopes=SCOPES)
        assert config.credentials_file is not None
        return service_account.Credentials.from_service_account_file(config.credentials_file, scopes=SCOPES)

    def _fresh_enough(self) -> bool:
        credentials = self._credentials
        if credentials is None or not credentials.token:
            return False
        expiry = credentials.expiry  # naive UTC, by google-auth's convention
        if expiry is None:
            return True
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        return expiry - now > _REFRESH_MARGIN

    async def token(self, *, force_refresh: bool = False) -> str:
        if not force_refresh and self._fresh_enough():
            return str(self._credentials.token)
        stale = self._credentials.token if self._credentials is not None else None
        async with self._lock:
            # Another request may have refreshed while this one waited for the lock.
            if self._credentials is not None and self._credentials.token != stale and self._fresh_enough():
                return str(self._credentials.token)
            await asyncio.to_thread(self._refresh)
        return str(self._credentials.token)

    def _refresh(self) -> None:
        from google.auth.transport.requests import Request

        if self._credentials is None:
            self._credentials = self._load()
        self._credentials.refresh(Request())
