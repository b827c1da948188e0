"""Redis clients that report command latency, errors and Sentinel failovers.

The storage layer stays free of Prometheus: a client reports to a :class:`CommandObserver`
(set after the connections are built, see ``redis_metrics.py``), and a Sentinel pool calls
``on_master_change`` when the master address Sentinel names changes. With no observer set
the overhead is one attribute read per command.

Timing wraps ``execute_command`` (single commands and EVALSHA) and ``Pipeline.execute``
(a whole batch, labelled PIPELINE or MULTI), so a measurement includes the client's
retries: it is the latency the service sees, not the server's.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ConnectionError, NoScriptError, ResponseError, TimeoutError

from tokenservice_server.storage.lean import LeanPoolMixin
from tokenservice_server.storage.sentinel import master_address
from tokenservice_server.storage.shared_connection import SHARED_COMMANDS, SharedConnection

__all__ = [
    "CommandObserver",
    "FailoverObservingPool",
    "InstrumentedRedis",
    "error_kind",
]

#: Distinct command labels per observer; anything past it is reported as OTHER, so a bug
#: that sends odd command names cannot grow the label set without bound.
MAX_COMMAND_LABELS = 64

_T = TypeVar("_T")


class CommandObserver(Protocol):
    def observe(self, command: str, seconds: float) -> None: ...

    def failed(self, command: str, error: Exception, seconds: float) -> None: ...


def error_kind(error: Exception) -> str:
    """A bounded label for a failed command."""
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, ConnectionError):
        return "connection"
    if isinstance(error, NoScriptError):
        return "noscript"
    if isinstance(error, ResponseError):
        return "response"
    return "other"


async def _observed(observer: CommandObserver, name: str, call: Awaitable[_T]) -> _T:
    """``call``'s result, its latency (or failure) reported to ``observer`` as ``name``."""
    started = time.perf_counter()
    try:
        result = await call
    except Exception as error:
        observer.failed(name, error, time.perf_counter() - started)
        raise
    observer.observe(name, time.perf_counter() - started)
    return result


def _command_name(args: tuple[Any, ...]) -> str:
    if not args:
        return "OTHER"
    name = args[0]
    if name in SHARED_COMMANDS:
        return str(name)  # upper case already: the hot path's commands
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return str(name).upper()


