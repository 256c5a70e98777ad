"""Hot reload: valid configs swap in atomically, invalid ones change nothing, and nothing is lost."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.app import create_app
from gateway.config import load_config
from tests.support.server import ServerThread

ADMIN = {"x-admin-key": "reload-admin"}


def config_text(model: str, *, broken: bool = False) -> str:
    text = f"""
admin: {{api_key_sha256: {hashlib.sha256(b"reload-admin").hexdigest()}}}
providers:
  p: {{type: mock, ttft_ms: 5}}
models:
  chat: {{deployments: [{{provider: p, model: {model}}}]}}
"""
    return text.replace("deployments:", "deploymnts:") if broken else text


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    path = tmp_path / "gateway.yaml"
    path.write_text(config_text("v1"))
    with ServerThread(create_app(load_config(path))) as server:
        yield server.url, path


def served_model(url: str) -> str:
    response = httpx.post(
        url + "/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 200, response.text
    return response.headers["x-gateway-model"]


def test_reload_endpoint_swaps_a_valid_config_and_rejects_an_invalid_one(served: tuple[str, Path]) -> None:
    url, path = served
    path.write_text(config_text("v1", broken=True))
    rejected = httpx.post(url + "/admin/config/reload", headers=ADMIN)
    assert rejected.status_code == 400 and rejected.json()["status"] == "rejected"
    assert any("models.chat.deploymnts: unknown key at" in error for error in rejected.json()["errors"])
    assert served_model(url) == "v1"  # the running config was kept
    path.write_text(config_text("v2"))
    accepted = httpx.post(url + "/admin/config/reload", headers=ADMIN)
    assert accepted.status_code == 200 and accepted.json()["status"] == "reloaded"
    assert served_model(url) == "v2"


def test_file_changes_are_picked_up_by_the_watcher(served: tuple[str, Path]) -> None:
    url, path = served
    path.write_text(config_text("v2"))
    deadline = time.monotonic() + 10
    while served_model(url) != "v2":
        assert time.monotonic() < deadline, "the watcher never reloaded the file"
        time.sleep(0.1)


def test_live_stats_survive_a_reload(served: tuple[str, Path]) -> None:
    url, path = served
    for _ in range(3):
        served_model(url)
    path.write_text(config_text("v1").replace("ttft_ms: 5", "ttft_ms: 6"))  # same deployment, new config
    assert httpx.post(url + "/admin/config/reload", headers=ADMIN).status_code == 200
    stats = httpx.get(url + "/admin/deployments", headers=ADMIN).json()["data"][0]["stats"]
    assert stats["observations"] >= 3


def test_reload_under_load_loses_no_request(served: tuple[str, Path]) -> None:
    """Requests stream in while the file goes valid -> invalid -> valid; every one is answered by a
    config that existed (v1 or v3), never by the invalid one, and none fails."""
    url, path = served
    results: list[tuple[int, str]] = []

    async def load(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=10) as client:

            async def one() -> None:
                response = await client.post(
                    url + "/v1/chat/completions", json={"model": "chat", "messages": [{"role": "user", "content": "x"}]}
                )
                results.append((response.status_code, response.headers.get("x-gateway-model", "")))

            while not stop.is_set():
                await asyncio.gather(*(one() for _ in range(8)))

    async def rewrite(stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            for text in (config_text("v1", broken=True), config_text("v3")):
                await asyncio.sleep(0.5)
                await asyncio.to_thread(path.write_text, text)
                await client.post(url + "/admin/config/reload", headers=ADMIN)
            await asyncio.sleep(0.5)
        stop.set()

    async def main() -> None:
        stop = asyncio.Event()
        await asyncio.gather(load(stop), rewrite(stop))

    asyncio.run(main())
    assert len(results) > 50
    assert all(status == 200 for status, _ in results), [r for r in results if r[0] != 200][:3]
    served_by = [model for _, model in results]
    assert set(served_by) == {"v1", "v3"}
    assert served_by.index("v3") > 0 and "v1" not in served_by[served_by.index("v3") + 8 :]  # one switch, for good


def test_a_config_that_validates_but_cannot_be_built_keeps_the_running_one(served: tuple[str, Path]) -> None:
    url, path = served
    path.write_text(config_text("v2").replace("providers:", "server: {http_client: {proxy: 'socks9://x'}}\nproviders:"))
    response = httpx.post(url + "/admin/config/reload", headers=ADMIN)
    assert response.status_code == 400 and "cannot build" in response.json()["errors"][0]
    assert served_model(url) == "v1"
