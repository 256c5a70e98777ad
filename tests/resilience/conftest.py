"""Fixtures for the fault-injection suite: scriptable upstreams, a gateway config builder, stream readers.

Three fake OpenAI upstreams (`a`, `b`, `c`) and one fake Anthropic serve the whole module (they are reset
before each test); every test starts its own gateway, so circuit breakers, retry budgets and live stats
never leak from one test into the next.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.fakes.anthropic import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.server import ServerThread

MESSAGES = [{"role": "user", "content": "Tell me something about gateways."}]
#: Each upstream's api key; the fault tests check that none of them ever reaches a client.
KEYS = {"a": "sk-a-secret-1111", "b": "sk-b-secret-2222", "c": "sk-c-secret-3333"}
ANTHROPIC_KEY = "sk-ant-fake"
#: What every test runs with unless it says otherwise: fast backoff, retries on, breakers at their defaults.
BASE_RETRY = {"attempts_per_deployment": 2, "max_attempts": 6, "backoff_base_ms": 10, "backoff_max_ms": 40}


@dataclass
class Upstreams:
    a: FakeOpenAI
    b: FakeOpenAI
    c: FakeOpenAI
    urls: dict[str, str]
    claude: FakeAnthropic

    def all(self) -> dict[str, FakeOpenAI]:
        return {"a": self.a, "b": self.b, "c": self.c}

    def counts(self) -> dict[str, int]:
        """Chat requests each fake OpenAI received."""
        return {name: len(fake.requests) for name, fake in self.all().items()}


@pytest.fixture(scope="module")
def module_upstreams() -> Iterator[Upstreams]:
    fakes = {name: FakeOpenAI() for name in ("a", "b", "c")}
    servers = {name: ServerThread(fake.app) for name, fake in fakes.items()}
    for server in servers.values():
        server.__enter__()
    try:
        with FakeAnthropic(ANTHROPIC_KEY, reject_prefill=True) as claude:
            yield Upstreams(fakes["a"], fakes["b"], fakes["c"], {n: s.url for n, s in servers.items()}, claude=claude)
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)


@pytest.fixture
def upstreams(module_upstreams: Upstreams) -> Iterator[Upstreams]:
    for fake in module_upstreams.all().values():
        fake.reset()
    module_upstreams.claude.reset()
    yield module_upstreams


def gateway_config(
    upstreams: Upstreams,
    models: dict[str, Any],
    *,
    retry: dict[str, Any] | None = None,
    breaker: dict[str, Any] | None = None,
    continuations: int | None = None,
    extra_providers: dict[str, Any] | None = None,
) -> str:
    """A gateway config: providers `a`, `b`, `c` (the fakes), `mock` and `claude`, and the given models."""
    providers: dict[str, Any] = {
        name: {"type": "openai", "base_url": f"{upstreams.urls[name]}/v1", "api_key": KEYS[name]}
        for name in ("a", "b", "c")
    }
    providers["mock"] = {"type": "mock", "min_words": 12, "max_words": 20}
    providers["claude"] = {"type": "anthropic", "api_key": ANTHROPIC_KEY, "base_url": upstreams.claude.url}
    providers.update(extra_providers or {})
    resilience: dict[str, Any] = {"retry": {**BASE_RETRY, **(retry or {})}}
    if breaker is not None:
        resilience["circuit_breaker"] = breaker
    if continuations is not None:
        resilience["stream_continuations"] = continuations
    return yaml.safe_dump({"server": {"resilience": resilience}, "providers": providers, "models": models})


def dep(provider: str, model: str | None = None, **extra: Any) -> dict[str, Any]:
    """A deployment entry; the model id names the provider (`model-a`), so answers say who served them."""
    return {"provider": provider, "model": model or f"model-{provider}", **extra}


@dataclass
class Gateway:
    url: str
    client: openai.OpenAI


@pytest.fixture
def start_gateway(gateway_factory: Callable[[str], str]) -> Iterator[Callable[[str], Gateway]]:
    clients: list[openai.OpenAI] = []

    def start(config_yaml: str) -> Gateway:
        url = gateway_factory(config_yaml)
        client = openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0, timeout=20)
        clients.append(client)
        return Gateway(url, client)

    yield start
    for client in clients:
        client.close()


# --- reading streams byte by byte ------------------------------------------------------------------


@dataclass
class SSE:
    """A gateway stream as the wire carried it."""

    status: int
    headers: httpx.Headers
    events: list[Any] = field(default_factory=list)  # parsed JSON payloads, and the string "[DONE]"
    comments: list[str] = field(default_factory=list)  # SSE comment lines (`: ...`)
    elapsed_s: float = 0.0

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [e for e in self.events if isinstance(e, dict) and "error" not in e]

    @property
    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if isinstance(e, dict) and "error" in e]

    @property
    def done(self) -> int:
        return self.events.count("[DONE]")

    @property
    def text(self) -> str:
        return "".join(
            (choice.get("delta") or {}).get("content") or "" for chunk in self.chunks for choice in chunk["choices"]
        )

    @property
    def finish_reasons(self) -> list[str]:
        return [c["finish_reason"] for chunk in self.chunks for c in chunk["choices"] if c.get("finish_reason")]

    @property
    def usage_chunks(self) -> list[dict[str, Any]]:
        return [chunk for chunk in self.chunks if chunk.get("usage") and not chunk["choices"]]


def read_sse(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> SSE:
    """POST a streamed chat completion and read every event; checks each event is one valid `data:` line."""
    started = time.monotonic()
    with httpx.stream(
        "POST", url + "/v1/chat/completions", json={"stream": True, **body}, headers=headers, timeout=20
    ) as response:
        result = SSE(response.status_code, response.headers)
        raw = response.read()
    result.elapsed_s = time.monotonic() - started
    if result.status != 200:
        result.events.append(json.loads(raw))
        return result
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        if block.startswith(": "):  # an SSE comment: the gateway's cost line, which clients ignore
            result.comments.append(block[2:])
            continue
        assert block.startswith("data: ") and "\n" not in block, f"not one data line: {block!r}"
        payload = block[len("data: ") :]
        result.events.append(payload if payload == "[DONE]" else json.loads(payload))
    return result


def wait_for(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
