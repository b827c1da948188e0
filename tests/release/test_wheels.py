"""Both distributions build as wheels carrying the same version."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.release.tools import ROOT


def _version(pyproject: Path) -> str:
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


@pytest.mark.parametrize(
    ("source", "dist", "package"),
    [
        (".", "tokenservice", "tokenservice_server"),
        ("clients/python", "tokenservice_client", "tokenservice"),
    ],
)
def test_wheel_builds(tmp_path: Path, source: str, dist: str, package: str) -> None:
    version = _version(ROOT / source / "pyproject.toml")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT / source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = tmp_path / f"{dist}-{version}-py3-none-any.whl"
    assert wheel.exists(), sorted(p.name for p in tmp_path.iterdir())
    names = zipfile.ZipFile(wheel).namelist()
    assert f"{package}/py.typed" in names
    assert not any(n.startswith("tests/") for n in names)
    if package == "tokenservice_server":
        assert any(re.fullmatch(r"tokenservice_server/storage/lua/.+\.lua", n) for n in names)
        metadata = zipfile.ZipFile(wheel).read(f"{dist}-{version}.dist-info/METADATA").decode()
        # The server requires the client of the same release.
        assert f"Requires-Dist: tokenservice-client=={version}" in metadata
    else:
        assert "tokenservice/v1/tokens_pb2.py" in names or any(
            n.startswith("tokenservice/v1/") and n.endswith("_pb2.py") for n in names
        )
