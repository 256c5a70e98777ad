"""The `openai` adapter, behind the gateway, replaying real OpenAI exchanges.

A replay server answers with the bytes OpenAI really sent (streams written in small pieces, so the
adapter's SSE parser sees lines split anywhere); the OpenAI SDK talks to the gateway; what it gets must
equal what the recording says, read straight from the recorded bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.conftest import serve_gateway
from tests.fakes.replay import ReplayServer, load_cassette
from tests.support.outcomes import recorded_outcome, sdk_outcome
from tests.support.server import ServerThread

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings" / "openai"
CASSETTES = sorted(RECORDINGS.glob("*.yaml"))


def config_for(upstream_url: str, model: str) -> str:
    return f"""
providers:
  openai: {{type: openai, base_url: "{upstream_url}/v1", api_key: sk-replay}}
models:
  "{model}": {{deployments: [{{provider: openai, model: "{model}"}}]}}
"""


@pytest.mark.parametrize("cassette", CASSETTES, ids=[path.stem for path in CASSETTES])
def test_gateway_output_matches_the_recording(cassette: Path) -> None:
    interactions = load_cassette(cassette)
    replay = ReplayServer(interactions, chunk_size=5)
    model = interactions[0].request_json["model"]
    with ServerThread(replay.app) as upstream, serve_gateway(config_for(upstream.url, model)) as gateway_url:
        with openai.OpenAI(base_url=gateway_url + "/v1", api_key="k", max_retries=0, timeout=10) as sdk:
            for interaction in interactions:
                if interaction.status >= 400:
                    recorded = json.loads(interaction.body)["error"]
                    with pytest.raises(openai.BadRequestError) as caught:
                        sdk_outcome(sdk, interaction.request_json)
                    assert (caught.value.code, caught.value.param) == (recorded["code"], recorded["param"])
                    assert recorded["message"] in caught.value.message
                else:
                    assert sdk_outcome(sdk, interaction.request_json) == recorded_outcome(interaction)
    replay.assert_all_used()
    # The adapter forwards the client's body as it is (the model id here maps to itself).
    for sent, interaction in zip(replay.received, interactions, strict=True):
        assert sent == interaction.request_json
