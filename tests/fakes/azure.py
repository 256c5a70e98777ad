"""A scriptable fake Azure OpenAI resource plus the Entra ID (AAD) token endpoint, in one Starlette app.

Azure speaks OpenAI's wire format with its own routes, auth and extras, so this subclasses `FakeOpenAI`
(same behaviours, reply builders, recording and stream events) and only adds what differs
the provider's API reference:

- routes: classic `/openai/deployments/{deployment}/{chat/completions|embeddings}?api-version=...` and
  v1 `/openai/v1/{chat/completions|embeddings}` (deployment = body `model`);
- auth: `api-key: <key>`, or `Authorization: Bearer <Entra token from POST /{tenant}/oauth2/v2.0/token>`;
  on the v1 route `Bearer <key>` too (that is what the plain OpenAI client sends);
- bodies: `prompt_filter_results` and per-choice `content_filter_results`; streams open with Azure's
  empty-choices chunk; `model` is the deployment's underlying model, as Azure reports it;
- behaviours `ContentFiltered`, `PromptFiltered`, `RateLimited` on top of FakeOpenAI's.

Use it as a context manager, which serves it on a free loopback port:

    with FakeAzureOpenAI() as fake:
        client = openai.AzureOpenAI(azure_endpoint=fake.url, api_key=fake.api_key,
                                    api_version="2024-10-21", max_retries=0)
"""

from __future__ import annotations

import base64
import json
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.fakes.openai_upstream import (
    Behaviour,
    Error,
    FakeOpenAI,
    Hang,
    Malformed,
    RecordedRequest,
    Reply,
    StreamChunks,
    _headers,
    _json,
    _sse,
    _sse_json,
)
from tests.support.server import ServerThread, free_port

__all__ = [
    "COGNITIVE_SERVICES_SCOPE",
    "DEFAULT_DEPLOYMENTS",
    "AzureBehaviour",
    "AzureRequest",
    "ContentFiltered",
    "Error",
    "FakeAzureOpenAI",
    "Hang",
    "Malformed",
    "PromptFiltered",
    "RateLimited",
    "Reply",
    "StreamChunks",
]

COGNITIVE_SERVICES_SCOPE = "https://cognitiveservices.azure.com/.default"
#: deployment name -> underlying model (what Azure puts in `model`, and what the gateway prices by)
DEFAULT_DEPLOYMENTS: Mapping[str, str] = {
    "gpt-4o": "gpt-4o-2024-11-20",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "text-embedding-3-small": "text-embedding-3-small",
}

NOT_FOUND = "Resource not found"
BAD_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an "
    "active subscription and use a correct regional API endpoint for your resource."
)
BAD_TOKEN = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect (https://cognitiveservices.azure.com), "
    "or have expired."
)
NO_DEPLOYMENT = (
    "The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, "
    "please wait a moment and try again."
)
PROMPT_FILTERED = (
    "The response was filtered due to the prompt triggering Azure OpenAI's content management policy. Please "
    "modify your prompt and retry. To learn more about our content filtering policies please read our "
    "documentation: https://go.microsoft.com/fwlink/?linkid=2198766"
)
_HARM_CATEGORIES = ("hate", "self_harm", "sexual", "violence")


# --- behaviours (FakeOpenAI's Reply/StreamChunks/Error/Malformed/Hang work too) ------------------


@dataclass(frozen=True)
class ContentFiltered:
    """A 200 answer cut by Azure's output filter: `finish_reason: "content_filter"`, `hate` marked filtered.

    `partial` is the text produced before the cut (streamed as usual); None or "" gives `content: null`.
    """

    partial: str | None = None


@dataclass(frozen=True)
class PromptFiltered:
    """400 `content_filter` on the prompt (innererror `ResponsibleAIPolicyViolation`, `hate` high)."""


@dataclass(frozen=True)
class RateLimited:
    """429 with Azure's message and `retry-after` (whole seconds, rounded up) plus `retry-after-ms`."""

    retry_after_ms: int = 1500


AzureBehaviour = Behaviour | ContentFiltered | PromptFiltered | RateLimited


@dataclass
class AzureRequest(RecordedRequest):
    """A recorded request plus the deployment it targeted (path on classic routes, body `model` on v1)."""

    deployment: str | None = None


