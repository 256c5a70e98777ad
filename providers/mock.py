"""The built-in `mock` provider: realistic answers with no network and no keys.

It makes `llm-gateway serve` useful out of the box and serves load tests and demos. Answers are
deterministic (the same request gives the same text), token counts come from the real tokenizer, and
time-to-first-token, tokens per second and a failure rate are configurable. It honours tools (it calls
the chosen function with arguments shaped by the function's schema, and answers from tool results),
JSON mode and JSON schemas, `n`, `stop`, output limits and logprobs, so clients exercise real code paths.

It also continues a prefill (a final assistant message with text), as providers with assistant prefill do:
the answer is only what follows that text (see `MockAdapter._generate`), so a gateway that resumes a broken
stream with a prefill gets exactly the rest of the answer it was streaming.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import Field

from providers.base import CallOptions, ProviderAdapter, ProviderConfigBase
from providers.errors import ErrorKind
from providers.schema import (
    ChatCompletionRequest,
    ChatRequest,
    ChunkFactory,
    EmbedRequest,
    NamedToolChoice,
    StreamChunk,
    Usage,
    encode_embedding,
    new_completion_id,
    now_s,
)
from providers.tokens import count_messages, count_text, encoding


class MockProviderConfig(ProviderConfigBase):
    type: Literal["mock"]
    ttft_ms: float = Field(default=0.0, ge=0, description="Delay before the first token.")
    cold_start_ms: float = Field(
        default=0.0, ge=0, description="Extra first-token delay after an idle spell: a scale-to-zero endpoint booting."
    )
    idle_timeout_s: float = Field(default=60.0, gt=0, description="Idle longer than this and the next call is cold.")
    tokens_per_s: float = Field(default=0.0, ge=0, description="Output speed; 0 means as fast as possible.")
    failure_rate: float = Field(default=0.0, ge=0, le=1, description="Share of calls that fail with 503.")
    min_words: int = Field(default=12, ge=1)
    max_words: int = Field(default=48, ge=1)
    embedding_dimensions: int = Field(default=1536, ge=1, le=8192)


_WORDS = (
    "the gateway routes each request to a provider that fits its cost latency and policy while the "
    "platform team keeps one config and every app keeps one base url so models change without code "
    "changes and budgets hold across replicas with clear errors fast streams and honest usage records"
).split()


@dataclass(slots=True)
class _Choice:
    """One generated answer: either text or a tool call, already tokenized."""

    index: int
    tokens: list[int] = field(default_factory=list)
    tool_call: dict[str, Any] | None = None
    finish_reason: str = "stop"
    rng: random.Random = field(default_factory=random.Random)

    def text(self) -> str:
        return encoding().decode(self.tokens)


class MockAdapter(ProviderAdapter):
    provider_type = "mock"
    config_model = MockProviderConfig
    supports_embeddings = True
    supports_prefill = True
    config: MockProviderConfig
    _last_call: float | None = None  # for the cold-start simulation

    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        choices = self._generate(model, request)
        output_tokens = sum(_choice_token_count(choice) for choice in choices)
        await self._wait(options, self._first_token_s(request) + self._generation_time(output_tokens))
        params = request.params
        return {
            "id": new_completion_id(),
            "object": "chat.completion",
            "created": now_s(),
            "model": model,
            "system_fingerprint": "fp_mock",
            "choices": [
                {
                    "index": choice.index,
                    "message": _message(choice),
                    "logprobs": _logprobs(choice, params) if params.logprobs and choice.tokens else None,
                    "finish_reason": choice.finish_reason,
                }
                for choice in choices
            ],
            "usage": self._usage(request, output_tokens).to_openai(),
        }

    async def stream(self, model: str, request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        choices = self._generate(model, request)
        await self._wait(options, self._first_token_s(request), first_token=True)
        chunks = ChunkFactory(new_completion_id(), now_s(), model, system_fingerprint="fp_mock")
        per_token_s = 1 / self.config.tokens_per_s if self.config.tokens_per_s else 0.0
        params = request.params

        for choice in choices:
            if choice.tool_call is not None:
                call = choice.tool_call
                yield chunks.delta(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call["id"],
                                "type": "function",
                                "function": {"name": call["function"]["name"], "arguments": ""},
                            }
                        ],
                    },
                    index=choice.index,
                )
                for piece in _pieces(call["function"]["arguments"], 12):
                    await self._pace(per_token_s, options)
                    delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
                    yield chunks.delta(delta, index=choice.index)
            else:
                yield chunks.delta({"role": "assistant", "content": ""}, index=choice.index)
                enc = encoding()
                for token in choice.tokens:
                    await self._pace(per_token_s, options)
                    logprobs = None
                    if params.logprobs:
                        logprobs = {
                            "content": [_token_logprob(token, choice.rng, params.top_logprobs or 0)],
                            "refusal": None,
                        }
                    yield chunks.delta({"content": enc.decode([token])}, index=choice.index, logprobs=logprobs)
            yield chunks.delta({}, index=choice.index, finish=choice.finish_reason)
        output_tokens = sum(_choice_token_count(choice) for choice in choices)
        yield chunks.usage(self._usage(request, output_tokens))

    async def embed(self, model: str, request: EmbedRequest, options: CallOptions) -> dict[str, Any]:
        params = request.params
        self._maybe_fail()
        dimensions = params.dimensions or self.config.embedding_dimensions
        data = []
        prompt_tokens = 0
        for index, item in enumerate(params.inputs()):
            if isinstance(item, str):
                prompt_tokens += count_text(item)
                seed_material = item.encode()
            else:
                prompt_tokens += len(item)
                seed_material = orjson.dumps(item)
            vector = _unit_vector(_rng(model.encode(), seed_material), dimensions)
            data.append(
                {"object": "embedding", "index": index, "embedding": encode_embedding(vector, params.encoding_format)}
            )
        await self._wait(options, self.config.ttft_ms / 1000)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }

    # --- generation --------------------------------------------------------------------------------

    def _generate(self, model: str, request: ChatRequest) -> list[_Choice]:
        """The answers to a request, deterministic for its model, messages, seed and response format.

        With a prefill (the last message is an assistant one with text), each answer is the continuation of
        that text: the mock makes the answer it gives the messages before the prefill and, when that answer
        starts with the prefill, sends the rest of it, so prefill + continuation is the uninterrupted answer.
        A prefill the gateway stripped of trailing whitespace matches too, and the rest then starts with that
        whitespace. A prefill that matches neither way gets fresh words. A prefilled answer is always text.
        `stop` and output limits apply to the continuation alone, as they would at a real provider.
        """
        self._maybe_fail()
        params = request.params
        messages = request.body["messages"]
        prefill = _prefill(messages)
        if prefill is not None:
            messages = messages[:-1]  # the conversation the interrupted answer was answering
        material = orjson.dumps([model, messages, params.seed, request.body.get("response_format")])
        limit = params.output_token_limit
        tool = _chosen_tool(params) if prefill is None else None
        last_role = messages[-1].get("role")
        choices = []
        for index in range(params.n or 1):
            choice = _Choice(index=index, rng=_rng(material, str(index).encode()))
            if tool is not None and last_role != "tool":
                arguments = orjson.dumps(_example(tool.get("parameters") or {"type": "object"}, choice.rng))
                choice.tool_call = {
                    "id": "call_" + hashlib.sha256(material + bytes([index])).hexdigest()[:24],
                    "type": "function",
                    "function": {"name": tool["name"], "arguments": arguments.decode()},
                }
                choice.finish_reason = "tool_calls"
            else:
                text = self._text(choice.rng, messages, params)
                if prefill is not None:
                    text = _continuation(text, prefill, choice.rng)
                choice.tokens, choice.finish_reason = _limit(text, params.stop_sequences, limit)
            choices.append(choice)
        return choices

    def _text(self, rng: random.Random, messages: list[dict[str, Any]], params: ChatCompletionRequest) -> str:
        count = rng.randint(self.config.min_words, max(self.config.min_words, self.config.max_words))
        words = [rng.choice(_WORDS) for _ in range(count)]
        sentence = " ".join(words).capitalize() + "."
        if messages[-1].get("role") == "tool":
            result = _plain_text(messages[-1].get("content"))[:200]
            sentence = f"The tool returned {result}. {sentence}"
        response_format = params.response_format
        if response_format is not None and response_format.type == "json_object":
            return orjson.dumps({"answer": sentence}).decode()
        if response_format is not None and response_format.type == "json_schema":
            schema = response_format.json_schema.schema_ or {"type": "object"}
            return orjson.dumps(_example(schema, rng)).decode()
        return sentence

    def _usage(self, request: ChatRequest, output_tokens: int) -> Usage:
        prompt_tokens = count_messages(request.body["messages"])
        if request.body.get("tools"):
            prompt_tokens += count_text(orjson.dumps(request.body["tools"]).decode())
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=output_tokens)

    # --- timing and failures -----------------------------------------------------------------------

    def _first_token_s(self, request: ChatRequest) -> float:
        """The time to first token, with a cold start when the mock was idle too long (if configured)."""
        delay = self.config.ttft_ms / 1000
        if self.config.cold_start_ms:
            now = time.monotonic()
            last = self._last_call
            cold = last is None or now - last > self.config.idle_timeout_s
            self._last_call = now
            request.facts.cold_start = cold
            if cold:
                delay += self.config.cold_start_ms / 1000
        return delay

    def _generation_time(self, tokens: int) -> float:
        return tokens / self.config.tokens_per_s if self.config.tokens_per_s else 0.0

    def _maybe_fail(self) -> None:
        if self.config.failure_rate and random.random() < self.config.failure_rate:
            raise self.error(ErrorKind.UNAVAILABLE, "mock provider: injected failure", status=503)

    async def _wait(self, options: CallOptions, seconds: float, *, first_token: bool = False) -> None:
        """Sleep like a slow provider would, but never past the caller's limits."""
        limit = options.remaining_s()
        if first_token:
            limit = min(limit, options.first_token_timeout_s)
        if seconds > limit:
            await asyncio.sleep(max(limit, 0))
            raise self.error(ErrorKind.TIMEOUT, "mock provider: answer not ready within the time limit")
        if seconds > 0:
            await asyncio.sleep(seconds)

    async def _pace(self, per_token_s: float, options: CallOptions) -> None:
        if per_token_s:
            await self._wait(options, per_token_s)


