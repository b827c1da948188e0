"""Lua scripts as files with a KEYS/ARGV/Returns header, run through ScriptRegistry."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.harness.redis_servers import RedisProcess
from tokenservice_server.storage.scripts import (
    LUA_DIR,
    ScriptHeaderError,
    ScriptRegistry,
)

_ECHO = """\
-- echo.lua: hand back what it was given.
-- KEYS: [1] any key
-- ARGV: [1] any value
-- Returns: {KEYS[1], ARGV[1], number of keys, number of args}
return {KEYS[1], ARGV[1], #KEYS, #ARGV}
"""


@pytest.fixture
async def client(valkey: RedisProcess) -> AsyncIterator[Redis]:
    redis = Redis.from_url(valkey.url, decode_responses=True)
    yield redis
    await redis.aclose()


def _write(directory: Path, name: str, source: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(source, encoding="utf-8")
    return path


def test_every_packaged_script_documents_its_interface(client: Redis) -> None:
    registry = ScriptRegistry(client)

    scripts = [path.stem for path in LUA_DIR.glob("*.lua") if not path.name.startswith("_")]
    assert sorted(registry) == sorted(scripts)  # _*.lua are libraries, included by scripts
    assert "rate_limit" in registry
    header = registry.headers["rate_limit"]
    assert "auth:rate_limit:" in header.keys
    assert "period" in header.argv
    assert "allowed" in header.returns


@pytest.mark.parametrize("dropped", ["KEYS", "ARGV", "Returns"])
def test_script_without_a_full_header_is_refused(
    client: Redis, tmp_path: Path, dropped: str
) -> None:
    source = "\n".join(line for line in _ECHO.splitlines() if f"-- {dropped}:" not in line)
    path = _write(tmp_path, "echo.lua", source)

    with pytest.raises(ScriptHeaderError, match=rf"{re.escape(str(path))}.*missing -- {dropped}:"):
        ScriptRegistry(client, tmp_path)


def test_header_must_be_the_leading_comment(client: Redis, tmp_path: Path) -> None:
    # The same lines after the first statement are not a header.
    _write(tmp_path, "late.lua", "local x = 1\n" + _ECHO)

    with pytest.raises(ScriptHeaderError, match=r"late\.lua"):
        ScriptRegistry(client, tmp_path)


def test_missing_directory_is_an_error(client: Redis, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        ScriptRegistry(client, tmp_path / "does-not-exist")


async def test_scripts_run_with_explicit_keys_and_args(client: Redis, tmp_path: Path) -> None:
    _write(tmp_path, "echo.lua", _ECHO)
    registry = ScriptRegistry(client, tmp_path)

    assert await registry.call("echo", keys=["auth:k"], args=["v"]) == ["auth:k", "v", 1, 1]
    with pytest.raises(KeyError, match=r"no Lua script 'nope' .* \(have: echo\)"):
        registry["nope"]


async def test_scripts_survive_a_server_without_them(client: Redis, tmp_path: Path) -> None:
    # A new master after a failover (or a restart) starts with an empty script cache:
    # EVALSHA answers NOSCRIPT and the script must be loaded again transparently.
    _write(tmp_path, "echo.lua", _ECHO)
    registry = ScriptRegistry(client, tmp_path)
    await registry.call("echo", keys=["k"], args=["1"])

    await client.script_flush()

    assert await registry.call("echo", keys=["k"], args=["2"]) == ["k", "2", 1, 1]
