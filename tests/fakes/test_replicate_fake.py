"""Prove FakeReplicate speaks real Replicate: the official SDK must run, poll, stream and fail against it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
import replicate
from replicate.exceptions import ModelError, ReplicateError
from replicate.stream import ServerSentEvent

from tests.fakes.replicate import (
    DEFAULT_FAIL_ERROR,
    INSUFFICIENT_CREDIT,
    INVALID_INPUT,
    NOT_FOUND,
    THROTTLED,
    UNAUTHENTICATED,
    UNAVAILABLE,
    Fail,
    FakeReplicate,
    Hang,
    HttpError,
    Reply,
    default_tokens,
)
from tests.support.server import ServerThread

MODEL = "meta/meta-llama-3-8b-instruct"
CREATE_PATH = f"/v1/models/{MODEL}/predictions"
AUTH = {"Authorization": "Bearer r8_fake"}

_FAKE = FakeReplicate()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    """One server per module: startup dominates, and `reset()` isolates the tests."""
    with ServerThread(_FAKE.app) as running:
        yield running


@pytest.fixture
def fake(server: ServerThread) -> FakeReplicate:
    _FAKE.reset()
    return _FAKE


@pytest.fixture
def client(server: ServerThread, monkeypatch: pytest.MonkeyPatch) -> replicate.Client:
    monkeypatch.setenv("REPLICATE_POLL_INTERVAL", "0.05")  # read when the Client is built
    return replicate.Client(api_token="r8_fake", base_url=server.url, timeout=httpx.Timeout(10.0))


@pytest.fixture
def http(server: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=10) as raw:
        yield raw


# --- run / poll ---------------------------------------------------------------------------------


def test_run_returns_tokens_in_one_blocking_call(client: replicate.Client, fake: FakeReplicate) -> None:
    output = client.run(MODEL, input={"prompt": "Tell me a joke"})
    assert "".join(output) == "You said: Tell me a joke"
    assert output == default_tokens({"prompt": "Tell me a joke"})
    [create] = fake.requests  # `Prefer: wait` answered terminal: no polling
    assert (create.method, create.path) == ("POST", CREATE_PATH)
    assert create.headers["prefer"] == "wait"
    assert create.headers["authorization"] == "Bearer r8_fake"
    assert create.json == {"input": {"prompt": "Tell me a joke"}}


def test_run_polls_when_cold_start_outlasts_prefer_wait(client: replicate.Client, fake: FakeReplicate) -> None:
    fake.script(Reply(tokens=["Warm", " at", " last"], cold_start_s=1.2))
    started = time.monotonic()
    output = client.run(MODEL, input={"prompt": "hi"}, wait=1)
    assert "".join(output) == "Warm at last"
    assert time.monotonic() - started >= 1.2
    assert fake.requests[0].headers["prefer"] == "wait=1"
    polls = [r for r in fake.requests if r.method == "GET"]
    assert polls and all(r.path.startswith("/v1/predictions/") for r in polls)


def test_run_treats_processing_after_wait_as_final(client: replicate.Client, fake: FakeReplicate) -> None:
    """SDK quirk: only `starting` makes run() poll, so a still-`processing` prediction yields partial output."""
    fake.script(Reply(tokens=["a", "b", "c"], token_delay_s=0.6))
    assert client.run(MODEL, input={"prompt": "hi"}, wait=1) == ["a"]
    assert [r.method for r in fake.requests] == ["POST"]


def test_create_then_wait_reports_language_model_metrics(client: replicate.Client, fake: FakeReplicate) -> None:
    fake.script(Reply(tokens=["x"] * 5, cold_start_s=0.1, token_delay_s=0.02, input_tokens=7))
    prediction = client.models.predictions.create(model=MODEL, input={"prompt": "hi there"})
    assert prediction.status == "starting" and prediction.output is None and prediction.started_at is None
    assert prediction.urls is not None and prediction.urls["get"].startswith("http://127.0.0.1:")
    assert "stream" not in prediction.urls and "prefer" not in fake.requests[0].headers
    prediction.wait()
    assert prediction.status == "succeeded" and prediction.output == ["x"] * 5
    assert prediction.model == MODEL and len(prediction.version) == 64
    assert prediction.created_at and prediction.started_at and prediction.completed_at
    metrics = prediction.metrics or {}
    assert metrics["input_token_count"] == 7 and metrics["output_token_count"] == 5
    assert metrics["predict_time"] == pytest.approx(0.1, abs=0.03)
    assert metrics["total_time"] == pytest.approx(0.2, abs=0.03)
    assert metrics["time_to_first_token"] == pytest.approx(0.02)
    assert metrics["tokens_per_second"] > 0
    assert fake.predictions[prediction.id]["status"] == "succeeded"


def test_metrics_false_reports_times_only(client: replicate.Client, fake: FakeReplicate) -> None:
    fake.script(Reply(metrics=False))
    prediction = client.models.predictions.create(model=MODEL, input={"prompt": "hi"}, wait=True)
    assert prediction.status == "succeeded"
    assert set(prediction.metrics or {}) == {"predict_time", "total_time"}


def test_max_tokens_truncates_output(client: replicate.Client, fake: FakeReplicate) -> None:
    output = client.run(MODEL, input={"prompt": "one two three four", "max_tokens": 2})
    assert output == ["You", " said:"]
    [snapshot] = fake.predictions.values()
    assert snapshot["metrics"]["output_token_count"] == 2


def test_version_and_deployment_routes(client: replicate.Client, fake: FakeReplicate) -> None:
    version = "a" * 64
    by_version = client.predictions.create(version=version, input={"prompt": "v"}, wait=True)
    by_deployment = client.deployments.predictions.create("acme/llama-prod", input={"prompt": "d"}, wait=True)
    assert by_version.version == version and by_version.status == "succeeded"
    assert by_deployment.model == "acme/llama-prod" and by_deployment.output == default_tokens({"prompt": "d"})
    assert [r.path for r in fake.requests] == ["/v1/predictions", "/v1/deployments/acme/llama-prod/predictions"]
    assert fake.requests[0].json == {"input": {"prompt": "v"}, "version": version}


# --- cancel / failure ---------------------------------------------------------------------------


def test_cancel_a_prediction_still_starting(client: replicate.Client, fake: FakeReplicate) -> None:
    fake.script(Reply(cold_start_s=5))
    prediction = client.models.predictions.create(model=MODEL, input={"prompt": "hi"})
    assert prediction.status == "starting"
    canceled = client.predictions.cancel(prediction.id)
    assert canceled.status == "canceled" and canceled.output is None and canceled.completed_at
    assert fake.canceled_ids == [prediction.id] and fake.prediction_canceled.is_set()
    prediction.reload()
    assert prediction.status == "canceled" and prediction.started_at is None
    assert fake.predictions[prediction.id]["status"] == "canceled"


def test_failed_prediction_raises_model_error(client: replicate.Client, fake: FakeReplicate) -> None:
    fake.script(Fail(after_tokens=2))
    with pytest.raises(ModelError) as caught:
        client.run(MODEL, input={"prompt": "hi there friend"})
    assert str(caught.value) == DEFAULT_FAIL_ERROR
    assert caught.value.prediction.status == "failed"
    assert caught.value.prediction.output == ["You", " said:"]


# --- streaming ----------------------------------------------------------------------------------


def test_stream_yields_tokens_as_server_sent_events(client: replicate.Client, fake: FakeReplicate) -> None:
    tokens = ["Hello", ",", " world", "\nsecond line\nthird"]
    fake.script(Reply(tokens=tokens, token_delay_s=0.01))
    events = list(client.stream(MODEL, input={"prompt": "hi"}))
    assert [e.event for e in events] == [ServerSentEvent.EventType.OUTPUT] * 4 + [ServerSentEvent.EventType.DONE]
    assert [e.data for e in events[:-1]] == tokens
    assert "".join(str(e) for e in events) == "".join(tokens)
    assert events[-1].data == "{}"
    assert all(e.id.split(":")[1] == str(i) for i, e in enumerate(events))
    create, stream = fake.requests
    [prediction_id] = fake.predictions
    assert create.json == {"input": {"prompt": "hi"}, "stream": True}
    assert (stream.method, stream.path) == ("GET", f"/v1/stream/{prediction_id}")
    assert stream.headers["accept"] == "text/event-stream"


def test_stream_error_event_raises(client: replicate.Client, fake: FakeReplicate) -> None:
    fake.script(Fail(error="CUDA out of memory", after_tokens=2, token_delay_s=0.01))
    seen: list[str] = []
    with pytest.raises(RuntimeError) as caught:
        for event in client.stream(MODEL, input={"prompt": "hi"}):
            seen.append(str(event))
    assert seen == ["You", " said:"]
    assert json.loads(str(caught.value)) == {"detail": "CUDA out of memory"}


def test_each_event_is_flushed_separately(http: httpx.Client, fake: FakeReplicate) -> None:
    fake.script(Reply(tokens=["a", "b", "c"], token_delay_s=0.08))
    created = http.post(CREATE_PATH, json={"input": {"prompt": "hi"}, "stream": True}).json()
    with http.stream("GET", created["urls"]["stream"], headers={"Accept": "text/event-stream"}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = [chunk.decode() for chunk in response.iter_raw()]
    assert len(chunks) == 4 and all(c.endswith("\n\n") for c in chunks)
    assert chunks[0].startswith("event: output\nid: ") and chunks[0].endswith("\ndata: a\n\n")
    assert chunks[-1].startswith("event: done\n") and chunks[-1].endswith("data: {}\n\n")


def test_cancel_mid_stream_ends_with_done_canceled(http: httpx.Client, fake: FakeReplicate) -> None:
    fake.script(Reply(tokens=["t"] * 20, token_delay_s=0.05))
    created = http.post(CREATE_PATH, json={"input": {"prompt": "hi"}, "stream": True}).json()
    with http.stream("GET", created["urls"]["stream"]) as response:
        lines = response.iter_lines()
        assert next(lines) == "event: output"
        assert http.post(created["urls"]["cancel"]).json()["status"] == "canceled"
        rest = [line for line in lines if line]
    assert rest[-3] == "event: done" and rest[-1] == 'data: {"reason": "canceled"}'
    assert rest.count("event: output") < 19  # it stopped early
    assert fake.predictions[created["id"]]["status"] == "canceled" and not fake.stream_cancelled.is_set()


def test_client_dropping_the_stream_is_recorded(http: httpx.Client, fake: FakeReplicate) -> None:
    fake.script(Reply(tokens=["t"] * 50, token_delay_s=0.05))
    created = http.post(CREATE_PATH, json={"input": {"prompt": "hi"}, "stream": True}).json()
    with http.stream("GET", created["urls"]["stream"]) as response:
        assert next(response.iter_lines()) == "event: output"
    assert fake.stream_cancelled.wait(2)
    assert fake.predictions[created["id"]]["status"] == "processing"  # dropping a stream does not cancel


# --- errors and auth ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [THROTTLED, INSUFFICIENT_CREDIT, INVALID_INPUT, UNAUTHENTICATED, NOT_FOUND, UNAVAILABLE],
    ids=lambda e: str(e.status),
)
def test_http_errors_raise_replicate_error(client: replicate.Client, fake: FakeReplicate, error: HttpError) -> None:
    fake.script(error)
    with pytest.raises(ReplicateError) as caught:
        client.run(MODEL, input={"prompt": "hi"})
    assert (caught.value.status, caught.value.title, caught.value.detail) == (error.status, error.title, error.detail)
    assert len(fake.requests) == 1  # the SDK never retries the create POST


def test_error_bodies_and_headers_on_the_wire(http: httpx.Client, fake: FakeReplicate) -> None:
    fake.script(THROTTLED, INVALID_INPUT)
    throttled = http.post(CREATE_PATH, json={"input": {}})
    assert throttled.status_code == 429 and throttled.headers["retry-after"] == "1"
    assert throttled.json() == {"title": THROTTLED.title, "detail": THROTTLED.detail, "status": 429}
    invalid = http.post(CREATE_PATH, json={"input": {}}).json()
    assert invalid["invalid_fields"] == [{"type": "required", "field": "prompt", "description": "prompt is required"}]
    assert http.get("/v1/predictions/nope").status_code == 404


def test_bad_token_is_401(server: ServerThread, fake: FakeReplicate) -> None:
    bad = replicate.Client(api_token="r8_wrong", base_url=server.url)
    with pytest.raises(ReplicateError) as caught:
        bad.run(MODEL, input={"prompt": "hi"})
    assert (caught.value.status, caught.value.title) == (401, "Unauthenticated")
    assert caught.value.detail == "You did not pass a valid authentication token"
    legacy = httpx.post(server.url + CREATE_PATH, json={"input": {}}, headers={"Authorization": "Token r8_fake"})
    assert legacy.status_code == 201
    assert fake.predictions == {legacy.json()["id"]: legacy.json()}  # the rejected call made no prediction


# --- Prefer: wait on the wire -------------------------------------------------------------------


def test_prefer_wait_returns_non_terminal_when_cold(
    http: httpx.Client, fake: FakeReplicate, server: ServerThread
) -> None:
    fake.script(Reply(cold_start_s=3))
    started = time.monotonic()
    response = http.post(CREATE_PATH, json={"input": {"prompt": "hi"}}, headers={"Prefer": "wait=1"})
    assert 0.95 <= time.monotonic() - started < 2
    body = response.json()
    assert response.status_code == 201 and body["status"] == "starting" and body["output"] is None
    assert body["completed_at"] is None and "metrics" not in body and body["data_removed"] is False
    assert body["urls"]["get"] == f"{server.url}/v1/predictions/{body['id']}"  # absolute: the SDK follows it


def test_prefer_wait_returns_terminal_when_fast(http: httpx.Client, fake: FakeReplicate) -> None:
    fake.script(Reply(token_delay_s=0.05))
    started = time.monotonic()
    body = http.post(CREATE_PATH, json={"input": {"prompt": "be quick"}}, headers={"Prefer": "wait=1"}).json()
    assert time.monotonic() - started < 0.8
    assert body["status"] == "succeeded" and "".join(body["output"]) == "You said: be quick"
    assert body["metrics"]["output_token_count"] == 4


def test_hang_notices_the_client_leaving(http: httpx.Client, fake: FakeReplicate) -> None:
    fake.script(Hang(5))
    with pytest.raises(httpx.ReadTimeout):
        http.post(CREATE_PATH, json={"input": {}}, timeout=0.2)
    assert fake.client_gone.wait(2) and fake.predictions == {}
