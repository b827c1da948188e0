"""Runs the operations commands for the CLI; returns the exit status."""

from __future__ import annotations

import argparse
import json
import sys

from tokenservice_server.config import Settings
from tokenservice_server.jobs.progress import Progress

__all__ = ["run_operation"]


async def run_operation(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "cleanup":
        from tokenservice_server.jobs.cleanup import prometheus_text, run_cleanup

        result = await run_cleanup(
            settings,
            args.target,
            batch=args.batch,
            lock_ttl=args.lock_ttl,
            wait=args.wait,
            progress=Progress(),
        )
        if args.textfile is not None and result.status == "done":
            temporary = args.textfile.with_suffix(args.textfile.suffix + ".tmp")
            temporary.write_text(prometheus_text(result), encoding="utf-8")
            temporary.replace(args.textfile)
        if args.json:
            print(json.dumps(result.as_dict()))
        else:
            removed = ", ".join(f"{kind} {count}" for kind, count in result.removed.items())
            print(f"cleanup {result.target}: {result.status}; removed {removed}")
        return 0
    if args.command == "backup":
        from tokenservice_server.jobs.backup import run_backup

        counts = await run_backup(settings, args.db, args.output, progress=Progress())
        print(json.dumps(counts), file=sys.stderr if args.output == "-" else sys.stdout)
        return 0
    if args.command == "restore":
        from tokenservice_server.jobs.backup import BackupError, run_restore

        try:
            report = await run_restore(
                settings,
                args.input,
                dbs=args.db,
                replace=args.replace,
                force=args.force,
                progress=Progress(),
            )
        except BackupError as exc:
            print(f"tokenservice restore: {exc}", file=sys.stderr)
            return 1
        if args.json:
            print(json.dumps(report.as_dict()))
        else:
            print(report.summary())
        return 0 if report.ok else 1
    if args.command == "stats":
        from tokenservice_server.jobs.stats import collect_stats, render_table

        stats = await collect_stats(settings, samples=args.samples)
        print(json.dumps(stats, indent=2) if args.json else render_table(stats))
        return 0
    raise ValueError(f"unknown command {args.command}")
