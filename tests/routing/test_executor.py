"""The resilience executor and resuming streams, driven directly with scripted fake providers.

Each test pins one fixed bug: streams cut mid-answer feed the breaker, a lost tail after the usage
chunk, n>1 streams cut mid-choice, a `context_window` fallback when no deployment of the alias fits,
the hedge delay and attempt limit, the seam between a cut stream and its continuation, half-open probe
slots, a client read timeout already spent, and a breaker window resized by a reload. The last test
fires many concurrent requests with random faults and cancellations and checks that every call, probe
slot, task and upstream stream is settled afterwards.

No network and no HTTP: a `Router` and an `Executor` are built from a YAML config whose providers are
`FakeProvider`s, and requests are driven the way `gateway.api` drives them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.api import RequestLimits
from gateway.config import parse_config
from providers.base import CallOptions
from providers.errors import ErrorKind, ProviderError
from providers.schema import ChatCompletionRequest, ChatRequest, ChunkFactory, StreamChunk, Usage
from providers.tokens import encoding
from routing.circuits import Breaker, CircuitBreakers, CircuitState, Ticket
from routing.config import CircuitBreakerPolicy
from routing.context import RequestContext, RequestFacts
from routing.executor import Executor, Exhausted, Journey, Served
from routing.resume import OpenStream, ResumingStream, discard_stream, open_stream
from routing.retry_budget import RetryBudgets
from routing.router import Deployment, Router
from routing.stats import CallRecord, LiveStats

# --- fakes and helpers ---------------------------------------------------------------------------------

#: A scripted stream: called with the request and its limits, returns the chunks (or raises in them).
StreamScript = Callable[[ChatRequest, CallOptions], AsyncIterator[StreamChunk]]
#: A scripted plain call: returns a completion object or raises.
ChatScript = Callable[[ChatRequest, CallOptions], Awaitable[dict[str, Any]]]

HI = [{"role": "user", "content": "hi"}]


def error(kind: str, **details: Any) -> ProviderError:
    """A provider error of `kind`, as an adapter raises it."""
    return ProviderError(ErrorKind(kind), f"scripted {kind}", provider="fake", **details)


def completion(text: str) -> dict[str, Any]:
    """A whole `chat.completion` answering `text`."""
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def answer(*pieces: str, cut: BaseException | None = None, completion_id: str = "cmpl-fake") -> StreamScript:
    """A stream of a role chunk and one content chunk per piece; then, unless `cut` is raised, the finish
    chunk and a usage-only chunk."""

    async def chunks(request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        factory = ChunkFactory(completion_id, 1, "fake-model")
        yield factory.delta({"role": "assistant", "content": ""})
        for piece in pieces:
            yield factory.delta({"content": piece})
        if cut is not None:
            raise cut
        yield factory.delta({}, finish="stop")
        yield factory.usage(Usage(prompt_tokens=5, completion_tokens=len(pieces)))

    return chunks


class FakeProvider:
    """A provider connection for the router: each call follows the next script in its list, and once the
    scripts run out it answers at once with a short stream or completion naming the provider."""

    supports_prefill = False  # deployments opt in with `prefill: true` in the config

    def __init__(
        self, name: str, *, streams: list[StreamScript] | None = None, chats: list[ChatScript] | None = None
    ) -> None:
        self.name = name
        self.streams = list(streams or [])
        self.chats = list(chats or [])
        self.calls = 0
        self.requests: list[ChatRequest] = []

    def stream(self, model: str, request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        self.requests.append(request)
        script = self.streams.pop(0) if self.streams else answer(f"from {self.name}")
        return script(request, options)

    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        self.calls += 1
        self.requests.append(request)
        if self.chats:
            return await self.chats.pop(0)(request, options)
        return completion(f"from {self.name}")


def executor_for(config_yaml: str, providers: dict[str, Any], seed: int = 0) -> Executor:
    """An executor over a router for `config_yaml`, whose provider connections are the given fakes (keyed
    by provider name), with fresh stats, breakers and retry budgets, as `Runtime.build` wires them."""
    config = parse_config(config_yaml, "test.yaml").config
    resilience = config.server.resilience
    circuits = CircuitBreakers(resilience.circuit_breaker)
    router = Router(
        config.models,
        providers,  # type: ignore[arg-type]  # duck-typed stand-ins for ProviderAdapter
        config.server.timeouts,
        routes=config.routes,
        stats=LiveStats(),
        circuits=circuits,
        rng=random.Random(seed),
    )
    return Executor(router, resilience, circuits, RetryBudgets(resilience.retry_budget), rng=random.Random(seed))


def limits(*, streaming: bool, client_read_s: float | None = None, age_s: float = 0.0) -> RequestLimits:
    """A request's time limits as `RequestLimits.of` computes them from its headers; `age_s` backdates
    its start (a request that has already waited that long)."""
    started = asyncio.get_running_loop().time() - age_s
    return RequestLimits(started=started, streaming=streaming, client_read_s=client_read_s, deadline=None)


def begin_journey(executor: Executor, body: dict[str, Any], request_limits: RequestLimits) -> Journey:
    """`Executor.start` for a chat body, as the chat endpoint calls it."""
    params = ChatCompletionRequest.model_validate(body)
    facts = RequestFacts.of_chat(params, body)
    return executor.start(facts, RequestContext(), request_limits.options_for, streaming=request_limits.streaming)


def stream_begin(body: dict[str, Any]) -> Callable[[Deployment, CallOptions], Awaitable[OpenStream]]:
    """The `begin` of a streamed request: a stream is served once its first chunk arrived."""
    params = ChatCompletionRequest.model_validate(body)

    async def begin(deployment: Deployment, options: CallOptions) -> OpenStream:
        return await open_stream(deployment, ChatRequest(body=body, params=params), options)

    return begin


def chat_begin(body: dict[str, Any]) -> Callable[[Deployment, CallOptions], Awaitable[dict[str, Any]]]:
    """The `begin` of a plain request: the whole completion."""
    params = ChatCompletionRequest.model_validate(body)

    async def begin(deployment: Deployment, options: CallOptions) -> dict[str, Any]:
        return await deployment.adapter.chat(deployment.model, ChatRequest(body=body, params=params), options)

    return begin


async def open_client_stream(
    executor: Executor, body: dict[str, Any], request_limits: RequestLimits | None = None
) -> ResumingStream:
    """Start a streamed request and hand back the client's stream, as the chat endpoint does."""
    request_limits = request_limits or limits(streaming=True)
    journey = begin_journey(executor, body, request_limits)
    served = await executor.run(journey, stream_begin(body), discard=discard_stream)
    request_limits.answering = True
    return ResumingStream(executor, journey, served, body)


