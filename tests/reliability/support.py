"""Shared helpers of the reliability suites: results files and RPC error details."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

#: Where the suites write their latest figures (build/ is git-ignored).
RESULTS_DIR = Path(__file__).resolve().parents[2] / "build" / "reliability"


#: The figures written by this pytest run, for the terminal summary (conftest.py).
WRITTEN: dict[str, dict[str, Any]] = {}


def write_results(name: str, figures: dict[str, Any]) -> Path:
    """Write ``figures`` to build/reliability/NAME.json and print them on one line."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    WRITTEN[name] = figures
    print(f"\n[reliability] {name}: {json.dumps(figures, sort_keys=True)}")
    return path


def retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    """The ``google.rpc.RetryInfo`` delay of a failed call in seconds, None without one."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info.retry_delay.ToNanoseconds() / 1e9
    return None
