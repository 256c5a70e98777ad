"""The `bedrock` adapter, behind the gateway, replaying real Bedrock exchanges.

Each recorded Converse request is turned back into the OpenAI request an app would send for it; the
OpenAI SDK sends that to the gateway, whose adapter meets the replayed Bedrock bytes (event streams
written in 5-byte pieces, so frames arrive split anywhere). What the SDK gets must equal what the
recording holds, read straight from the recorded bytes with botocore's own decoder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import openai
import pytest
from botocore.eventstream import EventStreamBuffer

from tests.conftest import serve_gateway
from tests.fakes.replay import Interaction, ReplayServer, load_cassette
from tests.support.outcomes import sdk_outcome
from tests.support.server import ServerThread

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings" / "bedrock"
CASSETTES = sorted(RECORDINGS.glob("*.yaml"))
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def model_id(interaction: Interaction) -> str:
    return unquote(interaction.path.split("/")[-2])


def openai_request(converse: dict[str, Any], model: str, stream: bool) -> dict[str, Any]:
    """The OpenAI chat request that maps onto this Converse request."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": block["text"]} for block in converse["system"]]
    for turn in converse["messages"]:
        texts = [block["text"] for block in turn["content"] if "text" in block]
        uses = [block["toolUse"] for block in turn["content"] if "toolUse" in block]
        results = [block["toolResult"] for block in turn["content"] if "toolResult" in block]
        for result in results:
            content = "".join(part.get("text", json.dumps(part.get("json"))) for part in result["content"])
            messages.append({"role": "tool", "tool_call_id": result["toolUseId"], "content": content})
        if turn["role"] == "assistant":
            message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
            if uses:
                message["tool_calls"] = [
                    {
                        "id": use["toolUseId"],
                        "type": "function",
                        "function": {"name": use["name"], "arguments": json.dumps(use["input"])},
                    }
                    for use in uses
                ]
            messages.append(message)
        elif texts:
            messages.append({"role": "user", "content": "".join(texts)})
    request: dict[str, Any] = {"model": model, "messages": messages}
    inference = converse.get("inferenceConfig") or {}
    for ours, theirs in (("max_tokens", "maxTokens"), ("temperature", "temperature"), ("top_p", "topP")):
        if theirs in inference:
            request[ours] = inference[theirs]
    tools = (converse.get("toolConfig") or {}).get("tools") or []
    if tools:
        request["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["toolSpec"]["name"],
                    "description": t["toolSpec"].get("description"),
                    "parameters": t["toolSpec"]["inputSchema"]["json"],
                },
            }
            for t in tools
        ]
    output_format = (converse.get("outputConfig") or {}).get("textFormat")
    if output_format:
        spec = output_format["structure"]["jsonSchema"]
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": spec["name"], "schema": json.loads(spec["schema"])},
        }
    if stream:
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request


def recorded_outcome(interaction: Interaction) -> dict[str, Any]:
    """Text, tool calls, finish reason and usage, as the recording holds them."""
    if interaction.content_type.startswith("application/vnd.amazon.eventstream"):
        buffer = EventStreamBuffer()
        buffer.add_data(interaction.body)
        text, uses, stop, usage = "", {}, None, {}
        for message in buffer:
            event_type = message.headers[":event-type"]
            event = json.loads(message.payload)
            if event_type == "contentBlockStart" and "toolUse" in event["start"]:
                uses[event["contentBlockIndex"]] = [event["start"]["toolUse"]["name"], ""]
            elif event_type == "contentBlockDelta":
                delta = event["delta"]
                text += delta.get("text", "")
                if "toolUse" in delta:
                    uses[event["contentBlockIndex"]][1] += delta["toolUse"]["input"]
            elif event_type == "messageStop":
                stop = event["stopReason"]
            elif event_type == "metadata":
                usage = event["usage"]
        calls = [(name, json.loads(arguments)) for name, arguments in uses.values()]
    else:
        answer = json.loads(interaction.body)
        blocks = answer["output"]["message"]["content"]
        text = "".join(block.get("text", "") for block in blocks)
        calls = [(b["toolUse"]["name"], b["toolUse"]["input"]) for b in blocks if "toolUse" in b]
        stop, usage = answer["stopReason"], answer["usage"]
    return {"content": text or None, "tool_calls": calls, "finish_reason": FINISH[stop], "usage": usage}


def config_for(upstream_url: str) -> str:
    provider = f"endpoint_url: '{upstream_url}', aws_access_key_id: AKIDREPLAY, aws_secret_access_key: replay-secret"
    return f"""
providers:
  bedrock: {{type: bedrock, region: us-east-1, {provider}}}
  bedrock-native: {{type: bedrock, region: us-east-1, json_mode: native, {provider}}}
models:
  replayed: {{deployments: [{{provider: bedrock, model: MODEL}}]}}
  replayed-native: {{deployments: [{{provider: bedrock-native, model: MODEL}}]}}
"""


@pytest.mark.parametrize("cassette", CASSETTES, ids=[path.stem for path in CASSETTES])
def test_gateway_output_matches_the_recording(cassette: Path) -> None:
    interactions = load_cassette(cassette)
    replay = ReplayServer(interactions, chunk_size=5)
    with ServerThread(replay.app) as upstream:
        config = config_for(upstream.url).replace("MODEL", f"'{model_id(interactions[0])}'")
        with serve_gateway(config) as gateway_url:
            with openai.OpenAI(base_url=gateway_url + "/v1", api_key="k", max_retries=0, timeout=10) as sdk:
                for interaction in interactions:
                    converse = (
                        json.loads(interaction.request_json)
                        if isinstance(interaction.request_json, str | bytes)
                        else interaction.request_json
                    )
                    alias = "replayed-native" if "outputConfig" in converse else "replayed"
                    request = openai_request(converse, alias, interaction.path.endswith("converse-stream"))
                    if interaction.status >= 400:
                        with pytest.raises(openai.BadRequestError) as caught:
                            sdk_outcome(sdk, request)
                        assert json.loads(interaction.body)["message"] in caught.value.message
                        continue
                    got, want = sdk_outcome(sdk, request), recorded_outcome(interaction)
                    assert got["content"] == want["content"]
                    assert got["tool_calls"] == want["tool_calls"]
                    assert got["finish_reason"] == want["finish_reason"]
                    usage = want["usage"]
                    cached = usage.get("cacheReadInputTokens", 0) + usage.get("cacheWriteInputTokens", 0)
                    assert got["usage"]["prompt_tokens"] == usage["inputTokens"] + cached
                    assert got["usage"]["completion_tokens"] == usage["outputTokens"]
                    assert got["usage"]["total_tokens"] == usage["totalTokens"] + cached
    replay.assert_all_used()
    # What the adapter sent is what Bedrock accepted then, for the parts both requests define.
    for sent, interaction in zip(replay.received, interactions, strict=True):
        recorded = (
            interaction.request_json
            if isinstance(interaction.request_json, dict)
            else json.loads(interaction.request_json)
        )
        assert sent["messages"] == recorded["messages"]
        assert sent.get("system", []) == recorded["system"]
