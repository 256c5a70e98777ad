"""Graceful shutdown as a rolling deploy drives it: SIGTERM to a real `llm-gateway serve` with requests in flight.

What the process does (uvicorn's drain, plus gateway/shutdown.py): at SIGTERM it stops listening, so a
new connection is refused within moments (before that, for at most a tick, /readyz answers 503
"draining"); in-flight requests, streams included, run to their end for up to `server.shutdown_grace_s`;
what is still running then ends well-formed (a stream with an SSE error event, a plain request with a
503); then the process exits with status 0. Timing bounds are generous: CI machines are small and noisy.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.app import create_app
from gateway.config import ServerSettings, parse_config
from tests.support.server import free_port
from tests.test_cli_serve import wait_until_healthy

#: Answers of 40 words (about 45 tokens) at `tokens_per_s`: 15/s streams for ~3 s, 4/s for ~11 s.
CONFIG = """
server: {{watch_config: false, shutdown_grace_s: {grace}}}
providers: {{p: {{type: mock, ttft_ms: {ttft_ms}, tokens_per_s: {tokens_per_s}, min_words: 40, max_words: 40}}}}
models: {{chat: {{deployments: [{{provider: p, model: mock-chat-1}}]}}}}
"""
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about the gateway."}]


@contextmanager
def gateway(tmp_path: Path, *, grace: float, tokens_per_s: float, ttft_ms: float = 100) -> Iterator[tuple[Any, str]]:
    """A `llm-gateway serve` process on a free port; yields (process, base URL). Killed if a test leaves it."""
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG.format(grace=grace, tokens_per_s=tokens_per_s, ttft_ms=ttft_ms))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process)
        yield process, url
    finally:
        if process.poll() is None:  # the test failed before the process could end by itself
            process.kill()
            process.communicate(timeout=20)


def exit_of(process: Any, timeout_s: float) -> tuple[int, str]:
    """Wait for the process to end by itself; its exit status and what it logged."""
    _, stderr = process.communicate(timeout=timeout_s)
    return process.returncode, stderr


def wait_until_refused(url: str, process: Any, timeout_s: float = 10) -> None:
    """New connections are refused while the process still drains; anything answered first says draining."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url + "/readyz", timeout=2)
        except httpx.ConnectError:
            assert process.poll() is None, "refused only because the process had already exited"
            return
        assert response.status_code == 503 and response.json()["status"] == "draining", response.text
        time.sleep(0.02)
    raise AssertionError("the gateway still accepted connections long after SIGTERM")


def data_lines(lines: Iterator[str]) -> list[str]:
    return [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]


