"""Arguments of the operations commands: ``cleanup``, ``backup``, ``restore``, ``stats``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_operations"]


def add_operations(commands: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the operations sub-commands to ``commands`` (an argparse sub-parser action)."""
    cleanup = commands.add_parser(
        "cleanup", help="remove index entries of expired tokens, sessions and cache values"
    )
    targets = cleanup.add_subparsers(dest="target", required=True, metavar="TARGET")
    for name, batch, text in (
        ("tokens", 500, "tokens, sessions and their index sets (auth DB; every 5 min)"),
        ("cache", 200, "cache indexes and invalidated generations (cache DB; every 10 min)"),
    ):
        target = targets.add_parser(name, help=text)
        add_common(target)
        target.add_argument(
            "--batch", type=int, default=batch, help=f"entries per script call (default {batch})"
        )
        target.add_argument(
            "--wait",
            type=float,
            default=0.0,
            metavar="SECONDS",
            help="wait this long for a running cleanup's lock (default 0: skip the run)",
        )
        target.add_argument(
            "--lock-ttl",
            type=float,
            default=60.0,
            metavar="SECONDS",
            help="lock lifetime, renewed by every batch (default 60)",
        )
        _add_output(target)
        target.add_argument(
            "--textfile",
            type=Path,
            metavar="PATH",
            help="also write the result as Prometheus text (node-exporter textfile collector)",
        )

    backup = commands.add_parser("backup", help="stream a logical backup (JSON lines)")
    add_common(backup)
    backup.add_argument("--db", choices=("auth", "cache", "both"), default="both")
    backup.add_argument(
        "--output", "-o", default="-", help="file to write ('-', the default: stdout)"
    )

    restore = commands.add_parser("restore", help="load a backup written by `backup`")
    add_common(restore)
    restore.add_argument("--input", "-i", default="-", help="backup file ('-': stdin)")
    restore.add_argument("--db", choices=("auth", "cache", "both"), default="both")
    restore.add_argument(
        "--replace", action="store_true", help="overwrite keys that exist (default: keep them)"
    )
    restore.add_argument(
        "--force", action="store_true", help="restore a backup of another data-model version"
    )
    _add_output(restore)

    stats = commands.add_parser("stats", help="summary of the auth and cache databases")
    add_common(stats)
    stats.add_argument(
        "--samples",
        type=int,
        default=50,
        help="keys sampled per kind for MEMORY USAGE (default 50)",
    )
    _add_output(stats)


def _add_output(command: argparse.ArgumentParser) -> None:
    command.add_argument("--json", action="store_true", help="print the result as JSON")
