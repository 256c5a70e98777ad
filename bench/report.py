"""Turns the measurements bench/run left in a directory into one table, printed and appended to
bench/RESULTS.md with the command, date, commit, versions and machine.

  report.py DIR COMMAND-LINE

DIR holds one JSON file per measurement, named <what>.<target>.json, target direct | gateway | mock |
litellm | portkey | direct-at-<peer> (the direct call at a peer's fixed rate)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Callable
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
    if unit in ("req/s", "req"):
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:.1f}"
    return f"{value:.2f}" if value < 100 else f"{value:.0f}"


PEERS = ("litellm", "portkey")


def targets(data: dict) -> list[str]:
    """The columns: the direct call, the gateway, then each peer measured in this run."""
    return ["direct", "gateway", *(peer for peer in PEERS if f"wrk32.{peer}" in data)]


Value = Callable[[str], "float | None"]


def rows(data: dict) -> list[tuple[str, str, Value, str]]:
    """(metric, unit, value of a target, comparison kind). Kinds: ratio and diff compare the gateway with
    every other column; count and none compare nothing; same-rate compares the gateway with the direct
    call only (a peer ran at its own rate); added compares the gateway with the peers only."""

    def at(source: str, *path: str) -> Value:
        return lambda target: get(data, f"{source}.{target}", *path)

    def added(q: str) -> Value:
        """Latency at the fixed rate minus the direct call's at the same rate."""

        def value(target: str) -> float | None:
            if target == "direct":
                return None
            mine = get(data, f"rate.{target}", "latency_ms", q)
            direct = get(data, "rate.direct" if target == "gateway" else f"rate.direct-at-{target}", "latency_ms", q)
            return None if mine is None or direct is None else mine - direct

        return value

    def failed(source: str) -> Value:
        def value(target: str) -> float | None:
            run = data.get(f"{source}.{target}")
            return None if run is None else (run.get("errors") or 0) + (run.get("timeouts") or 0)

        return value

    out = []
    for connections in (32, 128):
        source = f"wrk{connections}"
        out.append((f"throughput, {connections} connections", "req/s", at(source, "rps"), "ratio"))
        out += [(f"  latency {q} under that load", "ms", at(source, q), "diff") for q in ("p50", "p99")]
        out.append(("  failed or over 10 s", "req", failed(source), "count"))
    out += [(f"one at a time, latency {q}", "ms", at("seq", "latency_ms", q), "diff") for q in ("p50", "p90", "p99")]
    out.append(("fixed rate: half its own 32-conn. throughput", "req/s", at("rate", "rate", "target_rps"), "none"))
    out += [(f"  latency {q}", "ms", at("rate", "latency_ms", q), "same-rate") for q in ("p50", "p90", "p99")]
    out += [(f"  added to the direct call's {q} at that rate", "ms", added(q), "added") for q in ("p50", "p99")]
    out += [(f"streaming, time to first token {q}", "ms", at("stream", "ttft_ms", q), "diff") for q in ("p50", "p99")]
    out += [(f"streaming, total time {q}", "ms", at("stream", "total_ms", q), "diff") for q in ("p50", "p99")]
    for when, label in (("idle", "after start + 1 request"), ("after", "after its measurements")):
        for kind in ("rss", "pss"):
            out.append((f"{kind.upper()} {label}", "MiB", at("memory", when, f"{kind}_mib"), "diff"))
    out.append(("start-up: spawn to first 200", "ms", at("startup", "startup_ms"), "diff"))
    return out


def compare(kind: str, unit: str, gateway: float | None, other: float | None, other_target: str) -> str:
    if gateway is None or other is None or kind in ("count", "none"):
        return "-"
    if kind == "same-rate" and other_target != "direct" or kind == "added" and other_target == "direct":
        return "-"
    if kind == "ratio":
        if not other:
            return "-"
        ratio = gateway / other
        return f"x{ratio:.3f}" if ratio < 1 else f"x{ratio:.2f}" if ratio < 10 else f"x{ratio:.1f}"
    difference = gateway - other
    if unit == "MiB":
        return f"{difference:+.1f} MiB"
    return f"{difference:+.2f} {unit}" if abs(difference) < 100 else f"{difference:+,.0f} {unit}"


