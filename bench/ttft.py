"""Latency client for bench/run: one URL, one mode, JSON on stdout. Times are milliseconds.

  ttft.py seq    URL [--model M] [-n 300]            one request at a time: p50/p90/p99
  ttft.py stream URL [--model M] [-n 200]            one streamed request at a time: time to first
                                                     content chunk and total time, p50/p90/p99
  ttft.py rate   URL [--model M] --rps R [-d 10]     open loop at a fixed rate: each latency counts from
                                                     the request's scheduled start, so a slow server
                                                     cannot slow the client down and hide its own delay
  ttft.py first-ok URL --since-file F [--model M]    poll until the first 200 (for --wait seconds, 90);
                                                     ms since the time in F (nanoseconds, `date +%s%N`,
                                                     written at the spawn)

URL is the base (http://host:port); requests go to URL/v1/chat/completions. A warm-up of a few
requests precedes seq, stream and rate and is not counted. `--header "Name: value"` (repeatable) adds
a header to every request (a peer that routes on headers needs them)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import uvloop


def body(model: str, stream: bool) -> bytes:
    request = {"model": model, "messages": [{"role": "user", "content": "Say hello in five words."}]}
    if stream:
        request["stream"] = True
    return orjson.dumps(request)


HEADERS = {"content-type": "application/json", "authorization": "Bearer bench"}


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731 (nearest rank)
    return {
        "n": len(ordered),
        "p50": round(pick(0.50), 3),
        "p90": round(pick(0.90), 3),
        "p99": round(pick(0.99), 3),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


async def one(session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict[str, str]) -> float:
    start = time.perf_counter()
    async with session.post(url, data=payload, headers=headers) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    return (time.perf_counter() - start) * 1000


async def sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The data of each SSE `data:` line as it arrives, `[DONE]` included."""
    async for line in response.content:  # one SSE line at a time
        if line.startswith(b"data: "):
            yield line[6:].strip()


def has_content(data: bytes) -> bool:
    """Whether a chunk carries answer text (the first such chunk is the time to first token)."""
    choices = orjson.loads(data).get("choices") or []
    return bool(choices and (choices[0].get("delta") or {}).get("content"))


async def one_stream(
    session: aiohttp.ClientSession, url: str, payload: bytes, headers: dict[str, str]
) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    async with session.post(url, data=payload, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {await response.text()}")
        done = False
        async for data in sse_data(response):
            if data == b"[DONE]":
                done = True
                continue
            if first is None and has_content(data):
                first = time.perf_counter()
        if not done or first is None:
            raise RuntimeError("stream ended without content or [DONE]")
    end = time.perf_counter()
    return (first - start) * 1000, (end - start) * 1000


async def run(args: argparse.Namespace) -> dict:
    url = args.url.rstrip("/") + "/v1/chat/completions"
    headers = {**HEADERS, **args.headers}
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        if args.mode == "first-ok":
            deadline = time.monotonic() + args.wait
            while time.monotonic() < deadline:
                try:
                    await one(session, url, body(args.model, False), headers)
                    now = time.time_ns()
                    since = int(Path(args.since_file).read_text())  # noqa: ASYNC240 (once, at the end)
                    return {"startup_ms": round((now - since) / 1e6, 1)}
                except (aiohttp.ClientError, RuntimeError, OSError):
                    await asyncio.sleep(0.005)
            raise SystemExit(f"no 200 within {args.wait:g} s")
        streamed = args.mode == "stream"
        payload = body(args.model, streamed)
        for _ in range(20):
            await (one_stream if streamed else one)(session, url, payload, headers)
        if args.mode == "seq":
            return {"latency_ms": percentiles([await one(session, url, payload, headers) for _ in range(args.n)])}
        if args.mode == "stream":
            samples = [await one_stream(session, url, payload, headers) for _ in range(args.n)]
            return {
                "ttft_ms": percentiles([ttft for ttft, _ in samples]),
                "total_ms": percentiles([total for _, total in samples]),
            }
        # rate: open loop
        count = int(args.rps * args.duration)
        interval = 1 / args.rps
        latencies: list[float] = []
        errors = 0
        late = 0

        async def fire(scheduled: float) -> None:
            nonlocal errors
            try:
                async with session.post(url, data=payload, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
                        return
                latencies.append((time.perf_counter() - scheduled) * 1000)
            except (aiohttp.ClientError, OSError, TimeoutError):
                errors += 1

        tasks = []
        start = time.perf_counter() + 0.01
        for i in range(count):
            scheduled = start + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.005:
                late += 1  # the client itself fell behind the schedule by >5 ms
            tasks.append(asyncio.ensure_future(fire(scheduled)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        return {
            "rate": {
                "target_rps": args.rps,
                "achieved_rps": round(len(latencies) / elapsed, 1),
                "errors": errors,
                "client_late": late,
            },
            "latency_ms": percentiles(latencies),
        }


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise SystemExit(f"--header wants 'Name: value', not {text!r}")
    return name.strip().lower(), value.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["seq", "stream", "rate", "first-ok"])
    parser.add_argument("url")
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--rps", type=float, default=100)
    parser.add_argument("-d", "--duration", type=float, default=10)
    parser.add_argument("--connections", type=int, default=512, help="client pool limit (rate mode)")
    parser.add_argument("--since-file", default="")
    parser.add_argument("--wait", type=float, default=90, help="first-ok: give up after this many seconds")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'", help="repeatable")
    args = parser.parse_args()
    args.headers = dict(parse_header(text) for text in args.header)
    if args.mode != "rate":
        args.connections = 1
    sys.stdout.write(orjson.dumps(uvloop.run(run(args))).decode() + "\n")


if __name__ == "__main__":
    main()
