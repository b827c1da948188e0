"""No secret is ever logged (issue 7, item 8).

``tokenservice init`` and ``tokenservice serve`` run as operators run them (JSON logs, at
debug level, so every event is written), a workload touches every RPC family and the
audited admin actions, and then the logs are searched for every token, code, PKCE
verifier, client secret and pepper that was issued or presented, whole or in part.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import grpc

from tests.harness.grpc_server import Credentials
from tests.harness.redis_servers import RedisProcess
from tests.helpers import eventually, free_port, tool
from tests.integration.test_caller_authorization import _serving
from tests.integration.workload_support import full_workload

PEPPER = "redaction-pepper-0123456789abcdef0123456789"
OLD_PEPPER = "redaction-old-pepper-0123456789abcdef012345"
ADMIN_SECRET = "redaction-admin-secret-0123456789abcdef0123"


def _env(valkey: RedisProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVICE_")}
    env.update(
        TOKENSERVICE_LOG_FORMAT="json",
        TOKENSERVICE_LOG_LEVEL="debug",
        TOKENSERVICE_REDIS__URL=valkey.url,
        TOKENSERVICE_AUTH__SECRET_PEPPER=PEPPER,
        TOKENSERVICE_AUTH__PREVIOUS_SECRET_PEPPERS=json.dumps([OLD_PEPPER]),
        TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET=ADMIN_SECRET,
        TOKENSERVICE_AUTH__ADMIN_CLIENT_ID="redaction-admin",
    )
    return env


def _fragments(value: str) -> list[str]:
    """The value and a 24-character piece of its random part (a truncated copy)."""
    pieces = [value]
    if len(value) >= 40:
        pieces.append(value[8:32])
    return pieces


async def test_no_credential_or_pepper_appears_in_the_logs(
    valkey: RedisProcess, tmp_path: Path
) -> None:
    env = _env(valkey)
    init = await asyncio.create_subprocess_exec(
        tool("tokenservice"),
        "init",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    init_out, init_err = await asyncio.wait_for(init.communicate(), timeout=30)
    assert init.returncode == 0, init_err.decode()[-2000:]

    target = f"127.0.0.1:{free_port()}"
    process = await asyncio.create_subprocess_exec(
        tool("tokenservice"),
        "serve",
        "--listen",
        target,
        "--metrics-listen",
        "127.0.0.1:0",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: _serving(target), timeout=30, interval=0.1)
        async with grpc.aio.insecure_channel(target) as channel:
            seen = await full_workload(channel, Credentials("redaction-admin", ADMIN_SECRET))
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()[-2000:]

    output = (init_out + init_err + stdout + stderr).decode()
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    # The logs are really there: the workload and its audited admin actions were logged.
    assert sum(event.get("event") == "rpc" for event in events) >= 20
    assert {event.get("action") for event in events if event.get("event") == "audit"} >= {
        "client.create",
        "client.update",
        "client.rotate_secret",
        "client.delete",
        "session.end",
        "tokens.revoke",
    }
    assert len(seen) >= 13
    leaked = [
        fragment
        for value in [*seen, PEPPER, OLD_PEPPER, ADMIN_SECRET]
        for fragment in _fragments(value)
        if fragment in output
    ]
    assert not leaked, f"{len(leaked)} credential fragments found in the logs"
