"""Routing through the running gateway: rules, filters, explain, admin endpoints and live stats."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import serve_gateway
from tests.support.openapi import OpenAPISchemas

ADMIN_KEY = "admin-secret-1"
ADMIN = {"x-admin-key": ADMIN_KEY}
CONFIG = f"""
admin: {{api_key_sha256: {hashlib.sha256(ADMIN_KEY.encode()).hexdigest()}}}
providers:
  a: {{type: mock}}
  b: {{type: mock}}
models:
  cheap:
    strategy: cheapest
    deployments:
      - {{provider: a, model: small, price: {{input_per_mtok: 0.2, output_per_mtok: 0.6}}, context_window: 2000,
         region: us}}
      - {{provider: b, model: medium, price: {{input_per_mtok: 1, output_per_mtok: 3}}, context_window: 100000,
         region: eu, tags: [hipaa], capabilities: [tools, json_schema]}}
  frontier:
    deployments: [{{provider: b, model: large, capabilities: [tools, vision, json_schema]}}]
  tiny:
    deployments: [{{provider: a, model: tiny, context_window: 50}}]
routes:
  - when: {{feature: moderation}}
    use: cheap
  - when: {{has_images: true}}
    use: frontier
  - when: {{prompt_tokens_gt: 3000, model: cheap}}
    use: frontier
"""
SHORT = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "word " * 4000}]
IMAGE = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }
]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve_gateway(CONFIG) as base:
        yield base


def chat(url: str, model: str, messages: list[Any], **extra: Any) -> httpx.Response:
    headers = extra.pop("headers", {})
    return httpx.post(
        url + "/v1/chat/completions", json={"model": model, "messages": messages, **extra}, headers=headers
    )


@pytest.mark.parametrize(
    ("model", "messages", "headers", "extra", "alias", "served_by"),
    [
        ("cheap", SHORT, {}, {}, "cheap", "small"),
        ("frontier", SHORT, {"x-gateway-feature": "moderation"}, {}, "cheap", "small"),
        ("frontier", SHORT, {}, {"metadata": {"feature": "moderation"}}, "cheap", "small"),
        ("cheap", IMAGE, {}, {}, "frontier", "large"),
        ("cheap", LONG, {}, {}, "frontier", "large"),
        ("cheap", SHORT, {}, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "cheap", "small"),
    ],
)
def test_rules_pick_the_alias_and_the_response_says_who_served(
    url: str,
    model: str,
    messages: list[Any],
    headers: dict[str, str],
    extra: dict[str, Any],
    alias: str,
    served_by: str,
) -> None:
    response = chat(url, model, messages, headers=headers, **extra)
    assert response.status_code == 200, response.text
    assert response.headers["x-gateway-alias"] == alias and response.headers["x-gateway-model"] == served_by


def test_context_window_filter_moves_a_long_prompt_to_a_bigger_deployment(url: str) -> None:
    medium_prompt = [{"role": "user", "content": "word " * 2500}]  # over small's 2000, under the 3000 rule
    response = chat(url, "cheap", medium_prompt)
    assert response.headers["x-gateway-model"] == "medium"


def test_when_every_deployment_is_filtered_the_error_names_each_constraint(url: str, openapi: OpenAPISchemas) -> None:
    response = chat(url, "tiny", LONG)
    assert response.status_code == 400
    openapi.validate("ErrorResponse", response.json())
    error = response.json()["error"]
    assert error["code"] == "no_suitable_deployment" and "a/tiny" in error["message"]
    assert "context window is 50" in error["message"] and response.headers["x-should-retry"] == "false"


TENANTS = f"""
tenants:
  acme:
    keys: [{{sha256: {hashlib.sha256(b"acme-key").hexdigest()}}}]
    policy: {{allowed_regions: [eu], required_tags: [hipaa]}}
  trusted:
    keys: [{{sha256: {hashlib.sha256(b"trusted-key").hexdigest()}}}]
    policy: {{allow_route_header: true}}
  plain:
    keys: [{{sha256: {hashlib.sha256(b"plain-key").hexdigest()}}}]
