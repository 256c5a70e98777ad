"""The `replicate` adapter: chat over Replicate's predictions API.

A prediction is created with `Prefer: wait=N`, so short answers come back in one round trip; longer
ones are polled with backoff. Streams read the prediction's own SSE URL (`output`, `error`, `done`
events), then fetch the finished prediction for its metrics. Replicate bills by compute time and
scale-to-zero models can sit in `starting` while they boot, so every call reports its predict time,
its queue time and whether it met a cold start (`ChatRequest.facts`). A prediction whose client went
away, or that ran out of time, is cancelled at Replicate: an abandoned one would keep billing.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from providers.base import CallOptions, ProviderAdapter
from providers.errors import ErrorKind, ProviderError, kind_for_status
from providers.http import parse_retry_after, request_timeout
from providers.replicate.config import ReplicateConfig
from providers.replicate.templates import TEMPLATES, Turn
from providers.schema import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatRequest,
    ChunkFactory,
    DeveloperMessage,
    StreamChunk,
    SystemMessage,
    Usage,
    UserMessage,
    new_completion_id,
    now_s,
)
from providers.sse import iter_sse_events
from providers.streaming import first_token_deadline, within_limits
from providers.tokens import count_text, ready
from providers.translate import invalid, single_choice, text_of

TERMINAL = {"succeeded", "failed", "canceled"}
COLD_START_THRESHOLD_S = 1.0  # queued longer than this means the model had to boot (or wait for a worker)


class ReplicateAdapter(ProviderAdapter):
    provider_type = "replicate"
    config_model = ReplicateConfig
    config: ReplicateConfig

    def __init__(self, name: str, config: ReplicateConfig, http: httpx.AsyncClient) -> None:
        super().__init__(name, config, http)
        self._base = config.base_url.rstrip("/")
        self._headers = {
            "authorization": f"Bearer {config.api_token.get_secret_value()}",
            "content-type": "application/json",
        }
        self._background: set[asyncio.Task[None]] = set()

    # --- chat --------------------------------------------------------------------------------------

    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        model_input = self._input(request.params)
        prediction: dict[str, Any] | None = None
        try:
            with self.failures_as_provider_errors("Replicate"):
                async with asyncio.timeout_at(options.deadline):
                    prediction = await self._create(model, model_input, options, stream=False)
                    prediction = await self._until_done(prediction, options)
        finally:
            if prediction is not None and prediction.get("status") not in TERMINAL:
                self._cancel_soon(prediction)  # timed out or the client left: stop paying for it
        text = self._output_text(prediction)
        usage = await self._usage(prediction, model_input["prompt"], text)
        request.facts.usage_estimated = usage.estimated
        self._record_facts(request, prediction)
        return {
            "id": "chatcmpl-" + str(prediction.get("id", "")),
            "object": "chat.completion",
            "created": now_s(),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": self._finish(usage, request.params),
                }
            ],
            "usage": usage.to_openai(),
        }

    async def stream(self, model: str, request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        model_input = self._input(request.params)
        chunks = ChunkFactory(new_completion_id(), now_s(), model)
        prediction: dict[str, Any] | None = None
        finished = False
        pieces: list[str] = []
        first_deadline = first_token_deadline(options)
        try:
            with self.failures_as_provider_errors("Replicate"):
                async with asyncio.timeout_at(first_deadline):
                    prediction = await self._create(model, model_input, options, stream=True)
                stream_url = (prediction.get("urls") or {}).get("stream")
                if not stream_url:
                    raise self.error(ErrorKind.INVALID_REQUEST, f"Replicate model '{model}' does not stream")
                # A cold model may boot for a while before its first token: the first-token limit covers it.
                async for event in within_limits(self._events(stream_url, options), options, first_deadline):
                    if event.event == "output":
                        text = event.data.decode("utf-8", "replace")
                        delta = {"content": text} if pieces else {"role": "assistant", "content": text}
                        pieces.append(text)
                        yield chunks.delta(delta)
                    elif event.event == "error":
                        raise self._prediction_error(_detail(event.data))
                    elif event.event == "done":
                        reason = _detail(event.data, key="reason")
                        if reason == "canceled":
                            raise self.error(ErrorKind.INTERNAL, "the prediction was canceled at Replicate")
                        if reason == "error":
                            raise self.error(ErrorKind.INTERNAL, "the prediction failed at Replicate")
                        finished = True
                        break
                if not finished:
                    raise self.error(ErrorKind.INTERNAL, "Replicate ended the stream before it finished")
                prediction = await self._final(prediction, options)
        finally:
            if not finished and prediction is not None:
                self._cancel_soon(prediction)  # the client left, or the stream failed: stop the model
        text = "".join(pieces)
        usage = await self._usage(prediction, model_input["prompt"], text)
        request.facts.usage_estimated = usage.estimated
        self._record_facts(request, prediction)
        yield chunks.delta({}, finish=self._finish(usage, request.params))
        yield chunks.usage(usage)

    # --- request mapping ---------------------------------------------------------------------------

    def _input(self, params: ChatCompletionRequest) -> dict[str, Any]:
        for field, value in (("tools", params.tools), ("response_format", params.response_format)):
            if value and not (field == "response_format" and getattr(value, "type", "") == "text"):
                raise self.own(
                    invalid(f"Replicate language models take a prompt only: '{field}' is not supported.", field)
                )
        try:
            single_choice(params.n, "Replicate")
        except ProviderError as exc:
            raise self.own(exc) from None
        if params.logprobs:
            raise self.own(invalid("Replicate does not return logprobs.", "logprobs"))
        turns: list[Turn] = []
        for index, message in enumerate(params.messages):
            if isinstance(message, SystemMessage | DeveloperMessage):
                turns.append(("system", text_of(message.content)))
            elif isinstance(message, UserMessage):
                if not isinstance(message.content, str) and any(part.type != "text" for part in message.content):
                    raise self.own(invalid("Replicate language models take text only.", f"messages[{index}].content"))
                turns.append(("user", text_of(message.content)))
            elif isinstance(message, AssistantMessage) and not message.tool_calls:
                turns.append(("assistant", text_of(message.content)))
            else:
                raise self.own(
                    invalid("Tool calls and tool results are not supported for Replicate.", f"messages[{index}]")
                )
        model_input: dict[str, Any] = {
            "prompt": TEMPLATES[self.config.prompt_template](turns),
            "prompt_template": "{prompt}",  # the prompt is already in the model's chat format
        }
        if params.output_token_limit is not None:
            model_input[self.config.max_tokens_input] = params.output_token_limit
        for ours, theirs in (
            ("temperature", "temperature"),
            ("top_p", "top_p"),
            ("seed", "seed"),
            ("presence_penalty", "presence_penalty"),
            ("frequency_penalty", "frequency_penalty"),
        ):
            value = getattr(params, ours)
            if value is not None:
                model_input[theirs] = value
        if params.stop_sequences:
            if any("," in stop for stop in params.stop_sequences):
                raise self.own(
                    invalid(
                        "Replicate takes stop sequences as one comma-separated string: "
                        "a stop sequence cannot contain a comma.",
                        "stop",
                    )
                )
            model_input["stop_sequences"] = ",".join(params.stop_sequences)
        return model_input

    # --- predictions -------------------------------------------------------------------------------

    def _create_url(self, model: str) -> tuple[str, dict[str, Any]]:
        if model.startswith("deployments/"):
            return f"{self._base}/v1/{model}/predictions", {}
        if ":" in model:
            _, version = model.split(":", 1)
            return f"{self._base}/v1/predictions", {"version": version}
        return f"{self._base}/v1/models/{model}/predictions", {}

    async def _create(
        self, model: str, model_input: dict[str, Any], options: CallOptions, *, stream: bool
    ) -> dict[str, Any]:
        """Create a prediction. If the caller is cancelled meanwhile (its client left), the creation still
        completes in the background, and the prediction it made is then cancelled: with `Prefer: wait` the
        create call can take seconds, and a prediction nobody cancels keeps running, and billing."""
        creation = asyncio.ensure_future(self._send_create(model, model_input, options, stream=stream))
        try:
            return await asyncio.shield(creation)
        except asyncio.CancelledError:

            def cancel_what_was_made(task: asyncio.Task[dict[str, Any]]) -> None:
                if not task.cancelled() and task.exception() is None:
                    self._cancel_soon(task.result())

            creation.add_done_callback(cancel_what_was_made)
            raise

    async def _send_create(
        self, model: str, model_input: dict[str, Any], options: CallOptions, *, stream: bool
    ) -> dict[str, Any]:
        url, extra = self._create_url(model)
        headers = self._headers if stream else {**self._headers, "prefer": f"wait={self.config.wait_s}"}
        body = {**extra, "input": model_input, **({"stream": True} if stream else {})}
        response = await self.http.post(
            url, content=orjson.dumps(body), headers=headers, timeout=request_timeout(options, streaming=False)
        )
        if response.status_code not in (200, 201):
            raise self._error_from_response(response)
        return self.parse_json(response.content, "Replicate")

    async def _get(self, prediction: dict[str, Any], options: CallOptions) -> dict[str, Any]:
        url = (prediction.get("urls") or {}).get("get") or f"{self._base}/v1/predictions/{prediction.get('id')}"
        response = await self.http.get(url, headers=self._headers, timeout=request_timeout(options, streaming=False))
        if response.status_code != 200:
            raise self._error_from_response(response)
        return self.parse_json(response.content, "Replicate")

    async def _until_done(self, prediction: dict[str, Any], options: CallOptions) -> dict[str, Any]:
        delay = self.config.poll_interval_s
        while prediction.get("status") not in TERMINAL:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
            prediction = {**await self._get(prediction, options), "_seen_starting": _seen_starting(prediction)}
        if prediction.get("status") == "failed":
            raise self._prediction_error(str(prediction.get("error") or "the prediction failed"))
        if prediction.get("status") == "canceled":
            raise self.error(ErrorKind.INTERNAL, "the prediction was canceled at Replicate")
        return prediction

    async def _final(self, prediction: dict[str, Any], options: CallOptions) -> dict[str, Any]:
        """After `done`, the prediction's metrics may lag a moment: poll briefly, then take what is there."""
        for delay in (0.0, 0.05, 0.1, 0.2, 0.4):
            await asyncio.sleep(delay)
            latest = await self._get(prediction, options)
            if latest.get("status") in TERMINAL and latest.get("completed_at"):
                return latest
        return latest

    async def _events(self, url: str, options: CallOptions) -> AsyncIterator[Any]:
        headers = {**self._headers, "accept": "text/event-stream", "cache-control": "no-store"}
        request = self.http.build_request("GET", url, headers=headers, timeout=request_timeout(options, streaming=True))
        response = await self.http.send(request, stream=True)
        try:
            if response.status_code != 200:
                await response.aread()
                raise self._error_from_response(response)
            async for event in iter_sse_events(response.aiter_bytes()):
                yield event
        finally:
            await response.aclose()

    def _cancel_soon(self, prediction: dict[str, Any]) -> None:
        url = (prediction.get("urls") or {}).get(
            "cancel"
        ) or f"{self._base}/v1/predictions/{prediction.get('id')}/cancel"

        async def cancel() -> None:
            try:
                await self.http.post(url, headers=self._headers, timeout=httpx.Timeout(10.0))
            except httpx.HTTPError:
                pass  # best effort: Replicate also stops predictions nobody polls, eventually

        task = asyncio.ensure_future(cancel())
        self._background.add(task)  # keep a reference until done, or the loop may drop it
        task.add_done_callback(self._background.discard)

    # --- answers -----------------------------------------------------------------------------------

    def _output_text(self, prediction: dict[str, Any]) -> str:
        output = prediction.get("output")
        if isinstance(output, list):
            return "".join(str(piece) for piece in output)
        return "" if output is None else str(output)

    async def _usage(self, prediction: dict[str, Any] | None, prompt: str, text: str) -> Usage:
        metrics = (prediction or {}).get("metrics") or {}
        input_tokens, output_tokens = metrics.get("input_token_count"), metrics.get("output_token_count")
        if input_tokens is None or output_tokens is None:
            await ready()
        usage = Usage(
            prompt_tokens=int(input_tokens) if input_tokens is not None else count_text(prompt),
            completion_tokens=int(output_tokens) if output_tokens is not None else count_text(text),
            estimated=input_tokens is None or output_tokens is None,
        )
        if metrics.get("predict_time") is not None:
            usage.extra["predict_time_s"] = float(metrics["predict_time"])
        return usage

    def _finish(self, usage: Usage, params: ChatCompletionRequest) -> str:
        limit = params.output_token_limit
        return "length" if limit is not None and usage.completion_tokens >= limit else "stop"

    def _record_facts(self, request: ChatRequest, prediction: dict[str, Any]) -> None:
        metrics = prediction.get("metrics") or {}
        facts = request.facts
        if metrics.get("predict_time") is not None:
            facts.predict_time_s = float(metrics["predict_time"])
        created, started = _timestamp(prediction.get("created_at")), _timestamp(prediction.get("started_at"))
        if created is not None and started is not None:
            facts.queue_time_s = max(started - created, 0.0)
        facts.cold_start = bool(
            prediction.get("_seen_starting")
            or (facts.queue_time_s is not None and facts.queue_time_s > COLD_START_THRESHOLD_S)
        )

    # --- errors ------------------------------------------------------------------------------------

    def _prediction_error(self, message: str) -> ProviderError:
        lowered = message.lower()
        if any(hint in lowered for hint in ("context length", "too many tokens", "prompt is too long", "max length")):
            return self.error(ErrorKind.CONTEXT_WINDOW, message)
        return self.error(ErrorKind.INTERNAL, f"the prediction failed: {message}")

    def _error_from_response(self, response: httpx.Response) -> ProviderError:
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            body = {}
        body = body if isinstance(body, dict) else {}
        message = str(body.get("detail") or body.get("title") or response.text[:300] or response.reason_phrase)
        status = response.status_code
        if status == 402:
            kind = ErrorKind.AUTH  # out of credit: waiting will not help, another deployment may
        elif status == 422:
            kind = ErrorKind.INVALID_REQUEST
        elif status >= 500:
            kind = ErrorKind.UNAVAILABLE
        else:
            kind = kind_for_status(status)
        if kind is ErrorKind.AUTH:
            message = f"Replicate refused the credentials of provider '{self.name}' ({status}): {message}"
        error = self.error(kind, message, status=status)
        error.retry_after_s = parse_retry_after(response.headers) or _float(body.get("retry_after"))
        return error


def _detail(data: bytes, key: str = "detail") -> str:
    try:
        parsed = orjson.loads(data) if data else {}
    except orjson.JSONDecodeError:
        return data.decode("utf-8", "replace")
    return str(parsed.get(key) or "") if isinstance(parsed, dict) else str(parsed)


def _seen_starting(prediction: dict[str, Any]) -> bool:
    return bool(prediction.get("_seen_starting") or prediction.get("status") == "starting")


def _timestamp(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
