"""OpenAI chat requests → Anthropic Messages requests, and Messages answers → OpenAI completions.

Anthropic differs from OpenAI in ways that matter: the system prompt is a top-level field; roles must
alternate user/assistant (tool results are user content); `max_tokens` is required; temperature stops
at 1; tool-call arguments are objects; cached prompt tokens are reported apart from `input_tokens`.
Facts from the Messages API reference (anthropic-version 2023-06-01) and anthropic-python 2.x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from providers.schema import (
    AssistantMessage,
    ChatCompletionRequest,
    DeveloperMessage,
    FunctionMessage,
    ImagePart,
    JSONObjectFormat,
    JSONSchemaFormat,
    NamedToolChoice,
    SystemMessage,
    TextPart,
    ToolMessage,
    Usage,
    UserMessage,
)
from providers.translate import Turns, data_url, function_arguments, invalid, single_choice, text_of, trim_prefill

JSON_TOOL_NAME = "json_response"
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


@dataclass(slots=True)
class MessagesPlan:
    body: dict[str, Any]
    json_via_tool: bool = False


def to_messages(params: ChatCompletionRequest, *, default_max_tokens: int, json_mode: str) -> MessagesPlan:
    single_choice(params.n, "Anthropic")
    system: list[str] = []
    conversation = Turns("content")

    for index, message in enumerate(params.messages):
        if isinstance(message, SystemMessage | DeveloperMessage):
            text = text_of(message.content)
            if text:
                system.append(text)
        elif isinstance(message, UserMessage):
            conversation.add("user", _user_blocks(message, index))
        elif isinstance(message, AssistantMessage):
            blocks: list[dict[str, Any]] = []
            text = text_of(message.content)
            if text:
                blocks.append({"type": "text", "text": text})
            for position, call in enumerate(message.tool_calls or ()):
                arguments = function_arguments(call, f"messages[{index}].tool_calls[{position}]", "Anthropic")
                blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments})  # type: ignore[union-attr]
            conversation.add("assistant", blocks)
        elif isinstance(message, ToolMessage):
            result = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": text_of(message.content),
                "is_error": False,
            }
            conversation.add("user", [result])
        elif isinstance(message, FunctionMessage):
            raise invalid(
                "The deprecated 'function' role is not supported for Anthropic; use tools.", f"messages[{index}]"
            )

    trim_prefill(conversation.turns, lambda block: block.get("type") == "text")
    body: dict[str, Any] = {
        "messages": conversation.turns,
        "max_tokens": params.output_token_limit or default_max_tokens,
    }
    if params.temperature is not None:
        body["temperature"] = min(params.temperature, 1.0)  # Anthropic's range is 0-1; OpenAI's is 0-2
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop_sequences:
        body["stop_sequences"] = params.stop_sequences
    if params.user:
        body["metadata"] = {"user_id": params.user}

    plan = MessagesPlan(body)
    tools, tool_choice = _tools(params)
    response_format = params.response_format
    if isinstance(response_format, JSONObjectFormat | JSONSchemaFormat):
        schema = {"type": "object"}
        if isinstance(response_format, JSONSchemaFormat) and response_format.json_schema.schema_:
            schema = response_format.json_schema.schema_
        mode = "prompt" if json_mode == "tool" and tools else json_mode  # a forced tool would exclude the others
        if mode == "tool":
            tools = [{"name": JSON_TOOL_NAME, "description": "Return the answer as JSON.", "input_schema": schema}]
            tool_choice = {"type": "tool", "name": JSON_TOOL_NAME}
            plan.json_via_tool = True
        elif mode == "native":
            body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
        else:
            system.append(
                "Answer with a single JSON object and nothing else. It must match this JSON schema: "
                + orjson.dumps(schema).decode()
            )
    if tools:
        body["tools"] = tools
        if tool_choice:
            body["tool_choice"] = tool_choice
    if system:
        body["system"] = "\n\n".join(system)
    return plan


def _user_blocks(message: UserMessage, index: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"type": "text", "text": message.content}] if message.content else []
    blocks: list[dict[str, Any]] = []
    for position, part in enumerate(message.content):
        param = f"messages[{index}].content[{position}]"
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            url = part.image_url.url
            if url.startswith(("https://", "http://")):
                blocks.append({"type": "image", "source": {"type": "url", "url": url}})  # Anthropic fetches it
            else:
                media_type, data = data_url(url, param, "Anthropic")
                blocks.append({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        else:
            raise invalid(f"Content of type '{part.type}' is not supported for Anthropic.", param)
    return blocks


def _tools(params: ChatCompletionRequest) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    functions = [tool.function for tool in params.tools or () if tool.type == "function"]
    if not functions:
        return [], None
    tools = [
        {
            "name": f.name,
            "description": f.description or f.name,
            "input_schema": f.parameters or {"type": "object", "properties": {}},
        }
        for f in functions
    ]
    choice = params.tool_choice
    tool_choice: dict[str, Any] | None
    if choice == "none":
        tool_choice = {"type": "none"}
    elif choice == "required":
        tool_choice = {"type": "any"}
    elif isinstance(choice, NamedToolChoice):
        tool_choice = {"type": "tool", "name": choice.function.name}
    else:
        tool_choice = {"type": "auto"}
    if params.parallel_tool_calls is False and tool_choice["type"] != "none":
        tool_choice["disable_parallel_tool_use"] = True
    return tools, tool_choice


def usage_from(raw: dict[str, Any] | None) -> Usage:
    """Anthropic's input_tokens leaves out cache reads and writes; OpenAI's prompt_tokens includes them."""
    raw = raw or {}
    cache_read = int(raw.get("cache_read_input_tokens") or 0)
    cache_write = int(raw.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(raw.get("input_tokens") or 0) + cache_read + cache_write,
        completion_tokens=int(raw.get("output_tokens") or 0),
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def finish_reason(stop_reason: str | None, *, has_tool_calls: bool, json_via_tool: bool) -> str:
    reason = STOP_REASONS.get(stop_reason or "", "stop")
    if reason == "tool_calls" and json_via_tool and not has_tool_calls:
        return "stop"
    return reason


def from_messages(answer: dict[str, Any], *, plan: MessagesPlan, model: str, created: int) -> dict[str, Any]:
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in answer.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text", ""))
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            if plan.json_via_tool and block.get("name") == JSON_TOOL_NAME:
                texts = [arguments]
                continue
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    reason = finish_reason(answer.get("stop_reason"), has_tool_calls=bool(tool_calls), json_via_tool=plan.json_via_tool)
    return {
        "id": "chatcmpl-" + str(answer.get("id") or "").removeprefix("msg_"),
        "object": "chat.completion",
        "created": created,
        "model": answer.get("model") or model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
        "usage": usage_from(answer.get("usage")).to_openai(),
    }
