"""Streams that survive their upstream: a stream cut or stalled mid-answer is continued, not abandoned.

Once the first chunk has gone to the client, the HTTP status is sent and a failure can no longer
become a fallback to another deployment. Instead, `ResumingStream` asks a deployment that continues
a final assistant message (prefill) for the rest: the original messages plus the text already sent,
and streams only the remainder under the same completion id, so the client reads one answer.

If nothing was sent yet but the role chunk, any deployment may restart the answer. If tool-call
fragments were sent, or no capable deployment is left, the stream ends with the usage so far and the
*original* error (never a refusal of the continuation itself), so a cut answer is never presented as a
success and no second answer is spliced in.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from providers.errors import ErrorKind, ProviderError
from providers.schema import ChatCompletionRequest, ChatRequest, StreamChunk, Usage
from providers.tokens import count_messages, count_text
from routing.executor import Executor, Exhausted, Journey, Served, request_deadline_passed
from routing.router import Deployment


@dataclass(slots=True)
class OpenStream:
    """A stream whose first chunk has arrived, and the request it answers (its facts are per call)."""

    first: StreamChunk
    chunks: AsyncIterator[StreamChunk]
    call: ChatRequest
    first_at: float  # monotonic time the first chunk arrived


async def open_stream(deployment: Deployment, call: ChatRequest, options: Any) -> OpenStream:
    """Start a stream and wait for its first chunk: until then, a failure is an ordinary fallback."""
    chunks = deployment.adapter.stream(deployment.model, call, options)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        raise ProviderError(
            ErrorKind.INTERNAL, "upstream ended the stream without sending anything", provider=deployment.provider
        ) from None
    except BaseException:
        await chunks.aclose()  # type: ignore[attr-defined]
        raise
    return OpenStream(first, chunks, call, time.monotonic())


async def discard_stream(opened: OpenStream) -> None:
    await opened.chunks.aclose()  # type: ignore[attr-defined]


def supports_prefill(deployment: Deployment) -> bool:
    configured = deployment.config.prefill
    return deployment.adapter.supports_prefill if configured is None else configured


class ResumingStream:
    """The client's stream: chunks of the serving deployment, continued elsewhere if it fails.

    Iterate it once; it settles every segment's stats and breaker however it ends (the client leaving
    included), and raises the original ProviderError after a final usage chunk when it cannot finish.
    """

    def __init__(self, executor: Executor, journey: Journey, served: Served[OpenStream], body: dict[str, Any]) -> None:
        self.executor = executor
        self.journey = journey
        self.body = body
        self.segment = served
        first = served.value.first.data
        self.completion_id = first.get("id")
        self.created = first.get("created")
        self.sent: list[str] = []  # content of choice 0 already sent
        self.sent_tool_calls = False
        self.finished = False  # a finish_reason was sent: the answer is whole
        self.continuations = 0
        self.segment_usage: dict[str, Any] | None = None
        self.trim_leading_space = False
        self._segment_open = True
        served.record.first_token(served.value.first_at)
        self._chunks = self._run()
        self._started = False

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        self._started = True
        return self._chunks

    async def aclose(self) -> None:
        """Close it however far it got; a stream never iterated (the client left at once) is settled too."""
        if self._started:
            await self._chunks.aclose()  # type: ignore[attr-defined]
        elif self._segment_open:
            self._segment_open = False
            self.segment.record.abandon(time.monotonic())
            self.executor.circuits.get(self.segment.deployment.key).released()
            await self.segment.value.chunks.aclose()  # type: ignore[attr-defined]

    async def _run(self) -> AsyncIterator[StreamChunk]:
        chunk: StreamChunk | None = self.segment.value.first
        try:
            while True:
                if chunk is not None:
                    shown = self._pass(chunk)
                    if shown is not None:
                        yield shown
                try:
                    chunk = await anext(self.segment.value.chunks)
                except StopAsyncIteration:
                    self._end_segment(ok=True)
                    if self.continuations:
                        yield self._usage_chunk()
                    return
                except ProviderError as error:
                    self._end_segment(ok=False, error=error)
                    if self.finished:
                        yield self._usage_chunk()  # the answer was whole; only its tail (usage) was lost
                        return
                    resumed = await self._continue(error)
                    if resumed is None:
                        yield self._usage_chunk()
                        raise error from None
                    self.segment = resumed
                    self._segment_open = True
                    self.segment_usage = None
                    resumed.record.first_token(resumed.value.first_at)
                    chunk = resumed.value.first
        finally:
            if self._segment_open:
                self._segment_open = False
                self.segment.record.abandon(time.monotonic())
            await self.segment.value.chunks.aclose()  # type: ignore[attr-defined]

    # --- chunks --------------------------------------------------------------------------------

    def _pass(self, chunk: StreamChunk) -> StreamChunk | None:
        """Note what the chunk tells, and return it as the client should see it (None: drop it)."""
        usage = chunk.data.get("usage")
        if usage:
            self.segment_usage = usage
        if self.continuations:
            shown = self._as_continuation(chunk.data)
            if shown is None:
                return None
            chunk = shown
        for choice in chunk.data.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.sent.append(delta["content"])
            if delta.get("tool_calls"):
                self.sent_tool_calls = True
            if choice.get("finish_reason"):
                self.finished = True
        return chunk

    def _as_continuation(self, data: dict[str, Any]) -> StreamChunk | None:
        """A continuation's chunk, rewritten to read as part of the first answer."""
        choices = data.get("choices") or []
        if not choices:
            return None  # its usage covers only the continuation; the combined usage comes at the end
        rewritten = []
        for choice in choices:
            delta = dict(choice.get("delta") or {})
            delta.pop("role", None)
            content = delta.get("content")
            if content and self.trim_leading_space:
                stripped = content.lstrip()
                if stripped:
                    self.trim_leading_space = False
                    delta["content"] = stripped
                else:
                    delta["content"] = ""
            if not delta.get("content") and not delta.get("tool_calls") and not choice.get("finish_reason"):
                continue  # the continuation's empty opening
            rewritten.append({**choice, "delta": delta})
        if not rewritten:
            return None
        return StreamChunk({**data, "id": self.completion_id, "created": self.created, "choices": rewritten})

    def _usage_chunk(self) -> StreamChunk:
        """Usage for what the client received. After a continuation it is counted here (the upstreams
        each saw only a part), and marked estimated like every usage the gateway counts itself."""
        if self.segment_usage is not None and not self.continuations:
            usage: dict[str, Any] = self.segment_usage
        else:
            counted = Usage(
                prompt_tokens=count_messages(self.body["messages"]),
                completion_tokens=count_text("".join(self.sent)),
                estimated=True,
            )
            usage = counted.to_openai()
        data = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.segment.deployment.model,
            "choices": [],
            "usage": usage,
        }
        return StreamChunk(data)

    # --- segments ------------------------------------------------------------------------------

    def _end_segment(self, *, ok: bool, error: ProviderError | None = None) -> None:
        self._segment_open = False
        now = time.monotonic()
        served = self.segment
        output = (self.segment_usage or {}).get("completion_tokens")
        # A stream cut by the request's own deadline says nothing about the deployment: it is not blamed.
        blamed = error is not None and not request_deadline_passed(self.journey, served.deployment, error)
        if error is None or blamed:
            served.record.end(now, ok=ok, output_tokens=output, cold_start=served.value.call.facts.cold_start)
        else:
            served.record.abandon(now)
        if error is not None:
            served.attempt.outcome = f"{error.kind.value} mid-stream"
            if blamed:
                self.executor.circuits.get(served.deployment.key).failed(now, error.kind, error.retry_after_s)
            if error.kind is ErrorKind.TIMEOUT:
                self.journey.timed_out.add(served.deployment.key)

    async def _continue(self, error: ProviderError) -> Served[OpenStream] | None:
        """A new segment that picks up where the client's answer stopped, or None."""
        allowed = self.executor.resilience.stream_continuations  # an upstream dying again and again is not chased
        if self.sent_tool_calls or self.continuations >= allowed or (self.body.get("n") or 1) > 1:
            return None
        prefix = "".join(self.sent)
        body = _continuation_body(self.body, prefix)
        if body is None:
            return None
        try:
            params = ChatCompletionRequest.model_validate(body)
        except ValueError:
            return None
        current = self.segment.deployment
        plan = self.journey.plan.deployments
        candidates = [current] + [d for d in plan if d.key != current.key]

        async def begin(deployment: Deployment, options: Any) -> OpenStream:
            return await open_stream(deployment, ChatRequest(body=body, params=params), options)

        try:
            served = await self.executor.run(
                self.journey,
                begin,
                discard=discard_stream,
                candidates=candidates,
                usable=None if not prefix else supports_prefill,
                why="continuation",
                chain_kind=error.kind,
                fail_fast=False,
            )
        except Exhausted:
            return None  # the client is told the original failure, not the continuation's
        self.continuations += 1
        self.trim_leading_space = bool(prefix) and prefix[-1].isspace()
        return served


def _continuation_body(body: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    """The original request, asking only for what comes after `prefix` (None: nothing is left to ask)."""
    if not prefix:
        return body
    continued = dict(body)
    continued["messages"] = [*body["messages"], {"role": "assistant", "content": prefix}]
    sent_tokens = count_text(prefix)
    for name in ("max_completion_tokens", "max_tokens"):
        limit = body.get(name)
        if isinstance(limit, int):
            if limit - sent_tokens <= 0:
                return None
            continued[name] = limit - sent_tokens
    return continued
