"""Shared helpers of the reliability suites: results files and RPC error classification."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Where the suites write their latest figures (build/ is git-ignored).
RESULTS_DIR = Path(__file__).resolve().parents[2] / "build" / "reliability"


def write_results(name: str, figures: dict[str, Any]) -> Path:
    """Write ``figures`` to build/reliability/NAME.json and print them on one line."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"\n[reliability] {name}: {json.dumps(figures, sort_keys=True)}")
    return path
