"""The README's CacheService walkthrough works as written, after the quickstart block,
against `tokenservice serve` on its embedded Valkey (what `make run` starts)."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
from pathlib import Path

from tests.helpers import free_port, tool
from tests.integration.test_cli_serve import _wait_serving
from tests.integration.test_readme_quickstart import README, _block

README_TEXT = README.read_text(encoding="utf-8")


async def test_readme_cache_walkthrough_runs_as_written(tmp_path: Path) -> None:
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
        script = "set -euo pipefail\n" + _block("quickstart") + _block("cache")
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
    popular = base64.b64encode(b"[42,7,19]").decode()
    assert f'"value": "{popular}",\n  "remaining_ttl_seconds": 300' in output
    assert "\n[42,7,19]\n" in output  # the value decoded
    assert '"value": "UmFtZW4=",\n      "remaining_ttl_seconds": 60' in output  # recipe:7
    assert '"key": "recipe:1"\n    }' in output  # a miss in the batch
    assert re.search(r'"lease_status": "LEASE_STATUS_GRANTED",\n  "lease_token": "\S+"', output)
    assert '"lease_status": "LEASE_STATUS_HELD_ELSEWHERE"' in output
    assert '"deleted": true' in output
    # The statistics exactly as the README shows them.
    shown = re.search(r"the statistics read:\n\n```json\n(.*?)```", README_TEXT, re.DOTALL)
    assert shown is not None
    assert shown.group(1) in output
    assert '"invalidated_count": "3"' in output
