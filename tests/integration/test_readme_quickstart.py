"""The README's grpcurl walkthrough works as written, against `tokenservice serve` on
its embedded Valkey (what `make run` starts)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

from tests.helpers import free_port, tool
from tests.integration.test_cli_serve import _wait_serving

README = Path(__file__).resolve().parents[2] / "README.md"


def _block(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- {marker}:[^>]*-->\n```sh\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no ```sh block after the {marker} marker"
    return match.group(1)


async def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    grpc_port = free_port()
    data_dir = tmp_path / "var"
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
        script = "set -euo pipefail\n" + _block("quickstart") + _block("quickstart-more")
        shell = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            env={
                **env,
                "ADDR": f"127.0.0.1:{grpc_port}",
                "CREDS": str(data_dir / "admin-credentials.json"),
                "GRPCURL": tool("grpcurl"),
            },
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(shell.communicate(), timeout=60)
    finally:
        server.send_signal(signal.SIGTERM)
        await asyncio.wait_for(server.wait(), timeout=30)
    output = out.decode()
    assert shell.returncode == 0, err.decode() + output
    assert '"token_type": "Bearer"' in output
    assert '"scope": "recipes:read"' in output
    assert re.search(r'"access_token": "tsat_[A-Za-z0-9_-]{49}"', output)
    assert '"client_id": "tokenservice-admin"' in output  # ListClients
    assert '"previous_secret_expire_time"' in output  # RotateClientSecret with grace
    assert '"revoked_token_count": "1"' in output  # DeleteClient revoked step 3's token
