"""`llm-gateway`: serve the gateway, or check a config file.

llm-gateway serve [--config PATH] [--host H] [--port P] [--workers N]
llm-gateway config validate PATH
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

    args = parser.parse_args(argv)
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


def _serve(args: argparse.Namespace) -> int:
    path = str(resolve_config_path(args.config))
    loaded = _load_or_report(path)  # refuse to start on a broken file, with the same messages
    if loaded is None:
        return 1
    import uvicorn

    from gateway.app import create_app

    print(loaded.summary(), file=sys.stderr)
    options = dict(
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        access_log=False,  # request logs with prompts are a leak waiting to happen; metrics cover volume
        proxy_headers=True,
        server_header=False,
    )
    if args.workers > 1:
        os.environ[CONFIG_ENV_VAR] = os.path.abspath(path)
        uvicorn.run("gateway.app:app_from_environment", factory=True, workers=args.workers, **options)
    else:
        uvicorn.run(create_app(loaded), **options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