async def drain(stream: ResumingStream) -> tuple[list[dict[str, Any]], ProviderError | None]:
    """Everything the client receives, and the error the stream ended with (None: it ended cleanly)."""
    received: list[dict[str, Any]] = []
    try:
        async for chunk in stream:
            received.append(chunk.data)
    except ProviderError as failure:
        return received, failure
    finally:
        await stream.aclose()
    return received, None


def text_of(chunks: list[dict[str, Any]], index: int = 0) -> str:
    """The content the client reads for one choice."""
    return "".join(
        (choice.get("delta") or {}).get("content") or ""
        for chunk in chunks
        for choice in chunk.get("choices") or ()
        if choice.get("index", 0) == index
    )


def usage_only(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The usage-only chunks (`choices: []`) among those the client received."""
    return [chunk for chunk in chunks if chunk.get("usage") and not chunk.get("choices")]


def in_flight(executor: Executor) -> dict[str, int]:
    """Calls in flight per deployment, as the live stats count them."""
    return {d.key: executor.router.stats.get(d.key).in_flight for d in executor.router.all_deployments()}


def stream_body(**extra: Any) -> dict[str, Any]:
    """A streamed chat request to the alias `m`."""
    return {"model": "m", "messages": HI, "stream": True, **extra}


TWO_DEPLOYMENTS = """
providers:
  p1: {type: mock}
  p2: {type: mock}
models:
  m: {deployments: [{provider: p1, model: a}, {provider: p2, model: b}]}
"""


# --- 1. streams cut mid-answer are breaker failures --------------------------------------------------


async def test_streams_cut_mid_answer_count_as_breaker_failures() -> None:
    config = (
        "server: {resilience: {stream_continuations: 0, circuit_breaker: {consecutive_failures: 3}}}\n"
        + TWO_DEPLOYMENTS
    )
    a = FakeProvider("p1", streams=[answer("partial", cut=error("internal")) for _ in range(3)])
    b = FakeProvider("p2")
    executor = executor_for(config, {"p1": a, "p2": b})
    breaker = executor.circuits.get("p1/a")

    for _ in range(3):
        received, failure = await drain(await open_client_stream(executor, stream_body()))
        assert text_of(received) == "partial"
        assert failure is not None and failure.kind is ErrorKind.INTERNAL

    assert breaker.state is CircuitState.OPEN
    assert breaker.consecutive_failures == 3
    received, failure = await drain(await open_client_stream(executor, stream_body()))
    assert failure is None and text_of(received) == "from p2"
    assert a.calls == 3, "the open breaker keeps the 4th request away from p1/a"
    assert in_flight(executor) == {"p1/a": 0, "p2/b": 0}


# --- 2. a lost tail after the usage chunk -------------------------------------------------------------


async def test_an_upstream_dying_after_its_usage_chunk_yields_exactly_one_usage_chunk() -> None:
    async def dies_after_usage(request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        factory = ChunkFactory("cmpl-1", 1, "a")
        yield factory.delta({"role": "assistant", "content": ""})
        yield factory.delta({"content": "hello"})
        yield factory.delta({}, finish="stop")
        yield factory.usage(Usage(prompt_tokens=5, completion_tokens=1))
        raise error("unavailable")  # the connection reset before [DONE]

    executor = executor_for(
        TWO_DEPLOYMENTS, {"p1": FakeProvider("p1", streams=[dies_after_usage]), "p2": FakeProvider("p2")}
    )
    body = stream_body(stream_options={"include_usage": True})
    received, failure = await drain(await open_client_stream(executor, body))

    assert failure is None, "the answer was whole: only its tail was lost"
    assert text_of(received) == "hello"
    usages = usage_only(received)
    assert len(usages) == 1
    assert usages[0]["usage"]["completion_tokens"] == 1  # the upstream's own count, not a second estimate
    assert executor.circuits.get("p1/a").consecutive_failures == 0
    assert in_flight(executor)["p1/a"] == 0


# --- 3. n=2 with one choice cut -------------------------------------------------------------------------


async def test_an_n2_stream_whose_second_choice_is_cut_raises_the_provider_error() -> None:
    async def second_choice_cut(request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        factory = ChunkFactory("cmpl-1", 1, "a")
        yield factory.delta({"role": "assistant", "content": ""}, index=0)
        yield factory.delta({"content": "zero"}, index=0)
        yield factory.delta({}, index=0, finish="stop")
        yield factory.delta({"role": "assistant", "content": ""}, index=1)
        yield factory.delta({"content": "one, cut"}, index=1)
        raise error("internal")

    b = FakeProvider("p2")
    executor = executor_for(TWO_DEPLOYMENTS, {"p1": FakeProvider("p1", streams=[second_choice_cut]), "p2": b})
    received, failure = await drain(await open_client_stream(executor, stream_body(n=2)))

    assert failure is not None and failure.kind is ErrorKind.INTERNAL, "a cut choice is not presented as success"
    finished = {c["index"] for chunk in received for c in chunk.get("choices") or () if c.get("finish_reason")}
    assert finished == {0}
    assert usage_only(received) == received[-1:], "the usage so far comes last, before the error"
    assert b.calls == 0, "n>1 is not continued elsewhere"
    assert executor.circuits.get("p1/a").consecutive_failures == 1


# --- 4. context_window fallback when nothing of the alias fits ----------------------------------------


async def test_a_prompt_too_long_for_every_deployment_goes_to_the_context_window_chain() -> None:
    config = """
providers:
  p1: {type: mock}
  p2: {type: mock}
models:
  short:
    fallbacks: {context_window: [long]}
    deployments: [{provider: p1, model: a, context_window: 50}]
  long: {deployments: [{provider: p2, model: b, context_window: 100000}]}
"""
    short, long = FakeProvider("p1"), FakeProvider("p2")
    executor = executor_for(config, {"p1": short, "p2": long})
    body = {"model": "short", "messages": [{"role": "user", "content": "word " * 200}]}

    journey = begin_journey(executor, body, limits(streaming=False))  # no NoDeploymentAvailable
    served = await executor.run(journey, chat_begin(body))
    served.record.end(time.monotonic(), ok=True)

    assert served.deployment.alias == "long" and served.deployment.key == "p2/b"
    assert served.value["choices"][0]["message"]["content"] == "from p2"
    assert journey.fallback_reason == "context_window"
    assert short.calls == 0


# --- 5. hedging: the right p95, and the attempt limit ---------------------------------------------------


async def test_the_hedge_delay_of_a_plain_call_is_its_latency_p95_and_of_a_stream_its_ttft_p95() -> None:
    config = TWO_DEPLOYMENTS.replace("m: {deployments", "m: {hedge: {min_after_ms: 10}, deployments")
    executor = executor_for(config, {"p1": FakeProvider("p1"), "p2": FakeProvider("p2")})
    deployment = executor.router.deployments("m")[0]
    hedge = executor.router.models["m"].hedge
    assert hedge is not None
    stats = executor.router.stats.get(deployment.key)
    now = time.monotonic()
    for _ in range(20):  # streamed calls: first token after 50 ms, the whole answer after 3 s
        record = CallRecord(stats, now - 3.0, was_cold=False)
        record.first_token(now - 2.95)
        record.end(now, ok=True, output_tokens=100)
    assert stats.trusted

    plain = begin_journey(executor, {"model": "m", "messages": HI}, limits(streaming=False))
    streamed = begin_journey(executor, stream_body(), limits(streaming=True))
    assert executor._hedge_delay(plain, deployment, hedge) == pytest.approx(3.0, rel=0.01)
    assert executor._hedge_delay(streamed, deployment, hedge) == pytest.approx(0.05, rel=0.01)


async def test_a_hedge_is_not_started_beyond_max_attempts() -> None:
    config = """
server: {resilience: {retry: {max_attempts: 1}}}
providers:
  p1: {type: mock}
  p2: {type: mock}
models:
  m:
    hedge: {after_ms: 5, min_after_ms: 0}
    deployments: [{provider: p1, model: a}, {provider: p2, model: b}]
"""

    async def slow(request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        await asyncio.sleep(0.05)  # ten times the hedge delay
        return completion("slow but sure")

    a, b = FakeProvider("p1", chats=[slow]), FakeProvider("p2")
    executor = executor_for(config, {"p1": a, "p2": b})
    body = {"model": "m", "messages": HI}
    journey = begin_journey(executor, body, limits(streaming=False))
    served = await executor.run(journey, chat_begin(body))
    served.record.end(time.monotonic(), ok=True)

    assert served.deployment.key == "p1/a"
    assert [attempt.deployment for attempt in journey.attempts] == ["p1/a"]
    assert b.calls == 0


# --- 6. the seam between a cut stream and its continuation -------------------------------------------


@pytest.mark.parametrize(
    ("sent", "continued", "client_text"),
    [
        ("def f():\n", "\n    return 1", "def f():\n    return 1"),  # the repeated newline dropped, indent kept
        ("word ", "next", "word next"),  # nothing repeated: nothing dropped
        ("a ", " b", "a b"),  # the repeated space dropped once
    ],
)
async def test_a_continuation_joins_the_cut_text_at_the_seam(sent: str, continued: str, client_text: str) -> None:
    config = TWO_DEPLOYMENTS.replace("{provider: p2, model: b}", "{provider: p2, model: b, prefill: true}")
    cut = FakeProvider("p1", streams=[answer(sent, cut=error("internal"), completion_id="cmpl-first")])
    resumer = FakeProvider("p2", streams=[answer(continued, completion_id="cmpl-second")])
    executor = executor_for(config, {"p1": cut, "p2": resumer})

    received, failure = await drain(await open_client_stream(executor, stream_body()))

    assert failure is None
    assert text_of(received) == client_text
    assert {chunk["id"] for chunk in received} == {"cmpl-first"}, "one answer, under the first id"
    prefill = resumer.requests[0].body["messages"][-1]
    assert prefill == {"role": "assistant", "content": sent}
    assert len(usage_only(received)) == 1


# --- 7. half-open probe slots ------------------------------------------------------------------------------


async def test_two_successful_probes_free_both_slots_for_the_next_half_open_spell() -> None:
    config = (
        "server: {resilience: {circuit_breaker: {consecutive_failures: 1, cooldown_s: 0.01, half_open_probes: 2}}}\n"
        "providers: {p1: {type: mock}}\n"
        "models: {m: {deployments: [{provider: p1, model: a}]}}\n"
    )
    gate, both_started, started = asyncio.Event(), asyncio.Event(), []

    async def held(request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        started.append(request)
        if len(started) == 2:
            both_started.set()
        await gate.wait()
        return completion("probe ok")

    executor = executor_for(config, {"p1": FakeProvider("p1", chats=[held, held])})
    breaker = executor.circuits.get("p1/a")
    breaker.failed(time.monotonic(), ErrorKind.UNAVAILABLE)
    assert breaker.state is CircuitState.OPEN
    await asyncio.sleep(0.02)  # past the cooldown: the next calls are probes

    async def request() -> Served[dict[str, Any]]:
        body = {"model": "m", "messages": HI}
        served = await executor.run(begin_journey(executor, body, limits(streaming=False)), chat_begin(body))
        served.record.end(time.monotonic(), ok=True)
        return served

    probes = [asyncio.ensure_future(request()) for _ in range(2)]
    await both_started.wait()
    assert breaker.state is CircuitState.HALF_OPEN and breaker.probes_in_flight == 2
    gate.set()
    await asyncio.gather(*probes)

    assert breaker.state is CircuitState.CLOSED
    assert breaker.probes_in_flight == 0
    now = time.monotonic()
    breaker.failed(now, ErrorKind.UNAVAILABLE)  # open again
    later = now + 1.0
    first, second = breaker.admit(later), breaker.admit(later)
    assert first is not None and first.probe and second is not None and second.probe
    assert breaker.admit(later) is None, "only two probes at once"


@pytest.mark.parametrize("iterated", [False, True], ids=["never-iterated", "partly-read"])
async def test_closing_a_stream_never_frees_another_requests_probe_slot(iterated: bool) -> None:
    config = (
        "server: {resilience: {circuit_breaker: {consecutive_failures: 1, cooldown_s: 0.01}}}\n"
        "providers: {p1: {type: mock}}\n"
        "models: {m: {deployments: [{provider: p1, model: a}]}}\n"
    )
    executor = executor_for(config, {"p1": FakeProvider("p1", streams=[answer("x", "y", "z")])})
    breaker = executor.circuits.get("p1/a")
    stream = await open_client_stream(executor, stream_body())  # admitted while closed: no probe slot
    if iterated:
        await anext(aiter(stream))

    now = time.monotonic()
    breaker.failed(now, ErrorKind.UNAVAILABLE)  # another request fails: open
    probe = breaker.admit(now + 1.0)  # after the cooldown, a third request probes
    assert probe is not None and probe.probe and breaker.probes_in_flight == 1

    await stream.aclose()  # the first request's client leaves

    assert breaker.probes_in_flight == 1, "the probe's slot is still taken by the probe"
    assert breaker.admit(now + 1.0) is None
    assert in_flight(executor)["p1/a"] == 0
    breaker.release(probe)
    assert breaker.probes_in_flight == 0


# --- 8. a client read timeout already spent --------------------------------------------------------------


async def _stalls_until_the_first_token_limit(request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
    """An upstream that sends nothing: the adapter gives up at its first-token limit (a little after it,
    so the limit is surely spent when the error is judged; and after 0.5 s at most, so that a limit
    wrongly left at its 60 s default fails the test instead of hanging it)."""
    await asyncio.sleep(min(options.first_token_timeout_s, 0.5) + 0.01)
    raise error("timeout")
    yield  # pragma: no cover - never reached; it makes this an async generator


@pytest.mark.parametrize("spent", ["before-the-request", "by-the-first-attempt"])
async def test_a_spent_client_read_timeout_starts_nothing_and_blames_no_deployment(spent: str) -> None:
    a = FakeProvider("p1", streams=[_stalls_until_the_first_token_limit])
    b = FakeProvider("p2", streams=[_stalls_until_the_first_token_limit])
    executor = executor_for(TWO_DEPLOYMENTS, {"p1": a, "p2": b})
    age_s = 0.3 if spent == "before-the-request" else 0.0
    request_limits = limits(streaming=True, client_read_s=0.2, age_s=age_s)
    body = stream_body()
    journey = begin_journey(executor, body, request_limits)

    with pytest.raises(Exhausted) as exhausted:
        await executor.run(journey, stream_begin(body), discard=discard_stream)

    assert exhausted.value.error.kind is ErrorKind.TIMEOUT
    expected_calls = 0 if spent == "before-the-request" else 1
    assert len(journey.attempts) == a.calls == expected_calls
    assert b.calls == 0, "no new attempt once the client stopped waiting"
    for key in ("p1/a", "p2/b"):
        breaker = executor.circuits.get(key)
        assert breaker.consecutive_failures == 0 and breaker.state is CircuitState.CLOSED
    assert in_flight(executor) == {"p1/a": 0, "p2/b": 0}


# --- 9. a reload resizing the breaker window ---------------------------------------------------------------


def test_reconfigure_with_a_smaller_window_rebuilds_the_window() -> None:
    policy = CircuitBreakerPolicy(window_s=30, consecutive_failures=100, min_calls=100)
    circuits = CircuitBreakers(policy)
    breaker = circuits.get("p1/a")
    for second in range(10):
        breaker.failed(100.0 + second, ErrorKind.UNAVAILABLE)
    assert breaker.window.totals(110.0) == (10, 10)

    circuits.reconfigure(policy.model_copy(update={"window_s": 5.0}), {"p1/a"})

    assert breaker.policy.window_s == 5.0
    assert breaker.window.buckets == len(breaker.window.first) == len(breaker.window.second) == 5
    assert breaker.window.totals(110.0) == (0, 0), "counts in the old window's buckets do not carry"
    breaker.failed(110.0, ErrorKind.UNAVAILABLE)
    breaker.succeeded(114.0)
    assert breaker.window.totals(114.0) == (2, 1)
    assert breaker.window.totals(115.5) == (1, 0), "the call of 5 s ago has left the 5-second window"


# --- 10. invariants under random faults and cancellations ----------------------------------------------

FUZZ_CONFIG = """
server:
  resilience:
    retry: {attempts_per_deployment: 2, max_attempts: 6, backoff_base_ms: 1, backoff_max_ms: 3}
    stream_continuations: 2
    retry_budget: {min_per_window: 1000}
    circuit_breaker: {consecutive_failures: 2, cooldown_s: 0.005, max_cooldown_s: 0.01, half_open_probes: 2}
providers:
  p1: {type: mock}
  p2: {type: mock}
  p3: {type: mock}
models:
  m:
    hedge: {after_ms: 3, min_after_ms: 0}
    fallbacks: [f]
    deployments: [{provider: p1, model: a, prefill: true}, {provider: p2, model: b}]
  f: {deployments: [{provider: p3, model: c, prefill: true}]}
"""
STREAM_FAULTS = [
    "ok", "ok", "ok", "error_first", "bug_first", "empty", "cut_after_role", "cut_mid_answer", "bug_mid_answer",
    "slow", "cut_after_finish",
]  # fmt: skip
CHAT_FAULTS = ["ok", "ok", "error", "slow", "bug"]
FIRST_ERRORS = ["internal", "unavailable", "timeout", "rate_limited", "invalid_request", "context_window"]


class AdapterBug(ValueError):
    """The fault the fuzzed provider injects: a bug inside an adapter, as opposed to one of the executor's."""


class UnreliableProvider:
    """A provider whose every call picks a random behaviour: an answer, an error before or in the middle
    of it, a stall, or a bug (AdapterBug). It counts the upstream streams it opened and closed."""

    supports_prefill = False

    def __init__(self, name: str, rng: random.Random) -> None:
        self.name = name
        self.rng = rng
        self.streams_opened = 0
        self.streams_closed = 0

    def stream(self, model: str, request: ChatRequest, options: CallOptions) -> AsyncIterator[StreamChunk]:
        return self._stream(self.rng.choice(STREAM_FAULTS))

    async def _stream(self, fault: str) -> AsyncIterator[StreamChunk]:
        rng = self.rng
        self.streams_opened += 1
        try:
            factory = ChunkFactory(f"cmpl-{self.name}", 1, self.name)
            await asyncio.sleep(rng.random() * 0.01)
            if fault == "error_first":
                raise error(rng.choice(FIRST_ERRORS), retry_after_s=rng.choice([None, 0.001]))
            if fault == "bug_first":
                raise AdapterBug("an adapter bug")
            if fault == "empty":
                return
            yield factory.delta({"role": "assistant", "content": ""})
            if fault == "cut_after_role":
                raise error("internal")
            for index in range(rng.randint(1, 4)):
                await asyncio.sleep(rng.random() * 0.005)
                yield factory.delta({"content": f"w{index} "})
            if fault == "cut_mid_answer":
                raise error(rng.choice(["internal", "timeout"]))
            if fault == "bug_mid_answer":
                raise AdapterBug("an adapter bug mid-stream")
            if fault == "slow":
                await asyncio.sleep(0.03)
            yield factory.delta({}, finish="stop")
            if fault == "cut_after_finish":
                raise error("internal")
            yield factory.usage(Usage(prompt_tokens=1, completion_tokens=2))
        finally:
            self.streams_closed += 1

    async def chat(self, model: str, request: ChatRequest, options: CallOptions) -> dict[str, Any]:
        fault = self.rng.choice(CHAT_FAULTS)
        await asyncio.sleep(self.rng.random() * 0.01)
        if fault == "error":
            raise error(self.rng.choice(["internal", "timeout", "unavailable"]))
        if fault == "bug":
            raise AdapterBug("an adapter bug")
        if fault == "slow":
            await asyncio.sleep(0.03)
        return completion(self.name)


async def _one_request(executor: Executor, rng: random.Random) -> bool:
    """One client request, streamed or not, whose task is cancelled at a random point half of the time
    (and whose streamed answer is sometimes never read: the client left once the headers came)."""
    streaming = rng.random() < 0.7
    body = {"model": "m", "messages": HI, "stream": streaming}
    never_read = rng.random() < 0.1
    start_after = rng.random() * 0.2  # arrivals spread over 200 ms: breakers open, probe and close meanwhile

    async def work() -> None:
        await asyncio.sleep(start_after)
        request_limits = limits(streaming=streaming)
        journey = begin_journey(executor, body, request_limits)
        if not streaming:
            served = await executor.run(journey, chat_begin(body))
            served.record.end(time.monotonic(), ok=True)
            return
        served_stream = await executor.run(journey, stream_begin(body), discard=discard_stream)
        request_limits.answering = True
        stream = ResumingStream(executor, journey, served_stream, body)
        try:
            if not never_read:
                async for _ in stream:
                    pass
        finally:
            await stream.aclose()

    task = asyncio.ensure_future(work())
    await asyncio.sleep(start_after + rng.random() * 0.04)
    if rng.random() < 0.5:
        task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exhausted, ProviderError, AdapterBug):
        return False
    return True


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_every_call_slot_task_and_stream_is_settled_under_random_faults(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    records: list[CallRecord] = []
    settled: Counter[int] = Counter()  # id(record) -> calls of end or abandon
    tickets: list[Ticket] = []

    original_init, original_end, original_abandon = CallRecord.__init__, CallRecord.end, CallRecord.abandon
    original_admit = Breaker.admit

    def init(self: CallRecord, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        records.append(self)

    def end(self: CallRecord, *args: Any, **kwargs: Any) -> None:
        settled[id(self)] += 1
        original_end(self, *args, **kwargs)

    def abandon(self: CallRecord, *args: Any, **kwargs: Any) -> None:
        settled[id(self)] += 1
        original_abandon(self, *args, **kwargs)

    def admit(self: Breaker, now: float) -> Ticket | None:
        ticket = original_admit(self, now)
        if ticket is not None:
            tickets.append(ticket)
        return ticket

    monkeypatch.setattr(CallRecord, "__init__", init)
    monkeypatch.setattr(CallRecord, "end", end)
    monkeypatch.setattr(CallRecord, "abandon", abandon)
    monkeypatch.setattr(Breaker, "admit", admit)

    encoding()  # load the tokenizer now (as `Runtime.build` does), not in the middle of the timed traffic
    rng = random.Random(seed)
    providers = {name: UnreliableProvider(name, rng) for name in ("p1", "p2", "p3")}
    executor = executor_for(FUZZ_CONFIG, providers, seed=seed)
    for key in ("p1/a", "p2/b", "p3/c"):  # start half-open, so probe slots are taken and freed from the start
        executor.circuits.get(key).failed(time.monotonic() - 1.0, ErrorKind.UNAVAILABLE)
        executor.circuits.get(key).failed(time.monotonic() - 1.0, ErrorKind.UNAVAILABLE)

    started = time.monotonic()
    completed = await asyncio.gather(*(_one_request(executor, rng) for _ in range(100)))
    assert time.monotonic() - started < 5.0
    assert sum(completed) > 0, "no request completed: the faults, not the executor, decided every outcome"

    assert {task for task in asyncio.all_tasks() if task is not asyncio.current_task()} == set()
    assert len(records) >= 20  # calls were made (how many depends on timing: cancellations, open breakers)
    assert [settled[id(record)] for record in records if settled[id(record)] != 1] == [], (
        "each call record is ended or abandoned exactly once"
    )
    assert in_flight(executor) == {"p1/a": 0, "p2/b": 0, "p3/c": 0}
    assert {key: executor.circuits.get(key).probes_in_flight for key in ("p1/a", "p2/b", "p3/c")} == {
        "p1/a": 0,
        "p2/b": 0,
        "p3/c": 0,
    }
    assert sum(ticket.probe for ticket in tickets) > 0
    assert [ticket for ticket in tickets if ticket.holding] == [], "every probe slot was given back"
    for provider in providers.values():
        assert provider.streams_closed == provider.streams_opened, f"{provider.name}: an upstream stream left open"