def table(data: dict) -> str:
    columns = targets(data)
    others = [target for target in columns if target != "gateway"]
    header = ("metric", "unit", *columns, *(f"gateway vs {target}" for target in others))
    lines = [header]
    for metric, unit, value, kind in rows(data):
        values = {target: value(target) for target in columns}
        cells = [fmt(values[target], unit) for target in columns]
        comparisons = [compare(kind, unit, values["gateway"], values[target], target) for target in others]
        lines.append((metric, unit, *cells, *comparisons))
    for connections in (32, 128):
        rps = get(data, f"wrk{connections}.mock", "rps")
        if rps is not None:
            cells = ["-"] * len(columns)
            cells[columns.index("gateway")] = fmt(rps, "req/s")
            lines.append((f"mock provider, no upstream, {connections} conn.", "req/s", *cells, *["-"] * len(others)))
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
        if name.startswith("wrk"):
            run = data[name]
            if run.get("errors") or run.get("timeouts"):
                out.append(
                    f"- {name}: {run.get('errors', 0)} failed (non-2xx or socket errors) and {run.get('timeouts', 0)} "
                    f"answered after more than 10 s, of {run.get('requests', 0)} answers"
                )
            continue
        errors = get(data, name, "rate", "errors")
        if errors:
            out.append(f"- {name}: {errors} failed requests")
        late = get(data, name, "rate", "client_late")
        if late:
            out.append(f"- {name}: the client fell >5 ms behind schedule {late} times (its own core was busy)")
        achieved, target = get(data, name, "rate", "achieved_rps"), get(data, name, "rate", "target_rps")
        if achieved and target and achieved < 0.95 * target:
            out.append(f"- {name}: achieved {achieved} of {target} req/s")
    for peer, settings in (data.get("settings", {}).get("peers") or {}).items():
        if settings.get("seq_n") != 300 or settings.get("stream_n") != 200:
            out.append(
                f"- {peer}: {settings.get('seq_n')} requests one at a time and {settings.get('stream_n')} streamed "
                "(300 and 200 for the others)"
            )
    return out


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def peer_versions(peers: list[str]) -> str:
    """Read from the installs bench/peers/setup made."""
    described = []
    installs = ROOT / "bench" / ".peers"
    if "litellm" in peers:
        found = sorted(installs.glob("litellm/lib/python*/site-packages/litellm-*.dist-info"))
        described.append(f"litellm {found[-1].name[len('litellm-') : -len('.dist-info')] if found else '?'}")
    if "portkey" in peers:
        modules = installs / "portkey" / "node_modules"

        def package(name: str) -> str:
            try:
                return orjson.loads((modules / name / "package.json").read_bytes())["version"]
            except (OSError, KeyError, orjson.JSONDecodeError):
                return "?"

        node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() or "?"
        described.append(
            f"@portkey-ai/gateway {package('@portkey-ai/gateway')} (@hono/node-server "
            f"{package('@hono/node-server')}, node {node})"
        )
    return ", ".join(described)


def environment(peers: list[str], cpus: int | None = None) -> list[str]:
    """The lines that say what a result was measured on; cpus: the cores this process may use, if it has
    since pinned itself to fewer."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    # 0: no changes to tracked files, 1: changes, anything else: git could not tell
    dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--"], capture_output=True).returncode
    state = {0: "", 1: " (with uncommitted changes)"}.get(dirty, " (uncommitted changes unknown)")
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()[:1]
    return [
        f"- commit: `{commit or 'unknown'}`{state}",
        f"- python {platform.python_version()}, uvicorn {version('uvicorn')}, httpx {version('httpx')}, "
        f"aiohttp {version('aiohttp')}, uvloop {version('uvloop')}, httptools {version('httptools')}; "
        f"{wrk[0].split(' [')[0] if wrk else 'wrk ?'}",
        f"- machine: {os.cpu_count()} cores (`nproc`: {cpus or len(os.sched_getaffinity(0))}), {cpu}; "
        f"{platform.platform()}",
        *([f"- peers: {peer_versions(peers)}"] if peers else []),
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
        *environment([target for target in targets(data) if target in PEERS]),
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
and the gateway (client → gateway → the same upstream) seconds apart on the same machine, then each peer
installed by `bench/peers/setup` (LiteLLM proxy, Portkey's gateway) in front of the same upstream, each
pinned to core 0 like the gateway: read the ratios and differences, not the absolute numbers. See the
head of `bench/run` for what each row is. `bench/soak` appends its own sections.

"""

if __name__ == "__main__":
    main()
