"""Tenants through the running gateway: keys, model access, tags, cost, budgets, rate limits, the ledger."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gateway.costs import cost_usd
from gateway.tenancy import parse_tags
from providers.schema import Usage
from routing.config import Price

ADMIN_KEY = "admin-key-for-tenancy"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def config(redis_url: str | None = None, extra_tenants: str = "") -> str:
    state = f"state: {{redis_url: '{redis_url}'}}\n" if redis_url else ""
    return f"""{state}
admin: {{api_key_sha256: {sha(ADMIN_KEY)}}}
ledger: {{url: 'sqlite:///{{ledger}}', spill_path: '{{spill}}', flush_interval_s: 0.05}}
providers:
  m: {{type: mock, min_words: 20, max_words: 20}}
models:
  chat:
    deployments: [{{provider: m, model: mock-chat-1, price: {{input_per_mtok: 1000, output_per_mtok: 2000}}}}]
  other:
    deployments: [{{provider: m, model: mock-chat-2}}]
  vectors: {{mode: embeddings, deployments: [{{provider: m, model: mock-embedding-1}}]}}
tenants:
  acme:
    keys: [{{sha256: {sha("acme-key")}, name: ci}}, {{sha256: {sha("acme-key-2")}, name: laptop}}]
    allowed_models: [chat, vectors]
  globex:
    keys: [{{sha256: {sha("globex-key")}}}]
    rate_limits: {{rpm: 3}}
  initech:
    keys: [{{sha256: {sha("initech-key")}}}]
    budgets: {{daily_usd: 0.10}}
  hooli:
    keys: [{{sha256: {sha("hooli-key")}}}]
    budgets: {{daily_usd: 0.30}}
  steerer:
    keys: [{{sha256: {sha("steerer-key")}}}]
    allowed_models: [chat]
    policy: {{allow_route_header: true}}
{extra_tenants}"""


@pytest.fixture
def gateway(gateway_factory: Callable[[str], str], tmp_path: Any) -> str:
    text = config().replace("{ledger}", str(tmp_path / "ledger.sqlite3")).replace("{spill}", str(tmp_path / "s.jsonl"))
    return gateway_factory(text)


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def usage(url: str, group_by: str = "tenant,status", tenant: str | None = None) -> list[dict[str, Any]]:
    time.sleep(0.3)  # the ledger writes in batches every 50 ms here
    params = {"group_by": group_by, "from": "1h"}
    if tenant:
        params["tenant"] = tenant
    response = httpx.get(url + "/admin/usage", params=params, headers={"x-admin-key": ADMIN_KEY})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_a_request_without_a_key_or_with_a_wrong_one_gets_401(gateway: str) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    missing = httpx.post(gateway + "/v1/chat/completions", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as wrong:
        client(gateway, "not-a-key").chat.completions.create(model="chat", messages=body["messages"])
    assert wrong.value.code == "invalid_api_key"
    assert "not-a-key" not in wrong.value.message
    assert client(gateway, "acme-key").chat.completions.create(model="chat", messages=body["messages"]).choices


def test_a_tenant_key_not_allowed_the_model_gets_403(gateway: str) -> None:
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(gateway, "acme-key").chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    assert denied.value.code == "model_not_allowed"
    assert client(gateway, "globex-key").chat.completions.create(
        model="other", messages=[{"role": "user", "content": "x"}]
    )


def test_cost_header_matches_the_price_and_the_reported_usage(gateway: str) -> None:
    raw = client(gateway, "acme-key").chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": "price me"}]
    )
    completion = raw.parse()
    assert completion.usage is not None
    expected = (completion.usage.prompt_tokens * 1000 + completion.usage.completion_tokens * 2000) / 1e6
    assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected, abs=1e-6)


def test_streams_carry_their_cost_in_a_comment_and_every_request_has_one_ledger_record(gateway: str) -> None:
    acme = client(gateway, "acme-key")
    messages = [{"role": "user", "content": "stream me"}]
    with httpx.stream(
        "POST",
        gateway + "/v1/chat/completions",
        json={"model": "chat", "messages": messages, "stream": True},
        headers={"authorization": "Bearer acme-key", "x-gateway-tags": "team=growth,feature=search,env=prod"},
    ) as response:
        text = response.read().decode()
    assert text.endswith("data: [DONE]\n\n")
    stream_cost = float(text.split(": x-gateway-cost-usd=", 1)[1].split("\n", 1)[0])
    assert stream_cost > 0
    acme.chat.completions.create(model="chat", messages=messages, metadata={"team": "growth", "feature": "chat"})
    with pytest.raises(openai.PermissionDeniedError):
        acme.chat.completions.create(model="other", messages=messages)
    acme.embeddings.create(model="vectors", input="embed me")
    rows = usage(gateway, "tenant,team,feature,status")
    by_key = {(r["tenant"], r["team"], r["feature"], r["status"]): r["requests"] for r in rows}
    assert by_key == {
        ("acme", "growth", "search", 200): 1,
        ("acme", "growth", "chat", 200): 1,
        ("acme", None, None, 403): 1,
        ("acme", None, None, 200): 1,
    }
    assert sum(r["cost_usd"] for r in rows if r["status"] == 200) > 0
    by_feature = {r["feature"]: r["cost_usd"] for r in usage(gateway, "feature") if r["feature"] == "search"}
    assert by_feature["search"] == pytest.approx(stream_cost, abs=1e-6)  # the comment is what was recorded


def test_a_budget_stops_spend_with_429_budget_exceeded(gateway: str) -> None:
    initech = client(gateway, "initech-key")
    messages = [{"role": "user", "content": "spend"}]
    served, refused, charged = 0, None, 0.0
    for _ in range(20):
        try:
            raw = initech.chat.completions.with_raw_response.create(model="chat", messages=messages, max_tokens=20)
            served += 1
            charged += float(raw.headers["x-gateway-cost-usd"])
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None and refused.code == "budget_exceeded", "the budget never stopped spend"
    assert served >= 1
    assert "initech" in refused.message and "initech-key" not in refused.message
    spent = sum(r["cost_usd"] for r in usage(gateway, tenant="initech") if r["status"] == 200)
    assert spent == pytest.approx(charged, abs=1e-6)  # the ledger holds what the responses said
    assert spent >= 0.10 - 0.05  # spend reached the budget, less at most one request's estimate
    assert spent <= 0.10 + 0.05  # at most one request's actual cost over its estimate


def test_admission_counts_every_choice_of_n_against_the_budget(gateway: str) -> None:
    """n=5 with max_tokens 40 may produce 200 output tokens ($0.40 here): more than the $0.30 budget."""
    hooli = client(gateway, "hooli-key")
    messages = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.RateLimitError) as refused:
        hooli.chat.completions.create(model="chat", messages=messages, max_tokens=40, n=5)
    assert refused.value.code == "budget_exceeded"
    assert hooli.chat.completions.create(model="chat", messages=messages, max_tokens=40, n=1).choices


def test_rate_limit_per_minute_gives_429_with_openai_style_headers(gateway: str) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    auth = {"authorization": "Bearer globex-key"}
    answers = [httpx.post(gateway + "/v1/chat/completions", json=body, headers=auth) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
    assert answers[0].headers["x-ratelimit-remaining-requests"] == "2"
    refused = answers[3]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_requests_reusing_an_x_request_id_still_get_a_record_each(gateway: str) -> None:
    """The ledger's key is the gateway's own: a client (or a retrying proxy) reusing an id loses nothing,
    and one tenant cannot shadow another's records by guessing its ids."""
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    for key in ("acme-key", "acme-key", "globex-key"):
        headers = {"authorization": f"Bearer {key}", "x-request-id": "same-id"}
        answer = httpx.post(gateway + "/v1/chat/completions", json=body, headers=headers)
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "same-id"
    rows = {r["tenant"]: r["requests"] for r in usage(gateway, "tenant")}
    assert rows == {"acme": 2, "globex": 1}


