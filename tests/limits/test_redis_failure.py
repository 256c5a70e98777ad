"""Redis going away and coming back: fail-open admits unchecked, fail-closed refuses with 503, nothing
crashes on settle, one log line per outage, and a silent Redis costs one short timeout, not many."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from gateway.limits import LimitExceeded, MemoryLimits, RedisLimits, build_limits
from tests.limits.conftest import make_caller
from tests.support.server import free_port


class RedisProcess:
    """A redis-server this test may stop and start again on the same port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run scripts/test, which installs it")
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = tempfile.mkdtemp(prefix="llmgw-limits-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.workdir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A port that accepts connections and never answers: a hung Redis, or a network that drops replies."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()


#: A stopped Redis refuses connections at once, so these tests need no short timeouts; long ones keep a busy
#: test machine from looking like an outage.
PATIENT = {"socket_timeout_s": 5.0, "connect_timeout_s": 5.0}


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "llm_gateway.limits"]


async def test_fail_open_admits_while_redis_is_down_and_recovers(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llm_gateway.limits")
    limits = RedisLimits(own_redis.url, probe_interval_s=0, **PATIENT)
    caller = make_caller("open-tenant", budgets={"daily_usd": 1.0}, rate_limits={"rpm": 100, "tpm": 10_000})
    try:
        before = await limits.admit(caller, None, 0.1, 10)
        assert not before.degraded and before.headers()
        own_redis.stop()

        during = [await limits.admit(caller, None, 0.1, 10) for _ in range(3)]
        assert all(admission.degraded for admission in during)
        assert during[0].headers() == {}  # nothing was checked, so nothing to report
        await limits.settle(before, 0.1, 10)  # settling while Redis is down must not raise
        await limits.settle(during[0], 0.1, 10)
        assert limits.redis_failures == 5
        assert len(outage_lines(caplog)) == 1 and "unreachable" in outage_lines(caplog)[0]

        own_redis.start()  # empty: scripts must be loaded again (NOSCRIPT), counters start over
        after = await limits.admit(caller, None, 0.1, 10)
        assert not after.degraded
        assert after.headers()["x-ratelimit-remaining-requests"] == "99"
        await limits.settle(during[1], 0.25, 10)  # a degraded admission charges its actual afresh
        await limits.settle(after, 0.1, 10)
        assert "reachable again" in outage_lines(caplog)[-1]
        assert len(outage_lines(caplog)) == 2
        # $0.25 (degraded, charged on settle) + $0.10 spent: $0.70 is left.
        await limits.admit(caller, None, 0.65, 10)
        with pytest.raises(LimitExceeded):
            await limits.admit(caller, None, 0.06, 10)
    finally:
        await limits.aclose()


async def test_fail_closed_refuses_with_503_and_recovers(own_redis: RedisProcess) -> None:
    limits = RedisLimits(own_redis.url, probe_interval_s=0, **PATIENT)
    closed = make_caller("closed-tenant", rate_limits={"rpm": 100}, on_redis_failure="closed")
    opened = make_caller("open-tenant", rate_limits={"rpm": 100}, on_redis_failure="open")
    try:
        await limits.admit(closed, None, 0, 1)
        own_redis.stop()
        with pytest.raises(LimitExceeded) as caught:
            await limits.admit(closed, None, 0, 1)
        error = caught.value
        assert (error.status, error.code) == (503, "limits_unavailable")
        assert "closed-tenant" in error.message and error.retry_after_s > 0
        assert (await limits.admit(opened, None, 0, 1)).degraded  # the policy is per tenant
        own_redis.start()
        assert not (await limits.admit(closed, None, 0, 1)).degraded
    finally:
        await limits.aclose()


async def test_nothing_listening_fails_fast() -> None:
    limits = build_limits(f"redis://127.0.0.1:{free_port()}/0")
    assert isinstance(limits, RedisLimits)
    caller = make_caller("t", budgets={"daily_usd": 1.0}, rate_limits={"rpm": 5})
    try:
        started = time.monotonic()
        admission = await limits.admit(caller, None, 0.1, 10)
        assert admission.degraded
        await limits.settle(admission, 0.1, 10)
        assert time.monotonic() - started < 0.5
    finally:
        await limits.aclose()


async def test_a_silent_redis_costs_one_short_timeout_then_is_skipped(silent_port: int) -> None:
    limits = RedisLimits(f"redis://127.0.0.1:{silent_port}/0", socket_timeout_s=0.3, probe_interval_s=5)
    caller = make_caller("t", rate_limits={"rpm": 5}, on_redis_failure="closed")
    try:
        started = time.monotonic()
        with pytest.raises(LimitExceeded) as caught:
            await limits.admit(caller, None, 0, 1)
        assert caught.value.status == 503
        assert 0.25 < time.monotonic() - started < 1.0
        started = time.monotonic()
        for _ in range(20):  # within the probe interval nobody waits on the dead connection again
            with pytest.raises(LimitExceeded):
                await limits.admit(caller, None, 0, 1)
        assert time.monotonic() - started < 0.1
        assert limits.redis_failures == 21
    finally:
        await limits.aclose()


async def test_a_burst_beyond_the_pool_queues_instead_of_failing(redis_url: str) -> None:
    """More concurrent requests than connections is load, not an outage: all are checked, none fail open."""
    limits = RedisLimits(redis_url, max_connections=2, **PATIENT)
    caller = make_caller("burst", budgets={"daily_usd": 1.0}, rate_limits={"rpm": 150})

    async def one() -> bool:
        try:
            admission = await limits.admit(caller, None, 0.001, 1)
        except LimitExceeded:
            return False
        assert not admission.degraded
        await limits.settle(admission, 0.001, 1)
        return True

    try:
        assert sum(await asyncio.gather(*(one() for _ in range(300)))) == 150
        assert limits.redis_failures == 0
    finally:
        await limits.aclose()


async def test_a_pool_taken_past_the_queue_timeout_is_handled_like_an_outage(silent_port: int) -> None:
    limits = RedisLimits(
        f"redis://127.0.0.1:{silent_port}/0", max_connections=1, socket_timeout_s=2.0, queue_timeout_s=0.1
    )
    caller = make_caller("t", rate_limits={"rpm": 5}, on_redis_failure="closed")
    try:
        stuck = asyncio.create_task(limits.admit(caller, None, 0, 1))  # holds the only connection for 2 s
        await asyncio.sleep(0.05)
        with pytest.raises(LimitExceeded) as caught:
            await limits.admit(caller, None, 0, 1)
        assert caught.value.status == 503
        stuck.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await stuck
    finally:
        await limits.aclose()


async def test_callers_without_limits_never_touch_redis() -> None:
    limits = build_limits(f"redis://127.0.0.1:{free_port()}/0")
    try:
        for caller in (make_caller("no-limits"), make_caller("anon-like", teams={"a": {}})):
            admission = await limits.admit(caller, "a", 1.0, 10)
            await limits.settle(admission, 1.0, 10)
        assert limits.redis_failures == 0
    finally:
        await limits.aclose()


def test_without_a_url_limits_are_held_in_memory() -> None:
    assert isinstance(build_limits(None), MemoryLimits)
    assert isinstance(build_limits(""), MemoryLimits)
