"""`tokenservice init`, the Kubernetes init Job: waits for Redis, bootstraps the admin
client from a secret, and changes nothing when run again."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import grpc

from tests.harness.grpc_server import AppFactory, Credentials, issue_token
from tests.helpers import free_port, tool

PEPPER = "init-test-pepper-0123456789abcdef0123456789"
SECRET = "init-admin-secret-0123456789abcdef0123456789"


def _init(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENSERVICE_")}
    clean.update(TOKENSERVICE_LOG_FORMAT="json", TOKENSERVICE_AUTH__SECRET_PEPPER=PEPPER, **env)
    return subprocess.run(
        [tool("tokenservice"), "init", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        check=False,
    )


async def test_init_bootstraps_the_admin_idempotently(
    app_factory: AppFactory, valkey: Any, tmp_path: Path
) -> None:
    first = _init("--redis-url", valkey.url, TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET=SECRET)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {"admin_client": "created"}
    again = _init("--redis-url", valkey.url, TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET=SECRET)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {"admin_client": "unchanged"}
    assert SECRET not in first.stderr + again.stderr

    # The secret from a mounted file, rotated: the client converges to it.
    secret_file = tmp_path / "admin-secret"
    rotated = SECRET.replace("init", "next")
    secret_file.write_text(rotated + "\n")
    third = _init(
        "--redis-url",
        valkey.url,
        TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET_FILE=str(secret_file),
    )
    assert json.loads(third.stdout) == {"admin_client": "updated"}

    app = await app_factory(redis={"url": valkey.url}, auth={"secret_pepper": PEPPER})
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        token = await issue_token(
            channel, Credentials("tokenservice-admin", rotated), scope="tokenservice.admin"
        )
    assert token.startswith("tsat_")


def test_init_without_a_secret_exits_2_naming_the_setting(valkey: Any) -> None:
    result = _init("--redis-url", valkey.url)
    assert result.returncode == 2
    assert "invalid setting auth.admin_client_secret" in result.stderr

    short = _init("--redis-url", valkey.url, TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET="short")
    assert short.returncode == 2
    assert "at least 32 characters" in short.stderr


def test_init_gives_up_on_unreachable_redis_within_its_wait() -> None:
    dead = f"redis://127.0.0.1:{free_port()}"
    result = _init(
        "--redis-url", dead, "--wait", "2", TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET=SECRET
    )
    assert result.returncode == 1
    events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert any(event["event"] == "waiting_for_redis" for event in events)
    assert any(event["event"] == "init_failed" for event in events)
