"""A leaner per-command path through redis-py's asyncio client (docs/performance.md).

Profiled under load, one EVALSHA through redis-py 8 cost about 200 microseconds of client
CPU, against about 70 for sending the same bytes and reading the reply on a connection
already in hand: most of it is bookkeeping around the command, not the command. These
classes keep redis-py's connections, parser, retry policy, Sentinel handling, TLS, ACL
authentication and unix sockets, and drop only the per-call work we do not use:

* :class:`LeanPoolMixin`: the pool's ``get_connection``/``release`` without redis-py's
  OpenTelemetry-style recording (four awaited ``record_connection_count`` calls and a pool
  name built per command; we meter Redis ourselves in ``instrumented.py``), and without
  taking the pool lock when nobody holds it (taking a connection is synchronous). The
  after-release event is still dispatched when a credential provider (re-authentication)
  could listen for it. A connection is still checked before use (``ensure_connection``:
  connected, no unread data).
* ``LeanPoolMixin.share_connection``: the pool also keeps one shared, pipelined
  connection for the commands of the hot paths (``shared_connection.py``).
* :class:`LeanSendMixin`: ``send_packed_command`` writes without wrapping the write in
  ``asyncio.wait_for`` (a new Task per command) when the write cannot block: the bytes
  went to the socket at once (the transport buffers nothing), so ``drain()`` returns at
  once. Otherwise the socket timeout still bounds the drain. Errors, health checks and
  reconnects are redis-py's, unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.event import AsyncAfterConnectionReleasedEvent
from redis.exceptions import ConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tokenservice_server.storage.shared_connection import SharedConnection

__all__ = [
    "LeanConnection",
    "LeanConnectionPool",
    "LeanPoolMixin",
    "LeanSSLConnection",
    "LeanSendMixin",
    "LeanUnixDomainSocketConnection",
]


class LeanPoolMixin(ConnectionPool):
    """``get_connection``/``release`` with only the work this service needs."""

    #: The shared connection of the hot-path commands, once ``share_connection`` is called.
    shared: SharedConnection | None = None

    def share_connection(self) -> None:
        """Keep one shared, pipelined connection for ``SHARED_COMMANDS`` (the clients in
        ``instrumented.py`` use it; RESP2 and RESP3 alike, see ``shared_connection.py``)."""
        kwargs = self.connection_kwargs
        self.shared = SharedConnection(
            self.make_connection,
            retry=kwargs["retry"],
            socket_timeout=kwargs.get("socket_timeout"),
            follows_master=isinstance(self, SentinelConnectionPool) and self.is_master,
        )

    async def disconnect(self, inuse_connections: bool = True) -> None:
        # A new master (Sentinel), a reset or closing: the shared connection is not used
        # for new commands, and closes once the replies in flight are in.
        if self.shared is not None:
            self.shared.retire()
        await super().disconnect(inuse_connections)

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        if self._lock.locked():
            # disconnect()/reset() in progress: wait for it, as redis-py does.
            async with self._lock:
                connection = self.get_available_connection()  # type: ignore[no-untyped-call]
        else:
            connection = self.get_available_connection()  # type: ignore[no-untyped-call]
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        # A connection must go back to the pool it came from (KeyError otherwise).
        self._in_use_connections.remove(connection)
        try:
            if connection.should_reconnect():  # type: ignore[no-untyped-call]
                await connection.disconnect()
        finally:
            self._available_connections.append(connection)
        dispatcher = self._event_dispatcher
        if dispatcher is not None and self.connection_kwargs.get("credential_provider") is not None:
            event = AsyncAfterConnectionReleasedEvent(connection)  # type: ignore[no-untyped-call]
            await dispatcher.dispatch_async(event)


class LeanConnectionPool(LeanPoolMixin, ConnectionPool):
    """The pool of the standalone and embedded topologies."""


class LeanSendMixin(AbstractConnection):
    """``send_packed_command`` without a Task per command when the write cannot block."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        writer = self._writer
        if (
            writer is None
            or not self.is_connected
            or (
                check_health
                and self.health_check_interval
                and asyncio.get_running_loop().time() > self.next_health_check
            )
        ):
            # Connect or health-check first: redis-py's path, unchanged.
            await super().send_packed_command(command, check_health)
            return
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            writer.writelines(command)
            if self.socket_timeout and writer.transport.get_write_buffer_size():
                # The socket did not take it all: the drain may wait, bounded as before.
                await asyncio.wait_for(writer.drain(), self.socket_timeout)
            else:
                await writer.drain()  # returns at once: nothing is buffered
        except TimeoutError:  # asyncio's, from wait_for
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as e:
            await self.disconnect(nowait=True)
            if len(e.args) == 1:
                err_no, errmsg = "UNKNOWN", e.args[0]
            else:
                err_no, errmsg = e.args[0], e.args[1]
            raise ConnectionError(f"Error {err_no} while writing to socket. {errmsg}.") from e
        except BaseException:
            # As redis-py: a half-sent command leaves the connection unusable.
            await self.disconnect(nowait=True)
            raise


class LeanConnection(LeanSendMixin, Connection):
    pass


class LeanSSLConnection(LeanSendMixin, SSLConnection):
    pass


class LeanUnixDomainSocketConnection(LeanSendMixin, UnixDomainSocketConnection):
    pass