def test_a_stream_in_flight_at_sigterm_finishes_then_the_process_exits_0(tmp_path: Path) -> None:
    with gateway(tmp_path, grace=60, tokens_per_s=15) as (process, url):
        body = {"model": "chat", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        with httpx.Client(timeout=30) as client, client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            process.send_signal(signal.SIGTERM)
            wait_until_refused(url, process)  # while this stream is still being answered
            rest = data_lines(lines)
        stream_ended = time.monotonic()
        returncode, stderr = exit_of(process, timeout_s=20)
        exit_after_stream_s = time.monotonic() - stream_ended

    assert rest[-1] == "[DONE]"
    chunks = [json.loads(first.removeprefix("data: "))] + [json.loads(line) for line in rest[:-1]]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert len([piece for piece in pieces if piece]) == chunks[-1]["usage"]["completion_tokens"]  # every token
    assert returncode == 0, stderr
    assert exit_after_stream_s < 15  # right after the stream, not at the end of the 60 s grace period
    assert "Traceback" not in stderr and "grace period over" not in stderr


def test_past_the_grace_period_a_stream_ends_with_an_error_event_and_the_process_exits_0(tmp_path: Path) -> None:
    with gateway(tmp_path, grace=1, tokens_per_s=4) as (process, url):
        cut_short: dict[str, httpx.Response] = {}
        in_flight = threading.Event()

        def plain_request() -> None:  # a non-streamed answer that would take ~11 s
            hooks = {"request": [lambda _: in_flight.set()]}
            with httpx.Client(timeout=30, event_hooks=hooks) as client:
                cut_short["response"] = client.post(
                    url + "/v1/chat/completions", json={"model": "chat", "messages": MESSAGES}
                )

        waiter = threading.Thread(target=plain_request)
        waiter.start()
        assert in_flight.wait(10)
        time.sleep(0.5)  # let the server read it before the signal
        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as sdk:
            stream = iter(sdk.chat.completions.create(model="chat", messages=MESSAGES, stream=True))
            received = [next(stream)]
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            with pytest.raises(openai.APIError) as raised:
                received.extend(stream)
            stream_ended_s = time.monotonic() - signalled
        waiter.join(timeout=30)
        returncode, stderr = exit_of(process, timeout_s=20)
        exited_s = time.monotonic() - signalled

    # The client sees an incomplete answer, then an explicit error (no `[DONE]`, no cut connection, no hang).
    assert "shutting down" in raised.value.message
    assert raised.value.body == {
        "message": raised.value.message,
        "type": "server_error",
        "param": None,
        "code": "shutting_down",
    }
    assert not any(chunk.choices and chunk.choices[0].finish_reason for chunk in received)
    assert stream_ended_s < 8  # ~1 s of grace; the whole answer would take ~11 s
    response = cut_short["response"]
    assert response.status_code == 503 and response.json()["error"]["code"] == "shutting_down"
    assert returncode == 0, stderr
    assert exited_s < 1 + 10  # the grace period plus slack
    assert "Traceback" not in stderr
    assert stderr.count("shutdown grace period over: cut POST /v1/chat/completions") == 2


def test_a_plain_request_in_flight_at_sigterm_completes(tmp_path: Path) -> None:
    with gateway(tmp_path, grace=60, tokens_per_s=100, ttft_ms=3000) as (process, url):
        in_flight = threading.Event()
        hooks = {"request": [lambda _: in_flight.set()]}
        replies: list[httpx.Response] = []

        def ask() -> None:
            with httpx.Client(timeout=30, event_hooks=hooks) as client:
                replies.append(client.post(url + "/v1/chat/completions", json={"model": "chat", "messages": MESSAGES}))

        asker = threading.Thread(target=ask)
        asker.start()
        assert in_flight.wait(10)
        time.sleep(0.5)  # let the server read it; the answer takes 3 s more
        process.send_signal(signal.SIGTERM)
        asker.join(timeout=30)
        returncode, stderr = exit_of(process, timeout_s=20)

    assert replies[0].status_code == 200
    assert replies[0].json()["choices"][0]["message"]["content"]
    assert returncode == 0, stderr
    assert "Traceback" not in stderr and "grace period over" not in stderr


async def test_readyz_says_draining_from_the_signal_on_and_the_server_still_gets_it() -> None:
    """In process: the window in which a draining server still answers is a tick, too short to hit reliably."""
    server_saw: list[int] = []

    def server_handler(sig: int, _frame: Any) -> None:  # stands in for uvicorn's: it does the draining
        server_saw.append(sig)

    original = signal.signal(signal.SIGTERM, server_handler)
    try:
        app = create_app(parse_config(CONFIG.format(grace=30, tokens_per_s=0, ttft_ms=0), "test.yaml"))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                assert (await client.get("/readyz")).json()["status"] == "ready"
                signal.raise_signal(signal.SIGTERM)
                draining = await client.get("/readyz")
                assert (await client.get("/healthz")).status_code == 200  # alive: in-flight work goes on
        assert signal.getsignal(signal.SIGTERM) is server_handler  # put back when the app stopped
    finally:
        signal.signal(signal.SIGTERM, original)

    assert draining.status_code == 503
    assert draining.json()["status"] == "draining" and draining.json()["checks"]["config"]["ok"]
    assert server_saw == [signal.SIGTERM]


def test_the_compose_file_gives_the_drain_time_to_finish(repo_root: Path) -> None:
    compose = yaml.safe_load((repo_root / "deploy" / "docker-compose.yaml").read_text())
    gateways = [service for name, service in compose["services"].items() if name.startswith("gateway")]
    default_grace_s = ServerSettings().shutdown_grace_s
    assert gateways, "no gateway service found in the compose file"
    for service in gateways:
        period = re.fullmatch(r"(\d+)s", service["stop_grace_period"])
        assert period is not None and int(period.group(1)) > default_grace_s  # else Docker kills mid-drain
