"""`llm-gateway serve` as an operator runs it: a real process on the shipped default config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server import free_port


def wait_until_healthy(url: str, process: subprocess.Popen[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited early: {process.stderr.read() if process.stderr else ''}")
        try:
            if httpx.get(url + "/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("gateway did not become healthy")


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_on_the_default_config(repo_root: Path, workers: int) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "LLM_GATEWAY_CONFIG"}
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--port", str(port), "--workers", str(workers)],
        cwd=repo_root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process)
        with openai.OpenAI(base_url=url + "/v1", api_key="no-key-needed", max_retries=0) as sdk:
            assert {model.id for model in sdk.models.list()} == {"mock-chat", "mock-fast", "mock-embed"}
            reply = sdk.chat.completions.create(model="mock-chat", messages=[{"role": "user", "content": "Hello"}])
            assert reply.choices[0].message.content
            assert len(sdk.embeddings.create(model="mock-embed", input="hi").data[0].embedding) == 1536
        assert httpx.get(url + "/readyz").json()["status"] == "ready"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the signal so supervisors see how it ended.
    assert process.returncode in (0, -signal.SIGTERM), stderr
    assert "shutdown complete" in stderr.lower() or "stopping parent process" in stderr.lower()
    assert "config/gateway.yaml: OK" in stderr
    assert "Hello" not in stderr  # prompts are not logged


def test_sighup_reloads_the_config(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    text = (
        "server: {watch_config: false}\n"
        "providers: {p: {type: mock}}\n"
        "models: {chat: {deployments: [{provider: p, model: M}]}}\n"
    )
    config.write_text(text.replace("M", "before"))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    body = {"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    try:
        wait_until_healthy(url, process)
        assert httpx.post(url + "/v1/chat/completions", json=body).headers["x-gateway-model"] == "before"
        config.write_text(text.replace("M", "after"))
        time.sleep(0.3)
        assert httpx.post(url + "/v1/chat/completions", json=body).headers["x-gateway-model"] == "before"  # not watched
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while httpx.post(url + "/v1/chat/completions", json=body).headers["x-gateway-model"] != "after":
            assert time.monotonic() < deadline, "SIGHUP did not reload the config"
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=20)
