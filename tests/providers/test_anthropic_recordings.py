"""The `anthropic` adapter, behind the gateway, replaying real Anthropic exchanges.

Each recorded Messages request is turned back into the OpenAI request an app would send for it; what
the OpenAI SDK gets from the gateway must equal what the recording holds (the SSE recording is written
in 5-byte pieces, with its ping events and padded JSON, as Anthropic sends it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import serve_gateway
from tests.fakes.replay import Interaction, ReplayServer, load_cassette
from tests.support.outcomes import sdk_outcome
from tests.support.server import ServerThread

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings" / "anthropic"
CASSETTES = sorted(RECORDINGS.glob("*.yaml"))
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def openai_request(recorded: dict[str, Any], model: str) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if recorded.get("system"):
        messages.append({"role": "system", "content": recorded["system"]})
    for turn in recorded["messages"]:
        texts = "".join(block.get("text", "") for block in turn["content"] if block["type"] == "text")
        uses = [block for block in turn["content"] if block["type"] == "tool_use"]
        for result in (block for block in turn["content"] if block["type"] == "tool_result"):
            messages.append({"role": "tool", "tool_call_id": result["tool_use_id"], "content": result["content"]})
        if turn["role"] == "assistant":
            message: dict[str, Any] = {"role": "assistant", "content": texts or None}
            if uses:
                message["tool_calls"] = [
                    {
                        "id": u["id"],
                        "type": "function",
                        "function": {"name": u["name"], "arguments": json.dumps(u["input"])},
                    }
                    for u in uses
                ]
            messages.append(message)
        elif texts:
            messages.append({"role": "user", "content": texts})
    request: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": recorded["max_tokens"]}
    if recorded.get("tools"):
        request["tools"] = [
            {
                "type": "function",
                "function": {"name": t["name"], "description": t.get("description"), "parameters": t["input_schema"]},
            }
            for t in recorded["tools"]
        ]
    output_format = (recorded.get("output_config") or {}).get("format")
    if output_format:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": output_format["schema"]},
        }
    if recorded.get("stream"):
        request.update(stream=True, stream_options={"include_usage": True})
    return request


def recorded_outcome(interaction: Interaction) -> dict[str, Any]:
    if interaction.content_type.startswith("text/event-stream"):
        text, stop, usage = "", None, {}
        for line in interaction.body.decode().splitlines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "message_start":
                usage = dict(event["message"]["usage"])
            elif event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
                text += event["delta"]["text"]
            elif event["type"] == "message_delta":
                stop = event["delta"]["stop_reason"]
                usage.update(event["usage"])
        calls: list[Any] = []
    else:
        answer = json.loads(interaction.body)
        text = "".join(block["text"] for block in answer["content"] if block["type"] == "text")
        calls = [(b["name"], b["input"]) for b in answer["content"] if b["type"] == "tool_use"]
        stop, usage = answer["stop_reason"], answer["usage"]
    return {"content": text or None, "tool_calls": calls, "finish_reason": FINISH[stop], "usage": usage}


@pytest.mark.parametrize("cassette", CASSETTES, ids=[path.stem for path in CASSETTES])
def test_gateway_output_matches_the_recording(cassette: Path) -> None:
    interactions = load_cassette(cassette)
    replay = ReplayServer(interactions, chunk_size=5)
    native = any(
        "output_config" in i.request_json and "format" in i.request_json["output_config"] for i in interactions
    )
    json_mode = "native" if native else "tool"
    with ServerThread(replay.app) as upstream:
        config = f"""
providers:
  anthropic: {{type: anthropic, api_key: sk-ant-replay, base_url: '{upstream.url}', json_mode: {json_mode}}}
models:
  claude: {{deployments: [{{provider: anthropic, model: '{interactions[0].request_json["model"]}'}}]}}
"""
        with serve_gateway(config) as url, openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as sdk:
            for interaction in interactions:
                request = openai_request(interaction.request_json, "claude")
                if interaction.status >= 400:
                    recorded = json.loads(interaction.body)["error"]
                    with pytest.raises(openai.BadRequestError) as caught:
                        sdk_outcome(sdk, request)
                    assert recorded["message"] in caught.value.message
                    continue
                got, want = sdk_outcome(sdk, request), recorded_outcome(interaction)
                assert got["content"] == want["content"]
                assert got["tool_calls"] == want["tool_calls"]
                assert got["finish_reason"] == want["finish_reason"]
                usage = want["usage"]
                cached = (usage.get("cache_read_input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
                assert got["usage"]["prompt_tokens"] == usage["input_tokens"] + cached
                assert got["usage"]["completion_tokens"] == usage["output_tokens"]
    replay.assert_all_used()
    for sent, interaction in zip(replay.received, interactions, strict=True):
        assert sent["messages"] == interaction.request_json["messages"]
        assert sent.get("system") == interaction.request_json.get("system")
