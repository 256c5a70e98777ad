"""The outcome of one chat call (content, tool calls, finish reason, usage), read two ways.

`recorded_outcome` reads it from a recorded exchange's raw bytes, without any SDK; `sdk_outcome` from
what the OpenAI SDK returns for a live call. Comparing the two proves a replay or a gateway hop kept
everything a client relies on.
"""

from __future__ import annotations

import json
from typing import Any

import openai

from tests.fakes.replay import Interaction


def recorded_outcome(interaction: Interaction) -> dict[str, Any]:
    """Content, tool calls, finish reason and usage of the first choice, straight from the recorded bytes."""
    if interaction.content_type.startswith("text/event-stream"):
        chunks = [
            json.loads(line.removeprefix("data: "))
            for line in interaction.body.decode("utf-8").splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
        content, finish, usage = "", None, None
        names: dict[int, str] = {}
        arguments: dict[int, str] = {}
        for chunk in chunks:
            usage = chunk.get("usage") or usage
            for choice in chunk["choices"]:
                delta = choice["delta"]
                content += delta.get("content") or ""
                finish = choice.get("finish_reason") or finish
                for call in delta.get("tool_calls") or []:
                    function = call.get("function") or {}
                    if function.get("name"):
                        names[call["index"]] = function["name"]
                    arguments[call["index"]] = arguments.get(call["index"], "") + (function.get("arguments") or "")
        calls = [(names[i], json.loads(arguments[i])) for i in sorted(names)]
        return {"content": content or None, "tool_calls": calls, "finish_reason": finish, "usage": usage}
    body = json.loads(interaction.body)
    choice = body["choices"][0]
    message = choice["message"]
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []]
    return {
        "content": message["content"],
        "tool_calls": calls,
        "finish_reason": choice["finish_reason"],
        "usage": body["usage"],
    }


def sdk_outcome(sdk: openai.OpenAI, request: dict[str, Any]) -> dict[str, Any]:
    result: Any = sdk.chat.completions.create(**request)
    if not request.get("stream"):
        message = result.choices[0].message
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]
        for call in message.tool_calls or []:
            assert call.id  # every tool call carries an id the client can answer to
        return {
            "content": message.content,
            "tool_calls": calls,
            "finish_reason": result.choices[0].finish_reason,
            "usage": result.usage.model_dump(exclude_none=True),
        }
    content, finish, usage = "", None, None
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    for chunk in result:
        usage = chunk.usage.model_dump(exclude_none=True) if chunk.usage else usage
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or []:
                if call.function and call.function.name:
                    names[call.index] = call.function.name
                if call.function and call.function.arguments:
                    arguments[call.index] = arguments.get(call.index, "") + call.function.arguments
    calls = [(names[i], json.loads(arguments[i])) for i in sorted(names)]
    return {"content": content or None, "tool_calls": calls, "finish_reason": finish, "usage": usage}
