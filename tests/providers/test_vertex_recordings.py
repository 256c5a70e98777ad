"""The `vertex` adapter, behind the gateway, replaying real Vertex AI exchanges.

Each recorded Gemini request is turned back into the OpenAI request an app would send for it; the
OpenAI SDK sends that to the gateway, whose adapter meets the replayed Vertex bytes (SSE written in
5-byte pieces, with CRLF line endings and no [DONE], as Google sends it). Access tokens come from the
Vertex fake's OAuth endpoint, through google-auth's real service-account flow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import serve_gateway
from tests.fakes.replay import Interaction, ReplayServer, load_cassette
from tests.fakes.vertex import FakeVertex
from tests.support.outcomes import sdk_outcome
from tests.support.server import ServerThread

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings" / "vertex"
CASSETTES = sorted(RECORDINGS.glob("*.yaml"))
FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "MODEL_ARMOR": "content_filter"}


@pytest.fixture(scope="module")
def token_issuer() -> Iterator[FakeVertex]:
    with FakeVertex() as fake:
        yield fake


def openai_request(gemini: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    for part in (gemini.get("systemInstruction") or {}).get("parts") or ():
        messages.append({"role": "system", "content": part["text"]})
    for content in gemini["contents"]:
        text = "".join(part.get("text", "") for part in content["parts"])
        messages.append({"role": "assistant" if content["role"] == "model" else "user", "content": text})
    request: dict[str, Any] = {"model": model, "messages": messages}
    generation = gemini.get("generationConfig") or {}
    if generation.get("responseLogprobs"):
        request["logprobs"] = True
        request["top_logprobs"] = generation.get("logprobs")
    if stream:
        request.update(stream=True, stream_options={"include_usage": True})
    return request


def outcome_of(completion: Any) -> dict[str, Any]:
    message = completion.choices[0].message
    return {
        "content": message.content,
        "tool_calls": [],
        "finish_reason": completion.choices[0].finish_reason,
        "usage": completion.usage.model_dump(exclude_none=True),
    }


def recorded_outcome(interaction: Interaction) -> dict[str, Any]:
    if interaction.content_type.startswith("text/event-stream"):
        events = [json.loads(line[6:]) for line in interaction.body.decode().splitlines() if line.startswith("data: ")]
    else:
        events = [json.loads(interaction.body)]
    text, finish, usage = "", None, {}
    for event in events:
        candidate = event["candidates"][0]
        text += "".join(
            p.get("text", "") for p in (candidate.get("content") or {}).get("parts", []) if not p.get("thought")
        )
        finish = candidate.get("finishReason") or finish
        usage = event.get("usageMetadata") or usage
    return {
        "content": text or None,
        "finish_reason": FINISH[finish],
        "usage": usage,
        "logprobs": events[-1]["candidates"][0].get("logprobsResult"),
    }


@pytest.mark.parametrize("cassette", CASSETTES, ids=[path.stem for path in CASSETTES])
def test_gateway_output_matches_the_recording(cassette: Path, token_issuer: FakeVertex) -> None:
    interactions = load_cassette(cassette)
    replay = ReplayServer(interactions, chunk_size=5)
    model = interactions[0].path.rsplit("/", 1)[-1].split(":")[0]
    credentials = json.dumps(json.dumps(token_issuer.service_account_info()))
    with ServerThread(replay.app) as upstream:
        config = f"""
providers:
  vertex: {{type: vertex, project: p, location: us-central1, endpoint_url: '{upstream.url}',
           credentials_json: {credentials}}}
models:
  gemini: {{deployments: [{{provider: vertex, model: {model}}}]}}
"""
        with serve_gateway(config) as gateway_url:
            with openai.OpenAI(base_url=gateway_url + "/v1", api_key="k", max_retries=0, timeout=10) as sdk:
                for interaction in interactions:
                    streaming = "streamGenerateContent" in interaction.path
                    request = openai_request(interaction.request_json, "gemini", streaming)
                    want = recorded_outcome(interaction)
                    if want["logprobs"]:  # read the raw body too, for the logprobs the outcome leaves out
                        raw = sdk.chat.completions.with_raw_response.create(**request)
                        got = outcome_of(raw.parse())
                        logprobs = raw.http_response.json()["choices"][0]["logprobs"]["content"]
                        chosen = want["logprobs"]["chosenCandidates"]
                        assert [entry["token"] for entry in logprobs] == [c["token"] for c in chosen]
                        assert [entry["logprob"] for entry in logprobs] == [c["logProbability"] for c in chosen]
                        assert all(len(entry["top_logprobs"]) == 5 for entry in logprobs)
                    else:
                        got = sdk_outcome(sdk, request)
                    assert got["content"] == want["content"]
                    assert got["tool_calls"] == []
                    assert got["finish_reason"] == want["finish_reason"]
                    usage = want["usage"]
                    completion = usage.get("candidatesTokenCount", 0) + usage.get("thoughtsTokenCount", 0)
                    assert got["usage"]["prompt_tokens"] == usage["promptTokenCount"]
                    assert got["usage"]["completion_tokens"] == completion
                    assert got["usage"]["total_tokens"] == usage["totalTokenCount"]
    assert replay.received[0]["contents"] == interactions[0].request_json["contents"]
    assert replay.received[0].get("systemInstruction", {}).get("parts") == interactions[0].request_json.get(
        "systemInstruction", {}
    ).get("parts")
