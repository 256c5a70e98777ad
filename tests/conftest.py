"""Shared fixtures: a real gateway on uvicorn, a private redis-server, OpenAI SDK clients, the spec."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest
from pydantic import SecretStr

from gateway.app import create_app
from gateway.config import LedgerSettings, parse_config
from tests.support.openapi import OpenAPISchemas, load_openapi_schemas
from tests.support.server import ServerThread, free_port

# Tests must never reach a real provider or a cloud metadata service, whatever the developer's shell has.
for _name in list(os.environ):
    if _name.startswith(("OPENAI_", "AZURE_OPENAI_", "ANTHROPIC_")):
        del os.environ[_name]
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

#: A config for tests: the mock with no artificial latency, plus a slow one for timing tests.
MOCK_CONFIG = """
providers:
  mock: {type: mock}
  slow-mock: {type: mock, ttft_ms: 3000}
models:
  chat: {deployments: [{provider: mock, model: mock-chat-1}]}
  slow-chat:
    deployments:
      - {provider: slow-mock, model: mock-chat-1, timeouts: {first_token_s: 0.3, total_s: 0.5}}
  embed: {mode: embeddings, deployments: [{provider: mock, model: mock-embedding-1}]}
"""


#: For tests of one adapter through the gateway: each request makes exactly one upstream call (no retry,
#: no stream continuation), and one test's scripted failures never rest the deployment for the next test.
ONE_ATTEMPT = (
    "server: {resilience: {retry: {attempts_per_deployment: 1}, circuit_breaker: {enabled: false},"
    " stream_continuations: 0}}"
)


@pytest.fixture(scope="session")
def openapi() -> OpenAPISchemas:
    return load_openapi_schemas()


@contextmanager
def serve_gateway(config_yaml: str) -> Iterator[str]:
    """A gateway for `config_yaml`, served by uvicorn on a free port; yields its base URL."""
    loaded = parse_config(config_yaml, "test-config.yaml")
    with tempfile.TemporaryDirectory(prefix="llmgw-ledger-") as ledger_dir:
        if "ledger" not in loaded.config.model_fields_set:
            # Each test gateway keeps its own ledger, never one in the working tree.
            loaded.config.ledger = LedgerSettings(
                url=SecretStr(f"sqlite:///{ledger_dir}/ledger.sqlite3"), spill_path=f"{ledger_dir}/spill.jsonl"
            )
        with ServerThread(create_app(loaded)) as server:
            yield server.url


@pytest.fixture(scope="session")
def gateway_url() -> Iterator[str]:
    with serve_gateway(MOCK_CONFIG) as url:
        yield url


@pytest.fixture
def client(gateway_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway_url + "/v1", api_key="test-key", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def gateway_factory() -> Iterator[Callable[[str], str]]:
    """Start extra gateways with their own config for one test; all stop when the test ends."""
    stack: list[object] = []

    def start(config_yaml: str) -> str:
        context = serve_gateway(config_yaml)
        url = context.__enter__()
        stack.append(context)
        return url

    yield start
    for context in reversed(stack):
        context.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free port, so tests never touch (or depend on) a shared one."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run scripts/test, which installs it")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="llmgw-redis-")
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
