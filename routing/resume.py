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

from providers import tokens
from providers.errors import ErrorKind, ProviderError
from providers.schema import ChatCompletionRequest, ChatRequest, StreamChunk, Usage
from providers.tokens import count_text
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
        self.choices = body.get("n") or 1
        self.finished_choices: set[int] = set()  # choices whose finish_reason was sent
        self.continuations = 0
        self.segment_usage: dict[str, Any] | None = None
        self.seam = ""  # whitespace the prefix ended with, which a continuation may repeat
        self.original_error: ProviderError | None = None  # the first failure: what the client is told
        self.last_usage: dict[str, Any] | None = None  # the usage chunk the client was sent, if any
        self.usage_estimated = False
        self.first_at = served.value.first_at  # when the client's first chunk arrived (monotonic)
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
            self._abandon_segment()
            await self.segment.value.chunks.aclose()  # type: ignore[attr-defined]

    async def usage_so_far(self) -> tuple[dict[str, Any], bool]:
        """The usage of what the client received, and whether it was counted here (estimated): the
        stream's own usage chunk when it sent one, else tiktoken over the text sent so far."""
        if self.last_usage is not None:
            return self.last_usage, self.usage_estimated
        await tokens.ready()
        return self._counted_usage(), True

    def _counted_usage(self) -> dict[str, Any]:
        """Tiktoken's count of what the client received: the prompt (counted once per request, tools
        included) and the text sent so far."""
        counted = Usage(
            prompt_tokens=self.journey.facts.prompt_tokens, completion_tokens=count_text("".join(self.sent))
        )
        return counted.to_openai()

    @property
    def finished(self) -> bool:
        """Every choice sent its finish_reason: the answer is whole."""
        return len(self.finished_choices) >= self.choices

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
                    if self.last_usage is None:
                        yield await self._usage_chunk()
                    return
                except ProviderError as error:
                    self._end_segment(ok=False, error=error)
                    if self.finished:
                        # The answer was whole; only its tail (usage, [DONE]) was lost.
                        if self.last_usage is None:
                            yield await self._usage_chunk()
                        return
                    self.original_error = self.original_error or error
                    resumed = await self._continue(error)
                    if resumed is None:
                        if self.last_usage is None:
                            yield await self._usage_chunk()
                        raise self.original_error from None
                    self.segment = resumed
                    self._segment_open = True
                    self.segment_usage = None
                    resumed.record.first_token(resumed.value.first_at)
                    chunk = resumed.value.first
        finally:
            if self._segment_open:
                self._abandon_segment()
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
        choices = chunk.data.get("choices") or ()
        if usage and not choices:
            self.last_usage = usage
            self.usage_estimated = self.segment.value.call.facts.usage_estimated
        for choice in choices:
            index = choice.get("index", 0)
            if choice.get("finish_reason"):
                self.finished_choices.add(index)
            if index != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                self.sent.append(delta["content"])
            if delta.get("tool_calls"):
                self.sent_tool_calls = True
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
            if content and self.seam:
                delta["content"] = self._past_seam(content)
            if not delta.get("content") and not delta.get("tool_calls") and not choice.get("finish_reason"):
                continue  # the continuation's empty opening
            rewritten.append({**choice, "delta": delta})
        if not rewritten:
            return None
        return StreamChunk({**data, "id": self.completion_id, "created": self.created, "choices": rewritten})

    def _past_seam(self, content: str) -> str:
        """Drop from the continuation's start the whitespace the client already has.

        Providers reject a prefill ending in whitespace, so adapters strip it and the model writes it
        again: "def f():\n" sent, "\n    return 1" continued. Only whitespace that repeats the seam
        is dropped ("    return 1" stays indented); other text ends the seam.
        """
        kept = 0
        while kept < len(content) and self.seam and content[kept] == self.seam[0]:
            self.seam = self.seam[1:]
            kept += 1
        if kept < len(content):
            self.seam = ""  # the continuation has moved past the seam
        return content[kept:]

    async def _usage_chunk(self) -> StreamChunk:
        """Usage for what the client received. After a continuation it is counted here (the upstreams
        each saw only a part), and marked estimated like every usage the gateway counts itself."""
        if self.segment_usage is not None and not self.continuations:
            usage: dict[str, Any] = self.segment_usage
        else:
            await tokens.ready()
            usage = self._counted_usage()
        data = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.segment.deployment.model,
            "choices": [],
            "usage": usage,
        }
        self.last_usage = usage
        self.usage_estimated = usage is not self.segment_usage or self.segment.value.call.facts.usage_estimated
        return StreamChunk(data)

    # --- segments ------------------------------------------------------------------------------

    def _end_segment(self, *, ok: bool, error: ProviderError | None = None) -> None:
        """Settle the segment's stats and breaker verdict, once."""
        self._segment_open = False
        now = time.monotonic()
        served = self.segment
        breaker = self.executor.circuits.get(served.deployment.key)
        output = (self.segment_usage or {}).get("completion_tokens")
        # A stream cut by the request's own deadline says nothing about the deployment: it is not blamed.
        blamed = error is not None and not request_deadline_passed(self.journey, served.deployment, error)
        whole = error is None or self.finished  # a lost tail after a whole answer is no health failure
        if whole or blamed:
            served.record.end(now, ok=whole, output_tokens=output, cold_start=served.value.call.facts.cold_start)
        else:
            served.record.abandon(now)
        if whole:
            breaker.succeeded(now, served.ticket)
        elif blamed and error is not None:
            breaker.failed(now, error.kind, error.retry_after_s, served.ticket)
        else:
            breaker.release(served.ticket)
        if error is not None:
            served.attempt.outcome = f"{error.kind.value} mid-stream"
            if error.kind is ErrorKind.TIMEOUT:
                self.journey.timed_out.add(served.deployment.key)

    def _abandon_segment(self) -> None:
        """The client left mid-segment: no verdict on the deployment, its probe slot freed."""
        self._segment_open = False
        self.segment.record.abandon(time.monotonic())
        self.executor.circuits.get(self.segment.deployment.key).release(self.segment.ticket)

    async def _continue(self, error: ProviderError) -> Served[OpenStream] | None:
        """A new segment that picks up where the client's answer stopped, or None."""
        allowed = self.executor.resilience.stream_continuations  # an upstream dying again and again is not chased
        if self.sent_tool_calls or self.continuations >= allowed or self.choices > 1:
            return None
        prefix = "".join(self.sent)
        await tokens.ready()  # the continuation's output limit is what is left after the text sent
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
        self.seam = prefix[len(prefix.rstrip()) :]
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