# --- helpers ---------------------------------------------------------------------------------------------


def _rng(*parts: bytes) -> random.Random:
    digest = hashlib.sha256(b"\x00".join(parts)).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _prefill(messages: list[dict[str, Any]]) -> str | None:
    """The text of a final assistant message without tool calls (a prefill to continue), else None."""
    last = messages[-1]
    if last.get("role") != "assistant" or last.get("tool_calls") or len(messages) < 2:
        return None
    content = last.get("content")
    if isinstance(content, list):  # text parts join with nothing between them, as one message's text does
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) and content else None


def _continuation(answer: str, prefill: str, rng: random.Random) -> str:
    """What follows `prefill` in `answer`; fresh words when the prefill is not how the answer starts."""
    if answer.startswith(prefill):
        return answer[len(prefill) :]
    stem = prefill.rstrip()  # also how a whitespace-only prefill gets the whole answer
    if answer.startswith(stem):
        return answer[len(stem) :]
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
    return ("" if prefill[-1:].isspace() else " ") + words + "."


def _chosen_tool(params: ChatCompletionRequest) -> dict[str, Any] | None:
    """The function the model should call, or None when it should answer in text."""
    functions = [tool.function for tool in params.tools or () if tool.type == "function"]
    choice = params.tool_choice
    if not functions or choice == "none":
        return None
    name = None
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
    chosen = next((function for function in functions if function.name == name), functions[0])
    return chosen.model_dump(exclude_none=True)


