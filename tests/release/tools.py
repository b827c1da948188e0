"""Shared paths for the release-engineering tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The dev install's tools (cz, actionlint, pre-commit, ...) live beside the interpreter.
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = VENV_BIN / name
    assert path.exists(), f"{name} is missing from the dev install ({VENV_BIN}); run `make test`"
    return str(path)


def tool_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", **extra}
