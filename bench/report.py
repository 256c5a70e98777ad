"""Turns the measurements bench/run left in a directory into one table, printed and appended to
bench/RESULTS.md with the command, date, commit, versions and machine.

  report.py DIR COMMAND-LINE

DIR holds one JSON file per measurement, named <what>.<target>.json, target direct | gateway | mock."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def load(directory: Path) -> dict[str, dict]:
    return {path.name[: -len(".json")]: orjson.loads(path.read_bytes()) for path in directory.glob("*.json")}


def get(data: dict, key: str, *path: str) -> float | None:
    value = data.get(key)
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "req/s":
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:.1f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


def rows(data: dict) -> list[tuple[str, str, float | None, float | None, str]]:
    """(metric, unit, direct, gateway, comparison kind: ratio | diff)"""

    def row(label: str, unit: str, source: str, *path: str, kind: str = "diff") -> tuple:
        """One metric read from the same place in the direct and the gateway measurement."""
        return (label, unit, get(data, f"{source}.direct", *path), get(data, f"{source}.gateway", *path), kind)

    out = []
    for connections in (32, 128):
        source = f"wrk{connections}"
        out.append(row(f"throughput, {connections} connections", "req/s", source, "rps", kind="ratio"))
        out += [row(f"  latency {q} under that load", "ms", source, q) for q in ("p50", "p99")]
    out += [row(f"one at a time, latency {q}", "ms", "seq", "latency_ms", q) for q in ("p50", "p90", "p99")]
    target = get(data, "rate.gateway", "rate", "target_rps")
    label = f"fixed rate {target or 0:.0f} req/s, latency"
    out += [row(f"{label} {q}", "ms", "rate", "latency_ms", q) for q in ("p50", "p90", "p99")]
    out += [row(f"streaming, time to first token {q}", "ms", "stream", "ttft_ms", q) for q in ("p50", "p99")]
    out += [row(f"streaming, total time {q}", "ms", "stream", "total_ms", q) for q in ("p50", "p99")]
    out.append(row("RSS after start + 1 request", "MiB", "rss", "idle_mib"))
    out.append(row("RSS after the run", "MiB", "rss", "after_mib"))
    out.append(row("start-up: spawn to first 200", "ms", "startup", "startup_ms"))
    return out


def compare(direct: float | None, gateway: float | None, kind: str, unit: str) -> str:
    if direct is None or gateway is None:
        return "-"
    if kind == "ratio":
        return f"x{gateway / direct:.3f}" if direct else "-"
    return f"{gateway - direct:+.2f} {unit}" if unit != "MiB" else f"{gateway - direct:+.1f} MiB"


def table(data: dict) -> str:
    header = ("metric", "unit", "direct", "gateway", "gateway vs direct")
    lines = [header]
    for metric, unit, direct, gateway, kind in rows(data):
        lines.append((metric, unit, fmt(direct, unit), fmt(gateway, unit), compare(direct, gateway, kind, unit)))
    for connections in (32, 128):
        rps = get(data, f"wrk{connections}.mock", "rps")
        if rps is not None:
            lines.append((f"mock provider, no upstream, {connections} conn.", "req/s", "-", fmt(rps, "req/s"), "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = []
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])] + [
            cell.rjust(w) for cell, w in zip(line[2:], widths[2:], strict=True)
        ]
        text.append("| " + " | ".join(cells) + " |")
        if n == 0:
            text.append(
                "|" + "|".join("-" * (w + 2) if i < 2 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|"
            )
    return "\n".join(text)


def notes(data: dict) -> list[str]:
    out = []
    for name in sorted(data):
        errors = data[name].get("errors") or get(data, name, "rate", "errors")
        if errors:
            out.append(f"- {name}: {errors} failed requests")
        late = get(data, name, "rate", "client_late")
        if late:
            out.append(f"- {name}: the client fell >5 ms behind schedule {late} times (its own core was busy)")
        achieved, target = get(data, name, "rate", "achieved_rps"), get(data, name, "rate", "target_rps")
        if achieved and target and achieved < 0.95 * target:
            out.append(f"- {name}: achieved {achieved} of {target} req/s")
    return out


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> list[str]:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
    ).stdout.strip()
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    return [
        f"- commit: `{commit or 'unknown'}`{' (with uncommitted changes)' if dirty else ''}",
        f"- python {platform.python_version()}, uvicorn {version('uvicorn')}, httpx {version('httpx')}, "
        f"aiohttp {version('aiohttp')}, uvloop {version('uvloop')}, httptools {version('httptools')}; "
        f"{wrk[0].split(' [')[0] if wrk else 'wrk ?'}",
        f"- machine: {os.cpu_count()} cores (`nproc`: {len(os.sched_getaffinity(0))}), {cpu}; {platform.platform()}",
    ]


def main() -> None:
    directory, command = Path(sys.argv[1]), sys.argv[2]
    data = load(directory)
    text = table(data)
    print(text)
    extra = notes(data)
    if extra:
        print("\n".join(extra))
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    settings = data.get("settings", {})
    section = [
        f"## {when}: `{command}`",
        "",
        *environment(),
        f"- profile: `bench/profiles/{settings.get('profile', '?')}.yaml`; {settings.get('seconds', '?')} s per wrk "
        f"measurement; streaming upstream: {settings.get('stream_chunks', '?')} chunks, "
        f"{settings.get('stream_delay_ms', '?')} ms apart",
        "",
        text,
        "",
        *extra,
        *([""] if extra else []),
    ]
    results = ROOT / "bench" / "RESULTS.md"
    if not results.exists():
        results.write_text(HEADER)
    with results.open("a") as handle:
        handle.write("\n".join(section) + "\n")
    print(f"\nappended to {results.relative_to(ROOT)}")


HEADER = """# Benchmark results

Appended by `bench/run` (newest last). Each run measures the direct call (client → `bench/fixed_upstream.py`)
and the gateway (client → gateway → the same upstream) seconds apart on the same machine: read the
ratios and differences, not the absolute numbers. See the end of `bench/run` for what each row is.

TODO (out of scope so far): the same rows for peers (LiteLLM proxy, Portkey gateway) in front of the same
upstream, each pinned to core 0 like the gateway.

"""

if __name__ == "__main__":
    main()