def _limit(text: str, stops: list[str], limit: int | None) -> tuple[list[int], str]:
    finish = "stop"
    for stop in stops:
        position = text.find(stop) if stop else -1
        if position >= 0:
            text = text[:position]
    tokens = encoding().encode(text, disallowed_special=())
    if limit is not None and len(tokens) > limit:
        tokens, finish = tokens[:limit], "length"
    return tokens, finish


def _message(choice: _Choice) -> dict[str, Any]:
    if choice.tool_call is not None:
        return {"role": "assistant", "content": None, "refusal": None, "tool_calls": [choice.tool_call]}
    return {"role": "assistant", "content": choice.text(), "refusal": None}


def _choice_token_count(choice: _Choice) -> int:
    if choice.tool_call is not None:
        return count_text(choice.tool_call["function"]["name"] + choice.tool_call["function"]["arguments"])
    return len(choice.tokens)


def _token_logprob(token: int, rng: random.Random, top: int) -> dict[str, Any]:
    enc = encoding()
    text = enc.decode([token])
    logprob = -round(rng.random() * 2, 4)
    alternatives = [{"token": text, "logprob": logprob, "bytes": list(text.encode())}]
    for rank in range(1, top):
        other = enc.decode([(token + rank * 7919) % 100_000])
        alternatives.append({"token": other, "logprob": logprob - rank - 1.0, "bytes": list(other.encode())})
    return {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": alternatives[:top]}


def _logprobs(choice: _Choice, params: ChatCompletionRequest) -> dict[str, Any]:
    rng = random.Random(choice.rng.random())
    return {
        "content": [_token_logprob(token, rng, params.top_logprobs or 0) for token in choice.tokens],
        "refusal": None,
    }


def _pieces(text: str, size: int) -> list[str]:
    return [text[start : start + size] for start in range(0, len(text), size)] or [""]


def _plain_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(part.get("text", "") for part in content or () if isinstance(part, dict))


def _unit_vector(rng: random.Random, dimensions: int) -> list[float]:
    vector = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [value / norm for value in vector]


def _example(schema: dict[str, Any], rng: random.Random, root: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A value that satisfies a (reasonable) JSON schema: what a model in JSON mode would return."""
    root = root or schema
    if depth > 8:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _example(target, rng, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return _example(schema[combinator][0], rng, root, depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((item for item in kind if item != "null"), "null")
    if kind == "object":
        properties = schema.get("properties") or {}
        return {name: _example(sub, rng, root, depth + 1) for name, sub in properties.items()}
    if kind == "array":
        count = min(max(int(schema.get("minItems", 1)), 1), 16)  # a client's schema must not size our memory
        return [_example(schema.get("items") or {}, rng, root, depth + 1) for _ in range(count)]
    if kind == "integer":
        low = int(schema.get("minimum", 0))
        return rng.randint(low, max(low, int(schema.get("maximum", low + 100))))
    if kind == "number":
        low = float(schema.get("minimum", 0))
        return round(rng.uniform(low, max(low, float(schema.get("maximum", low + 100)))), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return " ".join(rng.choice(_WORDS) for _ in range(2))
