"""`llm-gateway`: serve the gateway, check a config file, explain routing, report usage.

llm-gateway serve [--config PATH] [--host H] [--port P] [--workers N]
llm-gateway config validate PATH
llm-gateway route explain [--config PATH] --model M [...]
llm-gateway usage report [--config PATH] --group-by tenant,team [--since 24h] [--until T] [--format table|csv|json]
"""

from __future__ import annotations

import argparse
import os
import sys

from gateway.config import CONFIG_ENV_VAR, ConfigError, LoadedConfig, load_config, resolve_config_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-gateway", description="OpenAI-compatible LLM routing gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help=f"config file (default: ${CONFIG_ENV_VAR}, else config/gateway.yaml)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=4000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])

    config = commands.add_parser("config", help="config file tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="check a config file and exit 0 (valid) or 1")
    validate.add_argument("path")

    route = commands.add_parser("route", help="routing tools")
    route_commands = route.add_subparsers(dest="route_command", required=True)
    explain = route_commands.add_parser("explain", help="where a request would go, and why")
    explain.add_argument("--config", help=f"config file (default: ${CONFIG_ENV_VAR}, else config/gateway.yaml)")
    explain.add_argument("--model", required=True, help="the model the request asks for")
    explain.add_argument("--tenant")
    explain.add_argument("--team")
    explain.add_argument("--feature")
    explain.add_argument("--prompt-tokens", type=int, default=0)
    explain.add_argument("--max-tokens", type=int, help="requested output tokens")
    explain.add_argument("--tools", action="store_true", help="the request carries tools")
    explain.add_argument("--images", action="store_true", help="the request carries images")
    explain.add_argument("--json-schema", action="store_true", help="the request asks for a JSON schema")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")

    usage = commands.add_parser("usage", help="usage ledger tools")
    usage_commands = usage.add_subparsers(dest="usage_command", required=True)
    report = usage_commands.add_parser("report", help="requests, tokens and cost from the ledger, grouped")
    report.add_argument("--config", help=f"config file (default: ${CONFIG_ENV_VAR}, else config/gateway.yaml)")
    report.add_argument(
        "--group-by", required=True, help="comma-separated: tenant, team, feature, alias, provider, deployment, ..."
    )
    report.add_argument("--since", default="24h", help="ISO date or datetime, unix seconds, or 24h/7d ago")
    report.add_argument("--until", help="as --since (a bare date means the end of that day); default: now")
    report.add_argument("--tenant", help="only this tenant's requests")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")

    args = parser.parse_args(argv)
    if args.command == "usage":
        return _usage_report(args)
    if args.command == "route":
        return _route_explain(args)
    if args.command == "config":
        loaded = _load_or_report(args.path)
        if loaded is None:
            return 1
        print(loaded.summary())
        return 0
    return _serve(args)


def _load_or_report(path: str) -> LoadedConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        count = len(exc.issues)
        print(f"{path}: {count} error{'s' if count != 1 else ''}", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return None


def _route_explain(args: argparse.Namespace) -> int:
    import json

    from gateway.admin import facts_from_query
    from routing.router import Router, UnknownModel, WrongModelMode

    loaded = _load_or_report(str(resolve_config_path(args.config)))
    if loaded is None:
        return 1
    config = loaded.config
    # Explaining needs no connections: the router only holds adapters, it never calls them.
    router = Router(
        config.models,
        dict.fromkeys(config.providers),
        config.server.timeouts,  # type: ignore[arg-type]
        routes=config.routes,
    )
    query = {
        "model": args.model,
        "tenant": args.tenant,
        "team": args.team,
        "feature": args.feature,
        "prompt_tokens": args.prompt_tokens,
        "max_tokens": args.max_tokens,
        "tools": args.tools,
        "images": args.images,
        "json_schema": args.json_schema,
    }
    try:
        explanation = router.explain(*facts_from_query(query))
    except (UnknownModel, WrongModelMode) as exc:
        print(f"unknown model '{exc.model}' (known: {', '.join(config.models)})", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(explanation, indent=2))
    else:
        print(render_explanation(explanation))
    return 0 if explanation["candidates"] else 2


def _usage_report(args: argparse.Namespace) -> int:
    from gateway.ledger.report import ReportError, fetch, render
    from gateway.ledger.store import StoreUnavailable, parse_group_by
    from gateway.ledger.window import parse_window

    try:
        group_by = parse_group_by(args.group_by)
        since, until = parse_window(args.since, args.until)
    except ValueError as exc:
        print(f"llm-gateway usage report: {exc}", file=sys.stderr)
        return 2
    loaded = _load_or_report(str(resolve_config_path(args.config)))
    if loaded is None:
        return 1
    try:
        rows = fetch(loaded.config.ledger, since, until, group_by, tenant=args.tenant)
    except (ReportError, StoreUnavailable) as exc:
        print(f"llm-gateway usage report: {exc}", file=sys.stderr)
        return 1
    print(render(rows, group_by, since, until, args.format))
    return 0


def render_explanation(explanation: dict) -> str:  # type: ignore[type-arg]
    slo = f", SLO p95 TTFT {explanation['slo_ttft_p95_ms']:g} ms" if "slo_ttft_p95_ms" in explanation else ""
    lines = [
        f"model '{explanation['requested_model']}' -> alias '{explanation['alias']}' "
        f"(chosen by {explanation['chosen_by']}); strategy {explanation['strategy']}{slo}"
    ]
    if explanation.get("explore_share"):
        lines.append(f"  ({explanation['explore_share']:.0%} of traffic explores deployments with few observations)")
    lines.append("candidates, best first:" if explanation["candidates"] else "no candidates:")
    for candidate in explanation["candidates"]:
        lines.append(f"  {candidate['rank']}. {candidate['deployment']}: {candidate['reason']}")
    if explanation["filtered_out"]:
        lines.append("filtered out:")
        lines += [f"  - {item['deployment']}: {item['reason']}" for item in explanation["filtered_out"]]
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    path = str(resolve_config_path(args.config))
    loaded = _load_or_report(path)  # refuse to start on a broken file, with the same messages
    if loaded is None:
        return 1
    import uvicorn

    from gateway.app import create_app

    print(loaded.summary(), file=sys.stderr)
    if not loaded.config.tenants:
        from gateway.app import AUTH_OFF_WARNING

        print(f"WARNING: {AUTH_OFF_WARNING}", file=sys.stderr)
    options = dict(
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,  # request logs with prompts are a leak waiting to happen; metrics cover volume
        proxy_headers=True,
        server_header=False,
        # SIGTERM: stop listening, close idle connections, let in-flight requests finish for this long.
        timeout_graceful_shutdown=loaded.config.server.shutdown_grace_s,
        timeout_keep_alive=loaded.config.server.keep_alive_s,
    )
    if args.workers > 1:
        os.environ[CONFIG_ENV_VAR] = os.path.abspath(path)
        uvicorn.run("gateway.app:app_from_environment", factory=True, workers=args.workers, **options)
    else:
        from gateway.shutdown import exit_zero_after_drain

        exit_zero_after_drain()  # a drained shutdown ends with status 0 (the multi-worker parent already does)
        uvicorn.run(create_app(loaded), **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
