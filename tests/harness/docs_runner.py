"""Running documentation examples as written: fenced ```sh blocks of a Markdown file,
executed by bash against `tokenservice serve` on its embedded Valkey (what `make run`
starts), with the variables the docs use (ADDR, CREDS, GRPCURL) pointing at it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port, tool
from tests.integration.test_cli_serve import _wait_serving

__all__ = ["ShellResult", "markdown_block", "run_against_serve"]


def markdown_block(document: Path, marker: str) -> str:
    """The ```sh block right after ``<!-- marker: ... -->`` in ``document``."""
    text = document.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker}:[^>]*-->\n```sh\n(.*?)```", text, re.DOTALL)
    assert match, f"{document.name} has no ```sh block after the {marker} marker"
    return match.group(1)


@dataclass(frozen=True)
class ShellResult:
    returncode: int
    output: str
    errors: str


async def run_against_serve(script: str, data_dir: Path, *, timeout: float = 60) -> ShellResult:
    """Start `tokenservice serve` on free ports, run ``script`` under ``set -euo pipefail``,
    stop the server with SIGTERM; return what the script printed."""
    grpc_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVICE_")}
    server = await asyncio.create_subprocess_exec(
        tool("tokenservice"),
        "serve",
        "--listen",
        f"127.0.0.1:{grpc_port}",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _wait_serving(f"127.0.0.1:{grpc_port}", timeout=30)
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            "set -euo pipefail\n" + script,
            env={
                **env,
                "ADDR": f"127.0.0.1:{grpc_port}",
                "CREDS": str(data_dir / "admin-credentials.json"),
                "GRPCURL": tool("grpcurl"),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(shell.communicate(), timeout=timeout)
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), timeout=30)
    assert shell.returncode is not None
    return ShellResult(shell.returncode, out.decode(), err.decode())