def test_the_route_header_cannot_reach_a_model_the_tenant_may_not_use(gateway: str) -> None:
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"authorization": "Bearer steerer-key", "x-gateway-route": "other"}
    answer = httpx.post(gateway + "/v1/chat/completions", json=body, headers=headers)
    assert answer.status_code == 200 and answer.headers["x-gateway-alias"] == "chat"


async def test_an_account_closed_while_its_client_leaves_still_leaves_its_record() -> None:
    """Settling a budget awaits Redis; a cancellation there (the client left) must not lose the record."""
    import asyncio

    from gateway.accounting import Account
    from gateway.tenancy import ANONYMOUS

    class SlowLimits:
        async def settle(self, admission: object, cost: float, tokens: int) -> None:
            await asyncio.sleep(1)

    class Ledger:
        def __init__(self) -> None:
            self.records: list[object] = []

        def submit(self, record: object) -> None:
            self.records.append(record)

    class Runtime:
        limits = SlowLimits()
        ledger = Ledger()

    account = Account(request_id="r1", endpoint="chat", caller=ANONYMOUS, tags={})
    account.admission = object()
    closing = asyncio.ensure_future(account.close(Runtime, status=200))
    await asyncio.sleep(0.05)
    closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)
    assert [record.status for record in Runtime.ledger.records] == [200]  # the cancelled close left its record
    assert await account.close(Runtime, status=499) == 0.0  # closed once: the second exit adds nothing
    assert len(Runtime.ledger.records) == 1


