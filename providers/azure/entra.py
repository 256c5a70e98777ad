"""Microsoft Entra ID access tokens (client-credentials flow), cached and refreshed before expiry.

One token serves every request of a provider until five minutes before it expires; concurrent
requests then share a single refresh. Fetched with the gateway's own HTTP client, so no extra SDK.
"""

from __future__ import annotations

import asyncio

import httpx

from providers.azure.config import EntraCredentials

_REFRESH_MARGIN_S = 300.0


class EntraTokenError(Exception):
    pass


class EntraTokenSource:
    def __init__(self, credentials: EntraCredentials, http: httpx.AsyncClient) -> None:
        self._credentials = credentials
        self._http = http
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    async def token(self) -> str:
        loop = asyncio.get_running_loop()
        if self._token is not None and self._expires_at - loop.time() > _REFRESH_MARGIN_S:
            return self._token
        async with self._lock:
            if self._token is None or self._expires_at - loop.time() <= _REFRESH_MARGIN_S:
                await self._refresh()
        assert self._token is not None
        return self._token

    def invalidate(self) -> None:
        self._token = None

    async def _refresh(self) -> None:
        creds = self._credentials
        url = f"{creds.authority.rstrip('/')}/{creds.tenant_id}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": creds.client_id,
            "client_secret": creds.client_secret.get_secret_value(),
            "scope": creds.scope,
        }
        try:
            response = await self._http.post(url, data=form, timeout=httpx.Timeout(10.0))
        except httpx.HTTPError as exc:
            raise EntraTokenError(f"token endpoint unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise EntraTokenError(f"token endpoint answered {response.status_code}")
        answer = response.json()
        self._token = str(answer["access_token"])
        self._expires_at = asyncio.get_running_loop().time() + float(answer.get("expires_in", 3600))