class InstrumentedRedis(Redis):
    """``redis.asyncio.Redis`` reporting every command and pipeline to ``observer``."""

    observer: CommandObserver | None = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        observer = self.observer
        if observer is None:
            return await self._execute(args, options)
        return await _observed(observer, _command_name(args), self._execute(args, options))

    async def _execute(self, args: tuple[Any, ...], options: dict[str, Any]) -> Any:
        """redis-py's ``execute_command`` for a pooled client, less its per-call
        OpenTelemetry-style recording (docs/performance.md): the same connection from the
        pool, the same retry policy (``conn.retry``, our ``BoundedRetry``), the same
        disconnect before each retry, the same send and parse. A shareable command goes
        to the pool's shared connection instead, under the same retry policy."""
        if self.single_connection_client or self.connection is not None:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        pool = self.connection_pool
        shared: SharedConnection | None = getattr(pool, "shared", None)
        if shared is not None and _shareable(args, options):
            # The retry calls the connection directly (no coroutine of ours around each
            # attempt: this is every hot RPC's round trip); the reply is parsed after.
            try:
                reply = await shared.call(args)
            except ResponseError:
                if EMPTY_RESPONSE in options:
                    return options[EMPTY_RESPONSE]
                raise
            if args[0] not in self.response_callbacks:
                return reply  # the scripts: no callback
            result = _parsed(self, args[0], reply, options)
            return await result if inspect.isawaitable(result) else result
        command_name = args[0]
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        started = time.monotonic()

        def failure_callback(error: Exception, failure_count: int) -> Any:
            return self._close_connection(conn, error, failure_count, started, command_name)

        try:
            return await conn.retry.call_with_retry(
                lambda: self._send_command_parse_response(conn, command_name, *args, **options),  # type: ignore[no-untyped-call]
                failure_callback,
                with_failure_count=True,
            )
        finally:
            await pool.release(conn)

    async def evalsha_keys(self, sha: str, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``EVALSHA sha len(keys) *keys *args``, as ``evalsha`` sends it. Every hot RPC's
        one round trip: on the shared connection, the command goes to it without the
        layers of ``evalsha`` -> ``execute_command`` (a script reply has no callback);
        anywhere else (a pinned connection, no shared connection), as ``evalsha``."""
        shared: SharedConnection | None = getattr(self.connection_pool, "shared", None)
        if shared is None or self.single_connection_client or self.connection is not None:
            return await self.evalsha(sha, len(keys), *keys, *args)
        command = ("EVALSHA", sha, len(keys), *keys, *args)
        observer = self.observer
        if observer is None:
            return await shared.call(command)
        return await _observed(observer, "EVALSHA", shared.call(command))

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = InstrumentedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.observer = self.observer
        return pipe


def _shareable(args: tuple[Any, ...], options: Mapping[str, Any]) -> bool:
    """A command the shared connection may carry (the reply decoded as usual)."""
    return bool(args) and args[0] in SHARED_COMMANDS and NEVER_DECODE not in options


async def _parsed_all(
    client: Redis, stack: Sequence[tuple[tuple[Any, ...], Mapping[str, Any]]], replies: list[Any]
) -> list[Any]:
    """The replies of a batch through their response callbacks; error replies are kept
    in place (as redis-py's pipelines collect them)."""
    parsed: list[Any] = []
    for (args, options), reply in zip(stack, replies, strict=True):
        if not isinstance(reply, ResponseError) and args[0] in client.response_callbacks:
            reply = _parsed(client, args[0], reply, options)
            if inspect.isawaitable(reply):
                reply = await reply
        parsed.append(reply)
    return parsed


def _parsed(client: Redis, name: Any, reply: Any, options: Mapping[str, Any]) -> Any:
    """``reply`` through the client's response callback for ``name``, as
    ``parse_response`` does (the result may be awaitable, as there)."""
    callback = client.response_callbacks.get(name)
    if callback is None:
        return reply
    options = {k: v for k, v in options.items() if k not in (EMPTY_RESPONSE, "keys")}
    return callback(reply, **options)


class InstrumentedPipeline(Pipeline):
    """A pipeline timed as one operation (PIPELINE, or MULTI for a transaction).

    A pipeline of ``SHARED_COMMANDS`` only, outside a transaction, is written to the
    pool's shared connection when it has one (``shared_connection``)."""

    observer: CommandObserver | None = None

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        observer = self.observer
        if observer is None or not self.command_stack:
            return await self._execute(raise_on_error)
        name = "MULTI" if self.is_transaction or self.explicit_transaction else "PIPELINE"
        return await _observed(observer, name, self._execute(raise_on_error))

    async def _execute(self, raise_on_error: bool) -> list[Any]:
        shared: SharedConnection | None = getattr(self.connection_pool, "shared", None)
        stack = self.command_stack
        if (
            shared is None
            or not stack
            or self.is_transaction
            or self.explicit_transaction
            or self.watching
            or self.scripts
            or self.connection is not None
            or not all(_shareable(args, options) for args, options in stack)
        ):
            return await super().execute(raise_on_error)
        try:
            return await self._shared_pipeline(shared, raise_on_error)
        finally:
            await self.reset()  # type: ignore[no-untyped-call]

    async def _shared_pipeline(self, shared: SharedConnection, raise_on_error: bool) -> list[Any]:
        stack = self.command_stack
        replies = await shared.call_many([args for args, _ in stack])
        response = await _parsed_all(self, stack, replies)
        if raise_on_error:
            self.raise_first_error(stack, response)
        return response


class FailoverObservingPool(LeanPoolMixin, SentinelConnectionPool):
    """A Sentinel master pool that reports when the master address changes, and learns
    of a promotion as early as Sentinel tells (``sentinel.master_address``)."""

    on_master_change: Callable[[tuple[str, int], tuple[str, int]], None] | None = None

    async def get_master_address(self) -> tuple[str, int]:
        previous = self.master_address
        address = await master_address(self.sentinel_manager, self.service_name)
        if self.is_master and address != previous:
            self.master_address = address
            # As redis-py does: idle connections reconnect to the new master when used.
            await self.disconnect(inuse_connections=False)
        hook = self.on_master_change
        if hook is not None and self.is_master and previous is not None and address != previous:
            hook(tuple(previous), tuple(address))  # type: ignore[arg-type]
        return address
