"""OpenAI chat requests → Converse requests, and Converse answers → OpenAI completions.

Converse differs from OpenAI in ways that matter: system prompts are a separate list; roles must
alternate user/assistant (tool results are user content); tool-call arguments are JSON objects, not
strings; images must be inline bytes; temperature stops at 1. Facts from the Bedrock Runtime API
reference and botocore's service model for bedrock-runtime (2023-09-30).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from providers.errors import ErrorKind, ProviderError
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

#: The tool that carries a JSON answer in `json_mode: tool`.
JSON_TOOL_NAME = "json_response"

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
MALFORMED_STOP_REASONS = {"malformed_model_output", "malformed_tool_use"}

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}


@dataclass(slots=True)
class ConversePlan:
    """A Converse request body, and how to read the answer back."""

    body: dict[str, Any]
    json_via_tool: bool = False  # the answer's `json_response` tool input is the message content


def to_converse(params: ChatCompletionRequest, json_mode: str) -> ConversePlan:
    single_choice(params.n, "Bedrock")
    system: list[dict[str, Any]] = []
    conversation = Turns("content")

    for index, message in enumerate(params.messages):
        if isinstance(message, SystemMessage | DeveloperMessage):
            text = text_of(message.content)
            if text:
                system.append({"text": text})
        elif isinstance(message, UserMessage):
            conversation.add("user", _user_blocks(message, index))
        elif isinstance(message, AssistantMessage):
            conversation.add("assistant", _assistant_blocks(message, index))
        elif isinstance(message, ToolMessage):
            result = {"toolUseId": message.tool_call_id, "content": [{"text": text_of(message.content)}]}
            conversation.add("user", [{"toolResult": {**result, "status": "success"}}])
        elif isinstance(message, FunctionMessage):
            raise invalid(
                "The deprecated 'function' role is not supported for Bedrock; use tools.", f"messages[{index}]"
            )

    turns = conversation.turns
    trim_prefill(turns, lambda block: "text" in block)
    body: dict[str, Any] = {"messages": turns}
    inference: dict[str, Any] = {}
    if params.output_token_limit is not None:
        inference["maxTokens"] = params.output_token_limit
    if params.temperature is not None:
        inference["temperature"] = min(params.temperature, 1.0)  # Bedrock's range is 0-1; OpenAI's is 0-2
    if params.top_p is not None:
        inference["topP"] = params.top_p
    if params.stop_sequences:
        inference["stopSequences"] = params.stop_sequences
    if inference:
        body["inferenceConfig"] = inference
    if params.metadata:
        body["requestMetadata"] = params.metadata

    plan = ConversePlan(body)
    tool_config = _tool_config(params, has_tool_history=any(_has_tool_blocks(turn) for turn in turns))
    response_format = params.response_format
    if isinstance(response_format, JSONObjectFormat | JSONSchemaFormat):
        schema, name, description = _wanted_schema(response_format)
        mode = json_mode if not (json_mode == "tool" and tool_config) else "prompt"  # a forced tool excludes others
        if mode == "tool":
            spec = {
                "name": JSON_TOOL_NAME,
                "description": description or "Return the answer as JSON.",
                "inputSchema": {"json": schema},
            }
            tool_config = {"tools": [{"toolSpec": spec}], "toolChoice": {"tool": {"name": JSON_TOOL_NAME}}}
            plan.json_via_tool = True
        elif mode == "native":
            structure = {"jsonSchema": {"schema": orjson.dumps(schema).decode(), "name": name}}
            if description:
                structure["jsonSchema"]["description"] = description
            body["outputConfig"] = {"textFormat": {"type": "json_schema", "structure": structure}}
        else:
            instruction = "Answer with a single JSON object and nothing else."
            if isinstance(response_format, JSONSchemaFormat) and response_format.json_schema.schema_:
                instruction += " It must match this JSON schema: " + orjson.dumps(schema).decode()
            system.append({"text": instruction})
    if tool_config:
        body["toolConfig"] = tool_config
    if system:
        body["system"] = system
    return plan


def _user_blocks(message: UserMessage, index: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"text": message.content}] if message.content else []
    blocks: list[dict[str, Any]] = []
    for position, part in enumerate(message.content):
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append({"image": _image(part.image_url.url, f"messages[{index}].content[{position}]")})
        else:
            raise invalid(
                f"Content of type '{part.type}' is not supported for Bedrock.", f"messages[{index}].content[{position}]"
            )
    return blocks


def _image(url: str, param: str) -> dict[str, Any]:
    media_type, data = data_url(url, param, "Bedrock")
    image_format = _IMAGE_FORMATS.get(media_type)
    if image_format is None:
        raise invalid("Bedrock takes PNG, JPEG, GIF or WebP images.", param)
    return {"format": image_format, "source": {"bytes": data}}  # JSON carries the bytes as base64


def _assistant_blocks(message: AssistantMessage, index: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = text_of(message.content)
    if text:
        blocks.append({"text": text})
    for position, call in enumerate(message.tool_calls or ()):
        arguments = function_arguments(call, f"messages[{index}].tool_calls[{position}]", "Bedrock")
        blocks.append({"toolUse": {"toolUseId": call.id, "name": call.function.name, "input": arguments}})  # type: ignore[union-attr]
    return blocks


def _has_tool_blocks(turn: dict[str, Any]) -> bool:
    return any("toolUse" in block or "toolResult" in block for block in turn["content"])


def _tool_config(params: ChatCompletionRequest, *, has_tool_history: bool) -> dict[str, Any] | None:
    functions = [tool.function for tool in params.tools or () if tool.type == "function"]
    if not functions:
        return None
    choice = params.tool_choice
    if choice == "none" and not has_tool_history:
        return None  # Converse has no "none": leave the tools out (it insists on them once they were used)
    tools = [
        {
            "toolSpec": {
                "name": f.name,
                "description": f.description or f.name,
                "inputSchema": {"json": f.parameters or {"type": "object", "properties": {}}},
            }
        }
        for f in functions
    ]
    config: dict[str, Any] = {"tools": tools}
    if choice == "required":
        config["toolChoice"] = {"any": {}}
    elif isinstance(choice, NamedToolChoice):
        config["toolChoice"] = {"tool": {"name": choice.function.name}}
    elif choice in (None, "auto"):
        config["toolChoice"] = {"auto": {}}
    return config


def _wanted_schema(response_format: JSONObjectFormat | JSONSchemaFormat) -> tuple[dict[str, Any], str, str | None]:
    if isinstance(response_format, JSONSchemaFormat):
        spec = response_format.json_schema
        return spec.schema_ or {"type": "object"}, spec.name, spec.description
    return {"type": "object"}, "json_object", None


# --- answers -----------------------------------------------------------------------------------------


def usage_from(raw: dict[str, Any] | None) -> Usage:
    """Converse usage → ours. Bedrock's inputTokens leaves out cached prompt tokens; OpenAI's
    prompt_tokens includes them, so they are added back (and also reported on their own)."""
    raw = raw or {}
    cache_read = int(raw.get("cacheReadInputTokens") or raw.get("cacheReadInputTokenCount") or 0)
    cache_write = int(raw.get("cacheWriteInputTokens") or raw.get("cacheWriteInputTokenCount") or 0)
    return Usage(
        prompt_tokens=int(raw.get("inputTokens") or 0) + cache_read + cache_write,
        completion_tokens=int(raw.get("outputTokens") or 0),
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def finish_reason(stop_reason: str | None, *, has_tool_calls: bool) -> str:
    if stop_reason in MALFORMED_STOP_REASONS:
        raise ProviderError(ErrorKind.INTERNAL, f"the model produced malformed output ({stop_reason})")
    reason = STOP_REASONS.get(stop_reason or "", "stop")
    if has_tool_calls and reason == "stop":
        return "tool_calls"
    return reason


def from_converse(
    answer: dict[str, Any], *, model: str, plan: ConversePlan, completion_id: str, created: int
) -> dict[str, Any]:
    blocks = ((answer.get("output") or {}).get("message") or {}).get("content") or []
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in blocks:
        if "text" in block:
            texts.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"]
            arguments = orjson.dumps(use.get("input") or {}).decode()
            if plan.json_via_tool and use.get("name") == JSON_TOOL_NAME:
                texts = [arguments]  # the JSON answer; any text around the forced call is preamble
                continue
            tool_calls.append(
                {
                    "id": use.get("toolUseId"),
                    "type": "function",
                    "function": {"name": use.get("name"), "arguments": arguments},
                }
            )
    stop_reason = answer.get("stopReason")
    reason = finish_reason(stop_reason, has_tool_calls=bool(tool_calls))
    if plan.json_via_tool and reason == "tool_calls":
        reason = "stop"
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
        "usage": usage_from(answer.get("usage")).to_openai(),
    }
