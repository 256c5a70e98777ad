"""OpenAI chat requests → Gemini `generateContent` requests, and Gemini answers → OpenAI completions.

Gemini differs from OpenAI in ways that matter: the assistant role is `model`; tool results are user
turns naming the function (not the call id); function arguments are objects; Gemini reports `STOP`
even when it calls a function; safety blocks are HTTP 200 answers without content. Gemini 3 also
attaches a `thoughtSignature` to function calls that must come back with the next turn: the OpenAI
format has no place for it, so it travels inside the tool-call id (`call_<n>~<signature>`), which
clients echo back unchanged. Facts from the Vertex AI REST reference and google-genai 3.x.
"""

from __future__ import annotations

import uuid
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
from providers.translate import Turns, data_url, function_arguments, invalid, text_of

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "MODEL_ARMOR": "content_filter",
    "JAILBREAK": "content_filter",
}
_SIGNATURE_SEPARATOR = "~"
_SCHEMA_KEYS = {
    "type",
    "format",
    "description",
    "nullable",
    "enum",
    "properties",
    "required",
    "items",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "anyOf",
    "propertyOrdering",
    "title",
}


@dataclass(slots=True)
class GeminiPlan:
    body: dict[str, Any]


def to_gemini(params: ChatCompletionRequest, schema_format: str) -> GeminiPlan:
    system: list[dict[str, Any]] = []
    conversation = Turns("parts")
    call_names: dict[str, str] = {}

    for index, message in enumerate(params.messages):
        if isinstance(message, SystemMessage | DeveloperMessage):
            text = text_of(message.content)
            if text:
                system.append({"text": text})
        elif isinstance(message, UserMessage):
            conversation.add("user", _user_parts(message, index))
        elif isinstance(message, AssistantMessage):
            parts: list[dict[str, Any]] = []
            text = text_of(message.content)
            if text:
                parts.append({"text": text})
            for position, call in enumerate(message.tool_calls or ()):
                arguments = function_arguments(call, f"messages[{index}].tool_calls[{position}]", "Vertex")
                call_names[call.id] = call.function.name  # type: ignore[union-attr]
                part: dict[str, Any] = {"functionCall": {"name": call.function.name, "args": arguments}}  # type: ignore[union-attr]
                signature = thought_signature(call.id)
                if signature:
                    part["thoughtSignature"] = signature
                parts.append(part)
            conversation.add("model", parts)
        elif isinstance(message, ToolMessage):
            name = call_names.get(message.tool_call_id)
            if name is None:
                raise invalid(
                    f"No earlier assistant tool call has the id '{message.tool_call_id}'.",
                    f"messages[{index}].tool_call_id",
                )
            conversation.add(
                "user", [{"functionResponse": {"name": name, "response": _tool_response(message.content)}}]
            )
        elif isinstance(message, FunctionMessage):
            raise invalid(
                "The deprecated 'function' role is not supported for Vertex; use tools.", f"messages[{index}]"
            )

    body: dict[str, Any] = {"contents": conversation.turns}
    if system:
        body["systemInstruction"] = {"parts": system}
    generation = _generation_config(params, schema_format)
    if generation:
        body["generationConfig"] = generation
    functions = [tool.function for tool in params.tools or () if tool.type == "function"]
    if functions:
        body["tools"] = [{"functionDeclarations": [_declaration(f, schema_format) for f in functions]}]
        body["toolConfig"] = {"functionCallingConfig": _calling_config(params.tool_choice)}
    return GeminiPlan(body)


def _user_parts(message: UserMessage, index: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"text": message.content}] if message.content else []
    parts: list[dict[str, Any]] = []
    for position, part in enumerate(message.content):
        param = f"messages[{index}].content[{position}]"
        if isinstance(part, TextPart):
            if part.text:
                parts.append({"text": part.text})
        elif isinstance(part, ImagePart):
            parts.append(_image(part.image_url.url, param))
        else:
            raise invalid(f"Content of type '{part.type}' is not supported for Vertex.", param)
    return parts


def _image(url: str, param: str) -> dict[str, Any]:
    """Inline data URLs, or Cloud Storage URIs Vertex reads itself; never a URL fetched for the client."""
    if url.startswith("gs://"):
        extension = url.rsplit(".", 1)[-1].lower()
        mime = {
            "png": "image/png",
            "jpg": "image/jpeg",
            "jpeg": "image/jpeg",
            "gif": "image/gif",
            "webp": "image/webp",
        }.get(extension, "image/jpeg")
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    media_type, data = data_url(url, param, "Vertex (or gs:// URIs)")
    return {"inlineData": {"mimeType": media_type, "data": data}}


def _tool_response(content: Any) -> dict[str, Any]:
    """Gemini wants an object: a JSON object result goes as it is, anything else under `result`."""
    text = text_of(content)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"result": text}
    return value if isinstance(value, dict) else {"result": value}


def _generation_config(params: ChatCompletionRequest, schema_format: str) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if params.temperature is not None:
        config["temperature"] = params.temperature
    if params.top_p is not None:
        config["topP"] = params.top_p
    if params.n is not None and params.n > 1:
        config["candidateCount"] = params.n
    if params.output_token_limit is not None:
        config["maxOutputTokens"] = params.output_token_limit
    if params.stop_sequences:
        config["stopSequences"] = params.stop_sequences
    if params.presence_penalty is not None:
        config["presencePenalty"] = params.presence_penalty
    if params.frequency_penalty is not None:
        config["frequencyPenalty"] = params.frequency_penalty
    if params.seed is not None:
        config["seed"] = params.seed
    if params.logprobs:
        config["responseLogprobs"] = True
        if params.top_logprobs:
            config["logprobs"] = params.top_logprobs
    response_format = params.response_format
    if isinstance(response_format, JSONObjectFormat | JSONSchemaFormat):
        config["responseMimeType"] = "application/json"
        if isinstance(response_format, JSONSchemaFormat) and response_format.json_schema.schema_:
            schema = response_format.json_schema.schema_
            if schema_format == "openapi":
                config["responseSchema"] = to_openapi_schema(schema)
            else:
                config["responseJsonSchema"] = schema
    return config