def test_admin_endpoints_refuse_tenant_keys(gateway: str) -> None:
    for key in ("acme-key", "globex-key"):
        for header in ({"authorization": f"Bearer {key}"}, {"x-admin-key": key}):
            response = httpx.get(gateway + "/admin/usage", params={"group_by": "tenant"}, headers=header)
            assert response.status_code == 401


def test_the_embedded_default_runs_without_keys(gateway_url: str) -> None:
    answer = httpx.post(
        gateway_url + "/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert answer.status_code == 200 and "x-gateway-cost-usd" in answer.headers


@pytest.mark.parametrize(
    ("tokens", "price", "compute_s", "expected"),
    [
        (
            Usage(prompt_tokens=1_000_000, completion_tokens=500_000),
            Price(input_per_mtok=2.5, output_per_mtok=10),
            None,
            7.5,
        ),
        # 400k of the prompt came from the provider's cache, billed at the cached rate.
        (
            Usage(prompt_tokens=1_000_000, completion_tokens=0, cached_tokens=400_000),
            Price(input_per_mtok=2.5, cached_input_per_mtok=1.25),
            None,
            0.6 * 2.5 + 0.4 * 1.25,
        ),
        # No cached rate: cached tokens cost the input rate.
        (Usage(prompt_tokens=1000, cached_tokens=1000), Price(input_per_mtok=3), None, 0.003),
        # Reasoning tokens are part of completion_tokens: billed once, as output.
        (Usage(prompt_tokens=0, completion_tokens=2000, reasoning_tokens=1500), Price(output_per_mtok=60), None, 0.12),
        # Billed by compute time (Replicate): seconds × price, plus any token prices.
        (Usage(prompt_tokens=100, completion_tokens=100), Price(per_second=0.0014), 12.5, 0.0175),
        (Usage(prompt_tokens=10, completion_tokens=10), None, None, 0.0),
    ],
)
def test_cost_arithmetic(tokens: Usage, price: Price | None, compute_s: float | None, expected: float) -> None:
    assert cost_usd(tokens, price, compute_s) == pytest.approx(expected, abs=1e-9)


def test_tag_precedence_headers_over_metadata_and_the_tags_header_over_the_one_tag_headers() -> None:
    metadata = {"team": "from-metadata", "feature": "from-metadata", "env": "prod"}
    single = {"team": "from-team-header", "feature": "from-feature-header"}
    tags = parse_tags("feature=from-tags-header", metadata, 10, single)
    assert tags == {"team": "from-team-header", "feature": "from-tags-header", "env": "prod"}
    assert parse_tags(None, metadata, 10, {"team": None, "feature": ""}) == metadata
    assert len(parse_tags("a=1,b=2", {"c": "3"}, 2, {"team": "t"})) == 2  # the one-tag headers count too