"""


def as_tenant(key: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"authorization": f"Bearer {key}", **(extra or {})}


def test_tenant_policy_filters_are_a_403_and_data_residency_is_kept(gateway_factory: Any) -> None:
    url = gateway_factory(CONFIG + TENANTS)
    allowed = chat(url, "cheap", SHORT, headers=as_tenant("acme-key"))  # small is cheaper, but US and no hipaa
    assert allowed.headers["x-gateway-model"] == "medium"
    refused = chat(url, "tiny", SHORT, headers=as_tenant("acme-key"))
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "deployment_not_allowed"
    assert "region 'unknown' is outside this tenant's regions (eu)" in refused.json()["error"]["message"]
    assert chat(url, "tiny", SHORT, headers=as_tenant("plain-key")).status_code == 200  # no policy: served


def test_route_header_is_honoured_only_when_the_tenant_may_use_it(gateway_factory: Any) -> None:
    url = gateway_factory(CONFIG + TENANTS)
    route = {"x-gateway-route": "frontier"}
    assert chat(url, "cheap", SHORT, headers=as_tenant("plain-key", route)).headers["x-gateway-alias"] == "cheap"
    response = chat(url, "cheap", SHORT, headers=as_tenant("trusted-key", route))
    assert response.headers["x-gateway-alias"] == "frontier"


def test_admin_endpoints_need_the_admin_key(url: str) -> None:
    body = {"model": "cheap", "prompt_tokens": 10}
    assert httpx.post(url + "/admin/route/explain", json=body).status_code == 401
    assert httpx.post(url + "/admin/route/explain", json=body, headers={"x-admin-key": "nope"}).status_code == 401
    assert httpx.post(url + "/admin/route/explain", json=body, headers=ADMIN).status_code == 200
    with serve_gateway(CONFIG.split("\n", 2)[2]) as no_admin:  # the same config without an admin key
        assert httpx.post(no_admin + "/admin/route/explain", json=body, headers=ADMIN).status_code == 404


def test_explain_endpoint_lists_candidates_and_what_was_filtered(url: str) -> None:
    explanation = httpx.post(
        url + "/admin/route/explain", headers=ADMIN, json={"model": "cheap", "prompt_tokens": 2500, "tools": True}
    ).json()
    assert explanation["alias"] == "cheap" and explanation["strategy"] == "cheapest"
    assert [c["deployment"] for c in explanation["candidates"]] == ["b/medium"]
    assert explanation["filtered_out"][0]["deployment"] == "a/small"
    assert "context window is 2000" in explanation["filtered_out"][0]["reason"]
    routed = httpx.post(
        url + "/admin/route/explain", headers=ADMIN, json={"model": "cheap", "feature": "moderation", "images": True}
    ).json()
    assert routed["chosen_by"] == "routes[0]"


def test_every_call_feeds_the_live_stats(url: str) -> None:
    def observations() -> int:
        data = httpx.get(url + "/admin/deployments", headers=ADMIN).json()["data"]
        return next(d["stats"]["observations"] for d in data if d["alias"] == "frontier")

    before = observations()
    for _ in range(3):
        chat(url, "frontier", SHORT)
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={"model": "frontier", "messages": SHORT, "stream": True}
    ) as response:
        response.read()
    assert observations() == before + 4


def test_route_explain_cli_on_the_example_config(repo_root: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "route",
            "explain",
            "--config",
            "config/routing-example.yaml",
            "--model",
            "chat-fast",
            "--json-schema",
            "--prompt-tokens",
            "20000",
            "--max-tokens",
            "16000",
        ],
        capture_output=True,
        text=True,
        cwd=repo_root,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "alias 'chat-fast' (chosen by the requested model); strategy latency-slo, SLO p95 TTFT 300 ms" in out
    assert "serverless/small-1: cannot do what the request needs: json_schema" in out
    assert "budget-api/small-1: needs 36000 tokens (prompt 20000 + output 16000); the context window is 32000" in out


def test_no_call_is_left_in_flight_whatever_its_outcome(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from providers.mock import MockAdapter

    for stream in (False, True):
        httpx.post(url + "/v1/chat/completions", json={"model": "frontier", "messages": SHORT, "stream": stream})
    original = MockAdapter.stream

    async def broken_first_chunk(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug before the first chunk")
        yield  # pragma: no cover

    monkeypatch.setattr(MockAdapter, "stream", broken_first_chunk)
    assert (
        httpx.post(
            url + "/v1/chat/completions", json={"model": "frontier", "messages": SHORT, "stream": True}
        ).status_code
        == 500
    )
    monkeypatch.setattr(MockAdapter, "stream", original)
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={"model": "frontier", "messages": SHORT, "stream": True}
    ) as response:
        next(response.iter_lines())  # leave mid-stream
    deadline = __import__("time").monotonic() + 3
    while True:
        data = httpx.get(url + "/admin/deployments", headers=ADMIN).json()["data"]
        if all(d["stats"]["in_flight"] == 0 for d in data):
            break
        assert __import__("time").monotonic() < deadline, data


def test_explain_rejects_bad_numbers(url: str) -> None:
    response = httpx.post(url + "/admin/route/explain", headers=ADMIN, json={"model": "cheap", "max_tokens": "100"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "max_tokens"


def test_prompt_tokens_count_tool_definitions_too() -> None:
    from providers.schema import ChatCompletionRequest
    from routing.context import RequestFacts

    tool = {
        "type": "function",
        "function": {"name": "lookup", "description": "word " * 500, "parameters": {"type": "object"}},
    }
    plain = {"model": "m", "messages": SHORT}
    with_tools = {**plain, "tools": [tool]}
    base = RequestFacts.of_chat(ChatCompletionRequest.model_validate(plain), plain).prompt_tokens
    more = RequestFacts.of_chat(ChatCompletionRequest.model_validate(with_tools), with_tools).prompt_tokens
    assert more - base >= 500
