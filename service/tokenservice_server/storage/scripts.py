"""Lua scripts kept as files in ``storage/lua/``, loaded once through ``register_script``.

SPEC section 4 wants one round trip per RPC and atomic multi-step state changes: each such
change is one script. Every script starts with a comment header naming its interface::

    -- name.lua: what it does
    -- KEYS: [1] ...
    -- ARGV: [1] ..., [2] ...
    -- Returns: ...

A script without the three lines is refused at load time, so the interface of every script
is documented where it is written.

Files whose name starts with ``_`` are libraries of local Lua functions, not scripts: a
script line ``-- include: _name.lua`` is replaced by that file's text before loading, so
logic several scripts need (revoking a set of tokens, say) is written once.

Scripts run with EVALSHA (redis-py loads them again after a ``NOSCRIPT``, e.g. on a fresh
master after a failover) and are always called with explicit ``keys=`` and ``args=``.

Durability (``redis.durability: replicated``): a registry built with ``replica_ack_timeout_ms``
sends every script of ``DURABLE_SCRIPTS`` as a non-transactional pipeline ``[EVALSHA,
WAIT 1 timeout]`` (one round trip; WAIT cannot run inside Lua) and raises
``BackendUnavailable`` when no replica confirmed the write in time. See docs/reliability.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError
from redis.typing import EncodableT, KeyT

from tokenservice_server.domain.errors import BackendUnavailable
from tokenservice_server.storage.instrumented import InstrumentedRedis

__all__ = [
    "DURABLE_SCRIPTS",
    "LUA_DIR",
    "ScriptHeader",
    "ScriptHeaderError",
    "ScriptRegistry",
    "parse_header",
]

#: The scripts that ship with the service.
LUA_DIR: Final = Path(__file__).with_name("lua")

_TAGS: Final = ("KEYS", "ARGV", "Returns")

#: State changes a failover must not undo: with ``redis.durability: replicated`` each is
#: acknowledged only after a replica confirmed it (WAIT). Rate-limit counters, cache
#: writes, statistics and cleanup are deliberately not here (losing them is harmless).
DURABLE_SCRIPTS: Final = frozenset(
    {
        "issue_access_token",
        "store_code",
        "redeem_code",
        "rotate_refresh",
        "revoke_token",
        "revoke_index",
        "create_client",
        "replace_client",
        "delete_client",
        "create_session",
        "extend_session",
    }
)
#: The RetryInfo delay suggested when a replica did not confirm a write.
_UNCONFIRMED_RETRY_AFTER: Final = 1.0


class ScriptHeaderError(ValueError):
    """A Lua file lacks the ``-- KEYS:`` / ``-- ARGV:`` / ``-- Returns:`` header."""


@dataclass(frozen=True)
class ScriptHeader:
    """The documented interface of one script, from its header comment."""

    keys: str
    argv: str
    returns: str


def parse_header(source: str, *, origin: str) -> ScriptHeader:
    """Read the leading ``--`` comment block of a script; raise naming what is missing."""
    found: dict[str, str] = {}
    for raw in source.splitlines():
        line = raw.strip()
        if not line.startswith("--"):
            break  # the header is the comment block at the very top
        text = line[2:].strip()
        for tag in _TAGS:
            if text.startswith(f"{tag}:") and tag not in found:
                found[tag] = text[len(tag) + 1 :].strip()
    missing = [f"-- {tag}:" for tag in _TAGS if not found.get(tag)]
    if missing:
        raise ScriptHeaderError(
            f"{origin}: the header comment must name the script's interface; "
            f"missing {', '.join(missing)}"
        )
    return ScriptHeader(keys=found["KEYS"], argv=found["ARGV"], returns=found["Returns"])


_INCLUDE: Final = "-- include:"


def _expand(source: str, directory: Path, origin: Path) -> str:
    """Inline ``-- include: _lib.lua`` lines (libraries only, no nesting)."""
    lines = []
    for line in source.splitlines():
        if line.strip().startswith(_INCLUDE):
            name = line.strip()[len(_INCLUDE) :].strip()
            library = directory / name
            if not name.startswith("_") or not library.is_file():
                raise ScriptHeaderError(f"{origin}: cannot include {name!r}")
            lines.append(library.read_text(encoding="utf-8"))
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


class ScriptRegistry(Mapping[str, AsyncScript]):
    """Every ``*.lua`` file of ``directory``, registered on ``client``, by file stem.

    Register one registry per client (the auth and the cache client are separate pools).
    With ``replica_ack_timeout_ms`` set (durability ``replicated``), ``DURABLE_SCRIPTS``
    wait for one replica; see ``call``.
    """

    def __init__(
        self,
        client: Redis,
        directory: Path = LUA_DIR,
        *,
        replica_ack_timeout_ms: int | None = None,
    ) -> None:
        if not directory.is_dir():
            raise FileNotFoundError(f"Lua script directory {directory} does not exist")
        self.directory = directory
        self.client = client
        self.replica_ack_timeout_ms = replica_ack_timeout_ms
        self.headers: dict[str, ScriptHeader] = {}
        self._scripts: dict[str, AsyncScript] = {}
        #: EVALSHA with explicit keys and args: the instrumented client's direct path to
        #: its shared connection, or plain ``evalsha`` for any other client.
        self._run: Callable[[str, Sequence[KeyT], Sequence[EncodableT]], Awaitable[Any]] = (
            client.evalsha_keys if isinstance(client, InstrumentedRedis) else _evalsha(client)
        )
        for path in sorted(directory.glob("*.lua")):
            if path.name.startswith("_"):
                continue
            source = path.read_text(encoding="utf-8")
            self.headers[path.stem] = parse_header(source, origin=str(path))
            self._scripts[path.stem] = client.register_script(_expand(source, directory, path))

    def __getitem__(self, name: str) -> AsyncScript:
        try:
            return self._scripts[name]
        except KeyError:
            known = ", ".join(sorted(self._scripts)) or "none"
            raise KeyError(f"no Lua script {name!r} in {self.directory} (have: {known})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._scripts)

    def __len__(self) -> int:
        return len(self._scripts)

    async def call(self, name: str, *, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        """Run script ``name`` (EVALSHA) with explicit KEYS and ARGV.

        In replicated durability a ``DURABLE_SCRIPTS`` member is pipelined with
        ``WAIT 1 timeout``; no replica confirming raises ``BackendUnavailable``.
        """
        script = self[name]
        if self.replica_ack_timeout_ms is None or name not in DURABLE_SCRIPTS:
            # What AsyncScript.__call__ does for a plain client, less its per-call import
            # and argument copies (this is every hot RPC's one round trip).
            client = self.client
            run = self._run
            try:
                return await run(script.sha, keys, args)
            except NoScriptError:
                # A fresh server (restart, failover) lacks the script: load it, run again.
                script.sha = await client.script_load(script.script)
                return await run(script.sha, keys, args)
        return await self._call_replicated(script, keys, args)

    async def _call_replicated(
        self, script: AsyncScript, keys: Sequence[KeyT], args: Sequence[EncodableT]
    ) -> Any:
        for attempt in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", 1, self.replica_ack_timeout_ms)
                result, acked = await pipe.execute(raise_on_error=False)
            if isinstance(result, NoScriptError) and attempt == 0:
                # A fresh master (after a failover) lacks the script: load it, run again.
                # The script did not run, so the WAIT said nothing about this write.
                await self.client.script_load(script.script)
                continue
            if isinstance(result, Exception):
                raise result
            if isinstance(acked, Exception):
                raise acked
            _require_replica(int(acked))
            return result
        raise AssertionError("unreachable")  # pragma: no cover


def _evalsha(
    client: Redis,
) -> Callable[[str, Sequence[KeyT], Sequence[EncodableT]], Awaitable[Any]]:
    async def run(sha: str, keys: Sequence[KeyT], args: Sequence[EncodableT]) -> Any:
        return await client.evalsha(sha, len(keys), *keys, *args)

    return run


def _require_replica(acked: int) -> None:
    if acked < 1:
        raise BackendUnavailable(
            "write not confirmed by a replica", retry_after=_UNCONFIRMED_RETRY_AFTER
        )