# --- the fake -----------------------------------------------------------------------------------


class FakeAzureOpenAI(FakeOpenAI):
    """Azure OpenAI data plane + Entra ID token endpoint, served on 127.0.0.1 while used as a context manager."""

    requests: list[AzureRequest]  # type: ignore[assignment]  # _new_record makes every entry an AzureRequest

    def __init__(
        self,
        *,
        api_key: str = "k",
        deployments: Mapping[str, str] | Iterable[str] = DEFAULT_DEPLOYMENTS,
        api_versions: Collection[str] | None = None,
        tenant: str = "fake-tenant",
        client_id: str = "fake-client-id",
        client_secret: str = "fake-client-secret",
        expires_in: int = 3599,
        port: int | None = None,
    ) -> None:
        super().__init__()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        # a plain iterable of names means each deployment reports its own name as the model
        self.deployments = dict(deployments) if isinstance(deployments, Mapping) else {d: d for d in deployments}
        self.api_versions = api_versions  # None accepts any non-empty api-version on classic routes
        self.tenant = tenant
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in  # lifetime of tokens issued from now on; tests may shorten it
        self._default_expires_in = expires_in
        self.token_requests = 0
        self.auth_failures = 0
        self._tokens: dict[str, float] = {}  # access token -> monotonic expiry
        self._server: ServerThread | None = None
        any_method = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        self.app = Starlette(
            routes=[
                Route("/openai/deployments/{deployment}/chat/completions", self._classic_chat, methods=["POST"]),
                Route("/openai/deployments/{deployment}/embeddings", self._classic_embeddings, methods=["POST"]),
                Route("/openai/v1/chat/completions", self._v1_chat, methods=["POST"]),
                Route("/openai/v1/embeddings", self._v1_embeddings, methods=["POST"]),
                Route("/{tenant}/oauth2/v2.0/token", self._token, methods=["POST"]),
                Route("/{path:path}", self._not_found, methods=any_method),
            ]
        )

    # -- lifecycle and credentials --

    def __enter__(self) -> FakeAzureOpenAI:
        self._server = ServerThread(self.app, port=self.port).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.__exit__(*exc)
            self._server = None

    @property
    def token_url(self) -> str:
        """Where a client-credentials grant for this fake's tenant goes (Entra's v2.0 token endpoint)."""
        return f"{self.url}/{self.tenant}/oauth2/v2.0/token"

    def script(self, *behaviours: AzureBehaviour) -> None:  # type: ignore[override]  # wider than the base's
        """Queue behaviours; each data-plane request that passes auth pops the next, then `Reply()` forever."""
        with self._lock:
            self._queue.extend(behaviours)

    def issue_token(self, *, expires_in: int | None = None) -> str:
        """A valid Entra access token without the OAuth round trip (for `azure_ad_token=`)."""
        lifetime = self.expires_in if expires_in is None else expires_in
        claims = {
            "aud": "https://cognitiveservices.azure.com",
            "iss": f"https://sts.windows.net/{self.tenant}/",
            "tid": self.tenant,
            "appid": self.client_id,
            "exp": int(time.time()) + lifetime,
        }
        token = ".".join(
            [_b64url({"typ": "JWT", "alg": "RS256"}), _b64url(claims), secrets.token_urlsafe(32)]
        )  # JWT-shaped, so code that peeks at `exp` works; the signature is junk
        with self._lock:
            self._tokens[token] = time.monotonic() + lifetime
        return token

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far: the next Bearer call gets 401 (tests refresh-on-401)."""
        with self._lock:
            self._tokens.clear()

    def reset(self) -> None:
        """Forget requests, script, tokens and counters, keeping the server (for one fake shared by a module)."""
        super().reset()
        with self._lock:
            self._tokens.clear()
            self.token_requests = 0
            self.auth_failures = 0
            self.expires_in = self._default_expires_in

    # -- hooks into FakeOpenAI --

    def _new_record(self, request: Request, body: Any) -> AzureRequest:
        base = super()._new_record(request, body)
        deployment = request.path_params.get("deployment")
        if deployment is None and request.url.path.startswith("/openai/v1/"):
            deployment = body.get("model") if isinstance(body, dict) else None
        return AzureRequest(base.method, base.path, base.headers, base.json, base.query, deployment)

    async def _apply(self, request: Request, behaviour: object, body: Any) -> tuple[Behaviour, Response | None]:
        if isinstance(behaviour, ContentFiltered):
            # built as a normal reply; _shape_* turn "content_filter" choices into Azure's filtered shape
            return Reply(content=behaviour.partial or "", finish_reason="content_filter"), None
        if isinstance(behaviour, PromptFiltered):
            return Reply(), _azure_json(400, _prompt_filtered_body())
        if isinstance(behaviour, RateLimited):
            return Reply(), _rate_limited(request, behaviour)
        return await super()._apply(request, behaviour, body)

    def _shape_completion(self, completion: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
        completion.pop("service_tier", None)
        for choice in completion["choices"]:
            filtered = choice["finish_reason"] == "content_filter"
            if filtered and not choice["message"]["content"]:
                choice["message"] = {**choice["message"], "content": None}
            choice["content_filter_results"] = _output_filter_results(filtered)
        completion["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _prompt_filter_results()}]
        return completion

    async def _shape_stream(  # type: ignore[override]  # an async generator is the AsyncIterator the base returns
        self, frames: AsyncIterator[bytes | None], req: dict[str, Any]
    ) -> AsyncIterator[bytes | None]:
        # Azure's first event: the prompt's filter verdict, before the model has produced anything
        yield _sse(
            {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _prompt_filter_results()}],
            }
        )
        async for frame in frames:
            chunk = _sse_json(frame)
            if chunk is None or "error" in chunk:
                yield frame
                continue
            chunk.pop("service_tier", None)
            chunk.pop("obfuscation", None)
            for choice in chunk["choices"]:
                filtered = choice.get("finish_reason") == "content_filter"
                # Azure annotates chunks that carry text; role/tool/finish chunks get an empty object
                annotated = filtered or bool(choice.get("delta", {}).get("content"))
                choice["content_filter_results"] = _output_filter_results(filtered) if annotated else {}
            yield _sse(chunk)

    # -- data plane --

    async def _classic_chat(self, request: Request) -> Response:
        return await self._serve(request, v1=False, embeddings=False)

    async def _classic_embeddings(self, request: Request) -> Response:
        return await self._serve(request, v1=False, embeddings=True)

    async def _v1_chat(self, request: Request) -> Response:
        return await self._serve(request, v1=True, embeddings=False)

    async def _v1_embeddings(self, request: Request) -> Response:
        return await self._serve(request, v1=True, embeddings=True)

    async def _serve(self, request: Request, *, v1: bool, embeddings: bool) -> Response:
        """Record, gate in Azure's order (api-version, auth, deployment), then let FakeOpenAI answer."""
        body = await self._record(request)
        recorded = self.requests[-1]
        if not v1:
            version = request.query_params.get("api-version")
            if not version or (self.api_versions is not None and version not in self.api_versions):
                return _azure_error(404, "404", NOT_FOUND)
        refused = self._auth_failure(request, v1=v1)
        if refused is not None:
            return refused
        if v1 and recorded.deployment is None:
            return _azure_json(400, _openai_error("you must provide a model parameter", "invalid_request_error"))
        model = self.deployments.get(recorded.deployment or "")
        if model is None:
            return _azure_error(404, "DeploymentNotFound", NO_DEPLOYMENT)
        # Azure ignores the body's `model` and reports the deployment's underlying model
        forwarded = {**body, "model": model} if isinstance(body, dict) else body
        reply = self._embeddings_reply if embeddings else self._chat_reply
        response = await reply(request, forwarded)
        response.headers.update(_azure_headers())
        return response

    def _auth_failure(self, request: Request, *, v1: bool) -> Response | None:
        key = request.headers.get("api-key")
        if key is not None and secrets.compare_digest(key, self.api_key):
            return None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            if v1 and secrets.compare_digest(token, self.api_key):
                return None
            with self._lock:
                expiry = self._tokens.get(token)
            if expiry is not None and time.monotonic() < expiry:
                return None
        with self._lock:
            self.auth_failures += 1
        if key is None and scheme.lower() == "bearer":
            return _azure_error(401, "401", BAD_TOKEN)
        return _azure_error(401, "401", BAD_KEY)

    async def _not_found(self, request: Request) -> Response:
        await self._record(request)
        return _azure_error(404, "404", NOT_FOUND)

    # -- Entra ID token endpoint --

    async def _token(self, request: Request) -> Response:
        raw = parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True)
        form = {name: values[0] for name, values in raw.items()}
        with self._lock:
            self.token_requests += 1
        tenant = request.path_params["tenant"]
        if tenant != self.tenant:
            return _aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        if form.get("grant_type") != "client_credentials":
            return _aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if form.get("client_id") != self.client_id:
            message = f"Application with identifier '{form.get('client_id')}' was not found in the directory."
            return _aad_error(400, "unauthorized_client", 700016, message)
        if not secrets.compare_digest(form.get("client_secret", ""), self.client_secret):
            return _aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if form.get("scope") != COGNITIVE_SERVICES_SCOPE:
            message = f"The provided value for scope {form.get('scope')} is not valid."
            return _aad_error(400, "invalid_scope", 1002012, message)
        lifetime = self.expires_in
        token = self.issue_token(expires_in=lifetime)
        body = {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}
        return _json(200, body, {"cache-control": "no-store, no-cache"})