def _declaration(function: Any, schema_format: str) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function.name}
    if function.description:
        declaration["description"] = function.description
    if function.parameters:
        if schema_format == "openapi":
            declaration["parameters"] = to_openapi_schema(function.parameters)
        else:
            declaration["parametersJsonSchema"] = function.parameters
    return declaration


def _calling_config(choice: Any) -> dict[str, Any]:
    if choice == "none":
        return {"mode": "NONE"}
    if choice == "required":
        return {"mode": "ANY"}
    if isinstance(choice, NamedToolChoice):
        return {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
    return {"mode": "AUTO"}


def to_openapi_schema(schema: dict[str, Any], root: dict[str, Any] | None = None, depth: int = 0) -> dict[str, Any]:
    """JSON Schema → Vertex's OpenAPI subset: upper-case types, local $refs inlined, the rest dropped."""
    root = root or schema
    if depth > 16:
        return {"type": "OBJECT"}
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key, {}) if isinstance(target, dict) else {}
        return to_openapi_schema(target, root, depth + 1)
    result: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS:
            continue
        if key == "type":
            if isinstance(value, list):
                kinds = [kind for kind in value if kind != "null"]
                if len(kinds) < len(value):
                    result["nullable"] = True
                value = kinds[0] if kinds else "string"
            result["type"] = str(value).upper()
        elif key == "properties":
            result["properties"] = {name: to_openapi_schema(sub, root, depth + 1) for name, sub in value.items()}
        elif key == "items":
            result["items"] = to_openapi_schema(value, root, depth + 1)
        elif key == "anyOf":
            result["anyOf"] = [to_openapi_schema(sub, root, depth + 1) for sub in value]
        else:
            result[key] = value
    return result


# --- answers -----------------------------------------------------------------------------------------


def new_call_id(signature: str | None) -> str:
    call_id = "call_" + uuid.uuid4().hex[:24]
    return call_id + _SIGNATURE_SEPARATOR + signature if signature else call_id


def thought_signature(call_id: str) -> str | None:
    _, separator, signature = call_id.partition(_SIGNATURE_SEPARATOR)
    return signature if separator and signature else None


def usage_from(metadata: dict[str, Any] | None) -> Usage:
    """Thinking is billed as output: completion tokens include `thoughtsTokenCount`."""
    metadata = metadata or {}
    thoughts = int(metadata.get("thoughtsTokenCount") or 0)
    return Usage(
        prompt_tokens=int(metadata.get("promptTokenCount") or 0),
        completion_tokens=int(metadata.get("candidatesTokenCount") or 0) + thoughts,
        cached_tokens=int(metadata.get("cachedContentTokenCount") or 0),
        reasoning_tokens=thoughts,
    )


def finish_reason(raw: str | None, *, has_tool_calls: bool) -> str:
    if has_tool_calls and raw in (None, "STOP"):
        return "tool_calls"
    return FINISH_REASONS.get(raw or "STOP", "stop")


def parts_of(candidate: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The visible text pieces and the OpenAI tool calls in a candidate (thought parts are skipped)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (candidate.get("content") or {}).get("parts") or ():
        if part.get("thought"):
            continue
        if "text" in part:
            texts.append(part["text"])
        elif "functionCall" in part:
            call = part["functionCall"]
            calls.append(
                {
                    "id": new_call_id(part.get("thoughtSignature")),
                    "type": "function",
                    "function": {"name": call.get("name"), "arguments": orjson.dumps(call.get("args") or {}).decode()},
                }
            )
    return texts, calls


def logprobs_of(candidate: dict[str, Any]) -> dict[str, Any] | None:
    result = candidate.get("logprobsResult")
    if not result:
        return None
    tops = result.get("topCandidates") or []
    content = []
    for position, chosen in enumerate(result.get("chosenCandidates") or ()):
        token = chosen.get("token", "")
        alternatives = (tops[position].get("candidates") or []) if position < len(tops) else []
        content.append(
            {
                "token": token,
                "logprob": chosen.get("logProbability", 0.0),
                "bytes": list(token.encode()),
                "top_logprobs": [
                    {
                        "token": alt.get("token", ""),
                        "logprob": alt.get("logProbability", 0.0),
                        "bytes": list(alt.get("token", "").encode()),
                    }
                    for alt in alternatives
                ],
            }
        )
    return {"content": content, "refusal": None}


def from_gemini(answer: dict[str, Any], *, model: str, completion_id: str, created: int) -> dict[str, Any]:
    candidates = answer.get("candidates") or []
    choices = []
    for position, candidate in enumerate(candidates):
        texts, calls = parts_of(candidate)
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        choices.append(
            {
                "index": int(candidate.get("index", position)),
                "message": message,
                "logprobs": logprobs_of(candidate),
                "finish_reason": finish_reason(candidate.get("finishReason"), has_tool_calls=bool(calls)),
            }
        )
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices.append(
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": None},
                "logprobs": None,
                "finish_reason": "content_filter",
            }
        )
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": answer.get("modelVersion") or model,
        "choices": choices,
        "usage": usage_from(answer.get("usageMetadata")).to_openai(),
    }
