"""Replay every recorded OpenAI exchange through the official SDK and compare with the recording itself.

If the SDK accepts the replayed bytes and gets the recorded values back, the replay server rebuilds
bodies faithfully, so adapter tests built on it are tests against what OpenAI really sends.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.fakes.replay import ReplayServer, load_cassette
from tests.support.outcomes import recorded_outcome, sdk_outcome
from tests.support.server import ServerThread

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings" / "openai"
CASSETTES = sorted(RECORDINGS.glob("*.yaml"))
STREAM_CASSETTE = RECORDINGS / "test_run_stream_sync_streams_real_model.yaml"
PLAIN_CASSETTE = RECORDINGS / "test_valid_response.yaml"


@contextlib.contextmanager
def _serve(replay: ReplayServer) -> Iterator[tuple[ServerThread, openai.OpenAI]]:
    with ServerThread(replay.app) as server:
        with openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0, timeout=10) as sdk:
            yield server, sdk
    assert not any(t.name == f"uvicorn:{server.port}" for t in threading.enumerate()), "server thread leaked"


@pytest.mark.parametrize("cassette", CASSETTES, ids=[p.stem for p in CASSETTES])
def test_sdk_reads_recorded_exchange(cassette: Path) -> None:
    interactions = load_cassette(cassette)
    replay = ReplayServer(interactions)
    with _serve(replay) as (_server, sdk):
        for interaction in interactions:
            if interaction.status >= 400:
                recorded = json.loads(interaction.body)["error"]
                with pytest.raises(openai.BadRequestError) as caught:
                    sdk_outcome(sdk, interaction.request_json)
                assert caught.value.status_code == interaction.status
                assert (caught.value.code, caught.value.param) == (recorded["code"], recorded["param"])
                assert recorded["message"] in caught.value.message
            else:
                assert sdk_outcome(sdk, interaction.request_json) == recorded_outcome(interaction)
    replay.assert_all_used()
    assert replay.received == [i.request_json for i in interactions], "SDK sent the recorded bodies unchanged"


def test_every_cassette_is_covered() -> None:
    """The replay tests above only mean something if the recordings are really there."""
    assert len(CASSETTES) == 6
    assert (RECORDINGS.parent / "LICENSE").is_file()


@pytest.mark.parametrize("chunk_size", [7, None])
def test_stream_replays_byte_exact_in_pieces(chunk_size: int | None) -> None:
    """Streams go out unchanged, and in many small writes when chunk_size is set."""
    interactions = load_cassette(STREAM_CASSETTE)
    replay = ReplayServer(interactions, chunk_size=chunk_size)
    with _serve(replay) as (server, _sdk):
        with httpx.Client(timeout=10) as http:
            for interaction in interactions:
                request = http.build_request("POST", server.url + "/chat/completions", json=interaction.request_json)
                response = http.send(request, stream=True)
                pieces = list(response.iter_raw())
                response.close()
                assert b"".join(pieces) == interaction.body
                assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
                assert int(response.headers["content-length"]) == len(interaction.body)
                assert "transfer-encoding" not in response.headers
                if chunk_size is not None:
                    assert len(pieces) > 10, "body should arrive in many small writes"
    replay.assert_all_used()


def test_load_cassette_rebuilds_json_bodies() -> None:
    (interaction,) = load_cassette(PLAIN_CASSETTE)
    assert (interaction.method, interaction.path, interaction.status) == ("POST", "/v1/chat/completions", 200)
    assert interaction.content_type == "application/json"
    body = json.loads(interaction.body)
    assert list(body) == sorted(body), "parsed_body keys come back in the recorder's sorted order"
    assert interaction.body == json.dumps(body).encode("utf-8")
    assert interaction.request_json["model"] == "gpt-4o"


def test_mismatch_and_extra_requests_fail_loudly() -> None:
    replay = ReplayServer(load_cassette(PLAIN_CASSETTE))
    with _serve(replay) as (_server, sdk):
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.embeddings.create(model="e", input="x", encoding_format="float")
        assert caught.value.status_code == 599
        assert "mismatch" in caught.value.response.text
    with pytest.raises(AssertionError, match=r"(?s)mismatch.*unused interaction"):
        replay.assert_all_used()

    replay = ReplayServer(load_cassette(PLAIN_CASSETTE))
    with _serve(replay) as (_server, sdk):
        request = load_cassette(PLAIN_CASSETTE)[0].request_json
        sdk.chat.completions.create(**request)
        with pytest.raises(openai.InternalServerError) as extra:
            sdk.chat.completions.create(**request)
        assert "extra request" in extra.value.response.text  # SDK 3.x keeps text bodies out of the message
    with pytest.raises(AssertionError, match="extra request"):
        replay.assert_all_used()