# --- Azure bodies -------------------------------------------------------------------------------


def _output_filter_results(filtered: bool) -> dict[str, Any]:
    """Per-choice verdict; `hate` is the category a filtered answer trips."""
    results: dict[str, Any] = {name: {"filtered": False, "severity": "safe"} for name in _HARM_CATEGORIES}
    results["protected_material_code"] = {"filtered": False, "detected": False}
    results["protected_material_text"] = {"filtered": False, "detected": False}
    if filtered:
        results["hate"] = {"filtered": True, "severity": "high"}
    return dict(sorted(results.items()))


def _prompt_filter_results(filtered: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {name: {"filtered": False, "severity": "safe"} for name in _HARM_CATEGORIES}
    results["jailbreak"] = {"filtered": False, "detected": False}
    if filtered:
        results["hate"] = {"filtered": True, "severity": "high"}
    return dict(sorted(results.items()))


def _prompt_filtered_body() -> dict[str, Any]:
    return {
        "error": {
            "message": PROMPT_FILTERED,
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": _prompt_filter_results(filtered=True),
            },
        }
    }


def _rate_limited(request: Request, spec: RateLimited) -> Response:
    seconds = max(1, math.ceil(spec.retry_after_ms / 1000))
    operation = "Embeddings_Create" if request.url.path.endswith("/embeddings") else "ChatCompletions_Create"
    version = request.query_params.get("api-version", "v1")
    message = (
        f"Requests to the {operation} Operation under Azure OpenAI API version {version} have exceeded token rate "
        f"limit of your current OpenAI S0 pricing tier. Please retry after {seconds} seconds. Please go here: "
        "https://aka.ms/oai/quotaincrease if you would like to further increase the default rate limit."
    )
    headers = {
        "retry-after": str(seconds),
        "retry-after-ms": str(spec.retry_after_ms),
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-remaining-tokens": "0",
    }
    return _azure_error(429, "429", message, headers)


def _openai_error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _azure_headers() -> dict[str, str]:
    return {
        "apim-request-id": str(uuid.uuid4()),
        "x-ms-region": "East US",
        "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-remaining-tokens": "99000",
    }


def _azure_json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Response:
    return _json(status, body, _headers({**_azure_headers(), **(headers or {})}))


def _azure_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _azure_json(status, {"error": {"code": code, "message": message}}, headers)


def _aad_error(status: int, error: str, code: int, description: str) -> Response:
    """Entra's OAuth error shape: `error` is a string and the AADSTS code leads the description."""
    trace = str(uuid.uuid4())
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: {description} Trace ID: {trace}",
        "error_codes": [code],
        "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        "trace_id": trace,
        "correlation_id": str(uuid.uuid4()),
    }
    return _json(status, body, {"cache-control": "no-store, no-cache"})


def _b64url(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode("utf-8")).rstrip(b"=").decode("ascii")
