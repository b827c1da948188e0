"""`tokenservice init`, the Kubernetes init Job: waits for Redis, bootstraps the admin
client from a secret, and changes nothing when run again."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import grpc
from redis.asyncio import Redis

from tests.harness.grpc_server import AppFactory, Credentials, issue_token
from tests.helpers import free_port, tool
from tokenservice_server.storage.data_model import DATA_MODEL_VERSION
from tokenservice_server.storage.scripts import ScriptRegistry

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
    assert json.loads(first.stdout)["admin_client"] == "created"
    again = _init("--redis-url", valkey.url, TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET=SECRET)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["admin_client"] == "unchanged"
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
    assert json.loads(third.stdout)["admin_client"] == "updated"

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


# -- configuration copies, data-model version, scripts, clients file ----------------------


def _dump(valkey: Any) -> dict[int, dict[str, tuple[str, Any, bool]]]:
    """Every key of both databases: (type, value, has a TTL)."""
    state: dict[int, dict[str, tuple[str, Any, bool]]] = {}
    for db in (0, 1):
        with valkey.client(db=db) as client:
            keys: dict[str, tuple[str, Any, bool]] = {}
            for key in client.scan_iter(count=1000):
                kind = client.type(key)
                value: Any
                if kind == "string":
                    value = client.get(key)
                elif kind == "hash":
                    value = sorted(client.hgetall(key).items())
                elif kind == "set":
                    value = sorted(client.smembers(key))
                elif kind == "zset":
                    value = client.zrange(key, 0, -1, withscores=True)
                elif kind == "list":
                    value = client.lrange(key, 0, -1)
                else:
                    value = client.xrange(key) if kind == "stream" else None
                keys[key] = (kind, value, client.ttl(key) > 0)
            state[db] = keys
    return state


def _clients_file(tmp_path: Path) -> Path:
    (tmp_path / "web-secret").write_text("web-secret-0123456789abcdef0123456789abcdef\n")
    path = tmp_path / "clients.yaml"
    path.write_text(
        """
clients:
  - id: billing
    name: Billing batch
    grants: [client_credentials]
    scopes: [invoices.read, invoices.write]
    secret: billing-secret-0123456789abcdef0123456789
  - id: web
    name: Web app
    grants: [authorization_code, refresh_token]
    scopes: [profile]
    redirect_uris: ["https://app.example.com/callback"]
    secret_file: web-secret
  - id: cli
    type: public
    grants: [authorization_code]
    redirect_uris: ["http://127.0.0.1/callback"]
""",
        encoding="utf-8",
    )
    return path


async def test_init_writes_config_scripts_and_clients_and_a_second_run_changes_nothing(
    valkey: Any, app_factory: AppFactory, tmp_path: Path
) -> None:
    clients = _clients_file(tmp_path)
    env = {
        "TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET": SECRET,
        "TOKENSERVICE_AUTH__CLIENTS_FILE": str(clients),
        "TOKENSERVICE_AUTH__ACCESS_TOKEN_TTL": "300",
        "TOKENSERVICE_CACHE__MAX_BATCH": "50",
    }
    with valkey.client(db=1) as cache:  # an operator's own namespace cap survives init
        cache.hset("cache_config", "recipes:max_entries", "7")
        cache.script_flush()
    first = _init("--redis-url", valkey.url, **env)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["auth_config"] == "created"
    assert report["cache_config"] == "updated"
    assert report["data_model_version"] == DATA_MODEL_VERSION
    assert report["scripts_loaded"] > 0
    assert report["admin_client"] == "created"
    assert report["clients"] == {"billing": "created", "web": "created", "cli": "created"}
    assert report["changed"] is True

    with valkey.client(db=0) as auth, valkey.client(db=1) as cache:
        auth_config = auth.hgetall("auth_config")
        assert auth_config["data_model_version"] == str(DATA_MODEL_VERSION)
        assert auth_config["access_token_ttl"] == "300"
        assert auth_config["rate_limit_per_ip"] == "50"
        assert PEPPER not in json.dumps(auth_config)
        cache_config = cache.hgetall("cache_config")
        assert cache_config["max_batch"] == "50"
        assert cache_config["recipes:max_entries"] == "7"
        shas = [script.sha for script in ScriptRegistry(Redis()).values()]
        assert all(auth.script_exists(*shas))

    before = _dump(valkey)
    again = _init("--redis-url", valkey.url, **env)
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["changed"] is False
    assert report["scripts_loaded"] == 0
    assert {report["auth_config"], report["cache_config"], report["admin_client"]} == {"unchanged"}
    assert set(report["clients"].values()) == {"unchanged"}
    assert _dump(valkey) == before
    for secret in (SECRET, "billing-secret", "web-secret-0123", PEPPER):
        assert secret not in first.stdout + first.stderr + again.stdout + again.stderr

    # The clients work as listed.
    app = await app_factory(redis={"url": valkey.url}, auth={"secret_pepper": PEPPER})
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        token = await issue_token(
            channel,
            Credentials("billing", "billing-secret-0123456789abcdef0123456789"),
            scope="invoices.read",
        )
    assert token.startswith("tsat_")

    # A changed setting is converged, the rest stays.
    env["TOKENSERVICE_AUTH__ACCESS_TOKEN_TTL"] = "600"
    third = json.loads(_init("--redis-url", valkey.url, **env).stdout)
    assert third["auth_config"] == "updated"
    assert third["cache_config"] == "unchanged"
    assert third["changed"] is True


def test_init_refuses_an_invalid_clients_file_naming_the_setting(
    valkey: Any, tmp_path: Path
) -> None:
    bad = tmp_path / "clients.yaml"
    bad.write_text("- id: nosecret\n  grants: [client_credentials]\n", encoding="utf-8")
    result = _init(
        "--redis-url",
        valkey.url,
        TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET=SECRET,
        TOKENSERVICE_AUTH__CLIENTS_FILE=str(bad),
    )
    assert result.returncode == 2
    assert "invalid setting auth.clients_file" in result.stderr
    assert "secret or secret_file" in result.stderr
    bad.write_text("- id: x\n  grants: [implicit]\n  secret: s\n", encoding="utf-8")
    result = _init(
        "--redis-url",
        valkey.url,
        TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET=SECRET,
        TOKENSERVICE_AUTH__CLIENTS_FILE=str(bad),
    )
    assert result.returncode == 2
    assert "entry 0" in result.stderr
