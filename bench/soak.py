"""Soak: the gateway under constant open-loop load for a long time, its memory sampled as it goes, to
show whether memory levels off once warm. Run through bench/soak; it pins itself to core 1.

  bench/soak [--profile openai-only] [--rps 500] [--minutes 30 | --requests N] [--every 5]
             [--stream-fraction 0.2] [--cancel-fraction 0.05] [--warmup-fraction 0.2]
             [--workers 1] [--csv PATH] [--no-record]

The upstream (bench/fixed_upstream.py) and this driver share core 1; the gateway gets core 0. The
profile defaults to openai-only (no tokenizer tables: see bench/profiles/openai-only.yaml). Requests
are scheduled at a fixed rate whatever the gateway does (open loop), each drawn at random (seeded):
--cancel-fraction are streamed and dropped by the client after the first content chunk (the connection
is closed under the gateway), --stream-fraction (which includes those) are streamed, the rest are
plain completions. It stops after --minutes, or after --requests requests when that is given.

Every --every seconds it samples the RSS and PSS of the gateway and the processes under it
(bench/procmem.py) with the requests done so far, into a CSV (default bench/.soak/<time>.csv). At the
end it prints, and appends to bench/RESULTS.md unless --no-record: PSS idle (after start and one
request), at the end of warm-up (the first --warmup-fraction of the run), at the end of the load, its
maximum, and a few seconds after the load; and the least-squares slope of PSS over the samples after
warm-up, in MiB per hour and per 100,000 requests, with its standard error. The samples are not
independent (memory moves in steps), so the standard error is optimistic: the verdict calls a trend
upward only when the slope is above twice its standard error and the fitted growth over the window
is at least 1 MiB, and says when the gateway did not keep up (errors, or more than a second's worth of
requests in flight after warm-up), since queued requests hold memory too. The driver's own lag is
reported (achieved rate, requests sent >5 ms late, its CPU use) so that a run where the client could
not keep up is visible as such."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime
import math
import os
import random
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procmem import tree_memory  # sibling scripts, not a package
from report import ROOT, environment
from ttft import HEADERS, has_content, percentiles, sse_data

PLAIN, STREAM, CANCEL = "plain", "stream", "cancel"


@dataclass
class Counters:
    sent: int = 0
    done: int = 0
    errors: int = 0
    late: int = 0
    worst_lag_ms: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    kinds: dict[str, int] = field(default_factory=lambda: {PLAIN: 0, STREAM: 0, CANCEL: 0})
    error_kinds: dict[str, int] = field(default_factory=dict)
    interval_latency: list[float] = field(default_factory=list)  # plain requests since the last sample
    latency: list[float] = field(default_factory=list)  # plain requests, from the scheduled start
    ttft: list[float] = field(default_factory=list)  # streamed requests, first content chunk


def pick_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def body(stream: bool) -> bytes:
    request: dict = {"model": "bench-model", "messages": [{"role": "user", "content": "Say hello in five words."}]}
    if stream:
        request["stream"] = True
    return orjson.dumps(request)


PAYLOADS = {PLAIN: body(False), STREAM: body(True), CANCEL: body(True)}


async def request(session: aiohttp.ClientSession, url: str, kind: str, scheduled: float, counters: Counters) -> None:
    counters.in_flight += 1
    counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
    try:
        async with session.post(url, data=PAYLOADS[kind], headers=HEADERS) as response:
            if response.status != 200:
                await response.read()
                raise RuntimeError(f"HTTP {response.status}")
            if kind == PLAIN:
                await response.read()
                elapsed = (time.perf_counter() - scheduled) * 1000
                counters.latency.append(elapsed)
                counters.interval_latency.append(elapsed)
            else:
                first = done = False
                async for data in sse_data(response):
                    if data == b"[DONE]":
                        done = True
                        continue
                    if not first and has_content(data):
                        first = True
                        counters.ttft.append((time.perf_counter() - scheduled) * 1000)
                        if kind == CANCEL:
                            response.close()  # drop the connection mid-stream, as a client that goes away
                            break
                if not first or (kind == STREAM and not done):
                    raise RuntimeError("stream ended early")
        counters.done += 1
        counters.kinds[kind] += 1
    except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as error:
        counters.errors += 1
        name = str(error) if isinstance(error, RuntimeError) else type(error).__name__
        counters.error_kinds[name] = counters.error_kinds.get(name, 0) + 1
    finally:
        counters.in_flight -= 1


async def drive(args: argparse.Namespace, url: str, counters: Counters, stop: asyncio.Event) -> float:
    """Send requests on schedule until the time or the count is up; returns the seconds it took."""
    draw = random.Random(1)
    interval = 1 / args.rps
    total = args.requests or math.inf
    deadline = args.minutes * 60 if not args.requests else math.inf
    connector = aiohttp.TCPConnector(limit=args.connections)
    tasks: set[asyncio.Task] = set()
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        start = time.perf_counter() + 0.01
        while counters.sent < total and not stop.is_set():
            now = time.perf_counter()
            scheduled = start + counters.sent * interval
            if scheduled - start >= deadline:
                break
            if scheduled > now:
                await asyncio.sleep(scheduled - now)
                continue
            while counters.sent < total and scheduled <= now:  # everything that is due, even if late
                lag = (now - scheduled) * 1000
                if lag > 5:
                    counters.late += 1
                counters.worst_lag_ms = max(counters.worst_lag_ms, lag)
                u = draw.random()
                kind = CANCEL if u < args.cancel_fraction else STREAM if u < args.stream_fraction else PLAIN
                task = asyncio.create_task(request(session, url, kind, scheduled, counters))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                counters.sent += 1
                scheduled = start + counters.sent * interval
        elapsed = time.perf_counter() - start
        if tasks:
            await asyncio.wait(tasks)
    return elapsed


FIELDS = [
    "elapsed_s", "requests_done", "errors", "in_flight", "interval_rps", "plain_p50_ms", "plain_p99_ms",
    "rss_mib", "pss_mib", "processes", "largest_pss_mib",
]  # fmt: skip


async def sample_loop(
    args: argparse.Namespace, pid: int, counters: Counters, samples: list[dict], t0: float, stop: asyncio.Event
) -> None:
    """Every --every seconds until stop: the gateway's memory and the load so far, to the CSV as it goes."""
    handle = args.csv.open("w", newline="")
    writer = csv.DictWriter(handle, fieldnames=FIELDS)
    writer.writeheader()
    last_done, last_t = 0, t0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.every)
        now = time.perf_counter()
        memory = await asyncio.to_thread(tree_memory, pid)
        latency = percentiles(counters.interval_latency)
        counters.interval_latency = []
        sample = {
            "elapsed_s": round(now - t0, 2),
            "requests_done": counters.done,
            "errors": counters.errors,
            "in_flight": counters.in_flight,
            "interval_rps": round((counters.done - last_done) / (now - last_t), 1),
            "plain_p50_ms": latency.get("p50", ""),
            "plain_p99_ms": latency.get("p99", ""),
            "rss_mib": memory["rss_mib"],
            "pss_mib": memory["pss_mib"],
            "processes": memory["processes"],
            "largest_pss_mib": memory["largest_pss_mib"],
        }
        last_done, last_t = counters.done, now
        samples.append(sample)
        writer.writerow(sample)
        handle.flush()
        print(
            f"{sample['elapsed_s']:8.0f} s {sample['requests_done']:>9,} done {sample['errors']:>5} errors "
            f"{sample['interval_rps']:>7.0f} req/s  PSS {sample['pss_mib']:6.1f} MiB  RSS {sample['rss_mib']:6.1f} MiB",
            file=sys.stderr,
        )
    handle.close()


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope of ys on xs and its standard error."""
    n = len(xs)
    if n < 3:
        return math.nan, math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return math.nan, math.nan
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    residual = sum((y - my - slope * (x - mx)) ** 2 for x, y in zip(xs, ys, strict=True))
    return slope, math.sqrt(residual / (n - 2) / sxx)


async def wait_ready(url: str, process: subprocess.Popen, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                async with session.post(url, data=PAYLOADS[PLAIN], headers=HEADERS) as response:
                    await response.read()
                    if response.status == 200:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.05)
    raise SystemExit(f"no 200 from {url} (see the logs beside the CSV: {process.args[3]} ...)")


def spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with log.open("wb") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})


def stop_process(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def soak(args: argparse.Namespace) -> dict:
    os.environ.setdefault("BENCH_STREAM_CHUNKS", "10")
    os.environ.setdefault("BENCH_STREAM_DELAY_MS", "2")
    venv = ROOT / ".venv" / "bin"
    logs = args.csv.parent
    upstream_port, gateway_port = pick_port(), pick_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    gateway_url = f"http://127.0.0.1:{gateway_port}/v1/chat/completions"
    # fmt: off
    upstream_process = spawn(
        ["taskset", "-c", "1", str(venv / "uvicorn"), "--app-dir", str(ROOT / "bench"), "fixed_upstream:app",
         "--port", str(upstream_port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
         "--no-access-log"],
        logs / f"{args.csv.stem}.upstream.log",
    )
    gateway_process = spawn(
        ["taskset", "-c", "0", str(venv / "llm-gateway"), "serve", "--config", str(args.config), "--port",
         str(gateway_port), "--workers", str(args.workers), "--log-level", "warning"],
        logs / f"{args.csv.stem}.gateway.log",
        {"BENCH_UPSTREAM": upstream},
    )
    # fmt: on
    try:
        await wait_ready(f"{upstream}/v1/chat/completions", upstream_process)
        await wait_ready(gateway_url, gateway_process)
        idle = tree_memory(gateway_process.pid)
        print(
            f"gateway pid {gateway_process.pid}: idle PSS {idle['pss_mib']} MiB, RSS {idle['rss_mib']} MiB",
            file=sys.stderr,
        )
        counters = Counters()
        samples: list[dict] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            sample_loop(args, gateway_process.pid, counters, samples, time.perf_counter(), stop)
        )
        cpu_before = time.process_time()
        elapsed = await drive(args, gateway_url, counters, stop)
        driver_cpu = (time.process_time() - cpu_before) / elapsed
        stop.set()
        await sampler
        if gateway_process.poll() is not None:
            raise SystemExit(f"the gateway exited during the soak (code {gateway_process.returncode})")
        await asyncio.sleep(args.every)
        after = tree_memory(gateway_process.pid)
    finally:
        stop_process(gateway_process)
        stop_process(upstream_process)
    return {
        "idle": idle,
        "after": after,
        "samples": samples,
        "counters": counters,
        "elapsed": elapsed,
        "driver_cpu": driver_cpu,
    }


def signed(value: float) -> str:
    return f"{round(value, 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"


def spread(latency: dict[str, float]) -> str:
    return f"p50 {latency['p50']:.2f} ms, p99 {latency['p99']:.2f} ms" if latency.get("n") else "-"


def summarize(args: argparse.Namespace, result: dict) -> tuple[list[str], str]:
    samples, counters = result["samples"], result["counters"]
    if len(samples) < 4:
        raise SystemExit("too few samples: run longer, or sample more often (--every)")
    duration = samples[-1]["elapsed_s"]
    cutoff = duration * args.warmup_fraction
    warm = [sample for sample in samples if sample["elapsed_s"] >= cutoff]
    hours = [sample["elapsed_s"] / 3600 for sample in warm]
    pss = [sample["pss_mib"] for sample in warm]
    per_hour, per_hour_se = fit(hours, pss)
    per_request, per_request_se = fit([float(sample["requests_done"]) for sample in warm], pss)
    growth = per_hour * (hours[-1] - hours[0]) if not math.isnan(per_hour) else math.nan
    if math.isnan(per_hour):
        verdict = "no verdict (too few samples after warm-up)"
    elif per_hour > 2 * per_hour_se and growth >= 1:
        verdict = f"UPWARD TREND: {growth:+.1f} MiB fitted over the window, slope above twice its standard error"
    elif per_hour > 2 * per_hour_se:
        verdict = f"flat: the slope is above twice its standard error but the fitted growth is {growth:+.2f} MiB"
    else:
        verdict = f"flat: the slope is within twice its standard error ({signed(growth)} MiB fitted over the window)"
    backlog = max(sample["in_flight"] for sample in warm)
    if counters.errors or backlog > args.rps:  # more than a second's worth of requests waiting
        verdict += (
            f". BUT the gateway did not keep up (up to {backlog} requests in flight after warm-up, "
            f"{counters.errors} errors): memory then holds queued requests, so this run says little about a trend"
        )
    idle, after = result["idle"], result["after"]
    first_warm, last = warm[0], samples[-1]
    peak = max(samples, key=lambda sample: sample["pss_mib"])
    latency, ttft = percentiles(counters.latency), percentiles(counters.ttft)
    achieved = counters.sent / result["elapsed"] if result["elapsed"] else 0
    errors = ", ".join(f"{name}: {n}" for name, n in sorted(counters.error_kinds.items()))
    errors = f" ({errors})" if errors else ""
    lines = [
        f"- profile `{args.config.relative_to(ROOT)}`, {args.workers} worker(s); {args.rps:g} req/s offered, "
        f"{args.stream_fraction:.0%} streamed of which {args.cancel_fraction:.0%} of all requests dropped after "
        f"the first chunk; samples every {args.every:g} s, the first {args.warmup_fraction:.0%} of the run "
        "taken as warm-up",
        f"- {counters.sent:,} requests in {duration / 60:.1f} min; sent at {achieved:.1f} req/s, "
        f"{counters.late} sent >5 ms late (worst {counters.worst_lag_ms:.0f} ms), at most {counters.max_in_flight} "
        f"in flight; {counters.done:,} answered ({counters.kinds[PLAIN]:,} plain, "
        f"{counters.kinds[STREAM]:,} streamed, {counters.kinds[CANCEL]:,} dropped mid-stream), "
        f"{counters.errors} errors{errors}",
        f"- latency from the scheduled start: plain {spread(latency)}; streamed, first content chunk "
        f"{spread(ttft)}; the driver used {result['driver_cpu']:.0%} of its core",
        "",
        "| gateway memory | requests done | RSS | PSS |",
        "|---|--:|--:|--:|",
        f"| idle (after start and one request) | 1 | {idle['rss_mib']:.1f} MiB | {idle['pss_mib']:.1f} MiB |",
        f"| end of warm-up ({first_warm['elapsed_s']:.0f} s) | {first_warm['requests_done']:,} | "
        f"{first_warm['rss_mib']:.1f} MiB | {first_warm['pss_mib']:.1f} MiB |",
        f"| end of the load ({last['elapsed_s']:.0f} s) | {last['requests_done']:,} | {last['rss_mib']:.1f} MiB | "
        f"{last['pss_mib']:.1f} MiB |",
        f"| maximum PSS ({peak['elapsed_s']:.0f} s) | {peak['requests_done']:,} | {peak['rss_mib']:.1f} MiB | "
        f"{peak['pss_mib']:.1f} MiB |",
        f"| {args.every:g} s after the load | {counters.done:,} | {after['rss_mib']:.1f} MiB | "
        f"{after['pss_mib']:.1f} MiB |",
        "",
        f"- PSS after warm-up ({len(warm)} samples): slope {signed(per_hour)} ± {per_hour_se:.2f} MiB/hour, "
        f"{signed(per_request * 1e5)} ± {per_request_se * 1e5:.2f} MiB per 100,000 requests; {verdict}",
    ]
    if last["processes"] > 1:
        lines.append(
            f"- {last['processes']} processes; PSS is their sum (the largest one at the end of the load: "
            f"{last['largest_pss_mib']:.1f} MiB)"
        )
    return lines, verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="openai-only", help="bench/profiles/NAME.yaml (default openai-only)")
    parser.add_argument("--rps", type=float, default=500, help="requests per second offered (default 500)")
    parser.add_argument("--minutes", type=float, default=30, help="how long (default 30)")
    parser.add_argument("--requests", type=int, default=0, help="stop after this many requests instead")
    parser.add_argument("--every", type=float, default=5, help="seconds between memory samples (default 5)")
    parser.add_argument("--stream-fraction", type=float, default=0.2, help="share of streamed requests (0.2)")
    parser.add_argument("--cancel-fraction", type=float, default=0.05, help="share dropped mid-stream (0.05)")
    parser.add_argument("--warmup-fraction", type=float, default=0.2, help="share of the run left out of the fit")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--connections", type=int, default=1024, help="client connection pool limit")
    parser.add_argument("--csv", type=Path, help="where the samples go (default bench/.soak/<time>.csv)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()
    if not 0 <= args.cancel_fraction <= args.stream_fraction <= 1:
        parser.error("want 0 <= --cancel-fraction <= --stream-fraction <= 1")
    args.config = ROOT / "bench" / "profiles" / f"{args.profile}.yaml"
    if not args.config.exists():
        parser.error(f"no profile {args.config}")
    when = datetime.datetime.now(datetime.UTC)
    if args.csv is None:
        args.csv = ROOT / "bench" / ".soak" / f"{when.strftime('%Y%m%d-%H%M%S')}.csv"
    args.csv = args.csv.resolve()
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    command = "bench/soak" + "".join(f" {arg}" for arg in sys.argv[1:])
    cpus = len(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {1})  # the driver shares core 1 with the upstream; the gateway has core 0
    result = uvloop.run(soak(args))
    lines, _ = summarize(args, result)
    print("\n".join(lines))
    print(f"\nsamples: {args.csv}")
    if not args.no_record:
        section = [
            f"## {when.strftime('%Y-%m-%d %H:%M UTC')}: `{command}`",
            "",
            *environment([], cpus),
            *lines,
            f"- samples: `{args.csv.relative_to(ROOT) if args.csv.is_relative_to(ROOT) else args.csv}` "
            "(not kept in the repository)",
            "",
        ]
        with (ROOT / "bench" / "RESULTS.md").open("a") as handle:
            handle.write("\n".join(section) + "\n")
        print("appended to bench/RESULTS.md")


if __name__ == "__main__":
    main()
