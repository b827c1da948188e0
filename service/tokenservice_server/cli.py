"""The ``tokenservice`` command.

Exit status: 0 success, 1 runtime failure (e.g. the port is taken), 2 invalid
configuration or usage (the message names the bad setting).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tokenservice_server import __version__
from tokenservice_server.config import ENV_PREFIX, ConfigError, Settings, load_settings
from tokenservice_server.jobs.arguments import add_operations as _add_operations
from tokenservice_server.logging import configure_logging, get_logger

__all__ = ["main"]

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenservice", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tokenservice {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gRPC server")
    _add_common(serve)
    serve.add_argument("--listen", help=f"gRPC HOST:PORT (env {ENV_PREFIX}LISTEN)")
    serve.add_argument(
        "--metrics-listen", help=f"Prometheus HOST:PORT (env {ENV_PREFIX}METRICS_LISTEN)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server processes sharing the gRPC port (SO_REUSEPORT); worker i serves "
        "metrics on the metrics port + i (default 1)",
    )

    init = commands.add_parser(
        "init",
        help="prepare Redis: config copies, data-model version, scripts, clients (idempotent)",
    )
    _add_common(init)
    init.add_argument(
        "--wait",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="how long to wait for Redis before failing (default 120)",
    )
    audit = commands.add_parser("audit", help="show the newest audit-trail entries")
    _add_common(audit)
    audit.add_argument("--limit", type=int, default=50, metavar="N", help="entries (default 50)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_operations(commands, _add_common)
    doctor = commands.add_parser(
        "doctor",
        help="check Redis, replication, Sentinel, memory policy, scripts, jobs and clocks",
    )
    _add_common(doctor)
    doctor.add_argument("--json", action="store_true", help="machine-readable report")
    doctor.add_argument(
        "--strict", action="store_true", help="exit 1 on warnings too, not only on failures"
    )
    doctor.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long each check may wait for an answer (default 3)",
    )
    return parser


def _add_common(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--config",
        type=Path,
        default=os.environ.get(f"{ENV_PREFIX}CONFIG"),
        help=f"YAML config file (env {ENV_PREFIX}CONFIG)",
    )
    command.add_argument("--redis-url", help=f"redis/rediss/unix URL (env {ENV_PREFIX}REDIS__URL)")
    command.add_argument(
        "--data-dir", help=f"embedded Valkey data directory (env {ENV_PREFIX}REDIS__DATA_DIR)"
    )
    command.add_argument("--log-format", choices=("json", "console"))
    command.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag in ("listen", "metrics_listen", "log_format", "log_level"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = value
    redis: dict[str, Any] = {}
    if getattr(args, "redis_url", None):
        redis["url"] = args.redis_url
    if getattr(args, "data_dir", None):
        redis["data_dir"] = args.data_dir
    if redis:
        overrides["redis"] = redis
    return overrides


def _run(coro: Coroutine[Any, Any, T], settings: Settings) -> T:
    if settings.use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config, _overrides(args))
    except ConfigError as exc:
        print(f"tokenservice: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_format, settings.log_level)
    log = get_logger("tokenservice.cli")

    try:
        if args.command == "serve":
            from tokenservice_server.app import serve

            if args.workers > 1:
                from tokenservice_server.workers import serve_workers

                return serve_workers(settings, args.workers)
            return _run(serve(settings), settings)
        if args.command == "init":
            from tokenservice_server.jobs.init import run_init

            changes = _run(run_init(settings, wait_timeout=args.wait), settings)
            print(json.dumps(changes))
            return EXIT_OK
        if args.command == "audit":
            from tokenservice_server.jobs.audit import run_audit

            return _run(run_audit(settings, limit=max(1, args.limit), as_json=args.json), settings)
        if args.command in ("cleanup", "backup", "restore", "stats"):
            from tokenservice_server.jobs.commands import run_operation

            return _run(run_operation(args, settings), settings)
        if args.command == "doctor":
            from tokenservice_server.jobs.doctor import run_doctor_command

            return _run(
                run_doctor_command(
                    settings,
                    json_output=args.json,
                    strict=args.strict,
                    check_timeout=args.timeout,
                ),
                settings,
            )
    except KeyboardInterrupt:
        return EXIT_OK
    except ConfigError as exc:
        print(f"tokenservice: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:
        log.error(f"{args.command}_failed", error=str(exc), error_type=type(exc).__name__)
        return EXIT_FAILURE
    return EXIT_CONFIG  # argparse rejects unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
