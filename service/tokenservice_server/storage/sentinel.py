"""Sentinel-managed connections that follow a failover (SPEC section 5, production topology).

Why these classes exist: redis-py's asyncio ``SentinelManagedConnection`` asks Sentinel for
the master only in ``connect()``, the path a pool takes for a fresh connection. A command
that fails on an established connection is retried by the client's retry loop, and that
loop reconnects through ``AbstractConnection.connect_check_health()``, which reuses
``self.host``/``self.port``: the *dead* master's address. With retries enabled every retry
(and the socket-connect retries nested inside each) hammers the old address, so a failover
that Sentinel completes in ~2 s took 8-9 s for the client (redis/redis-py#3874, measured in
TOOLCHAIN.md). Our ``connect_check_health`` re-reads the master address from the pool first.

A master that is still alive never breaks a connection, so nothing above would ever move
off it: during a graceful ``SENTINEL FAILOVER`` the old master stays a master for ~10 s
(until Sentinel's next INFO converts it), and the service kept reading from it (a token
revoked on the new master still passed Check) and writing to it (writes later discarded).
``follow_master`` asks Sentinel on every health probe and, when the master changed, drops
the idle connections and marks the busy ones to reconnect when released. Sentinel is asked
with ``GET-MASTER-ADDR-BY-NAME`` (``master_address``), which names the promoted replica as
soon as it is promoted; ``SENTINEL MASTERS`` (redis-py's ``discover_master``) keeps naming
the old master until every replica is reconfigured, ~1.5 s longer here.

Two more failover signals are turned into reconnects rather than surfaced as data errors:

* ``READONLY``: the node we are connected to was demoted to a replica. redis-py already
  turns it into a ``ConnectionError`` for master pools; we keep that behaviour.
* ``NOREPLICAS``: a master configured with ``min-replicas-to-write`` refused the write
  because it lost its replicas, which is what an old master looks like during a graceful
  failover (TOOLCHAIN.md measured ~10 s of these). The write was not executed, so it is safe
  to retry; we disconnect (the next attempt asks Sentinel again) and raise
  ``NoReplicasError``, a ``ConnectionError``, which the retry policy retries and the
  transport reports as UNAVAILABLE if it persists.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.exceptions import ConnectionError, ResponseError, TimeoutError

from tokenservice_server.storage.lean import LeanSendMixin

__all__ = [
    "FailoverAwareConnection",
    "FailoverAwareSSLConnection",
    "NoReplicasError",
    "follow_master",
    "master_address",
]


class NoReplicasError(ConnectionError):
    """The master refused a write for lack of replicas (``min-replicas-to-write``)."""


class FailoverAwareConnection(LeanSendMixin, SentinelManagedConnection):
    """A Sentinel-managed connection whose every reconnect asks Sentinel for the master."""

    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if self.is_connected:
            return
        if self.connection_pool.is_master:
            # The fix for redis/redis-py#3874: never reconnect to a remembered address.
            address = await self.connection_pool.get_master_address()
            self.host, self.port = address
        # One socket attempt: the caller (``connect()`` or the client's command retry loop)
        # already retries, and asks Sentinel again on each attempt through this method.
        await super().connect_check_health(check_health=check_health, retry_socket_connect=False)

    async def connect_to(self, address: tuple[str, int]) -> None:
        # ``connect()`` -> ``_connect_retry()`` resolved the address already (master or a
        # rotated replica); connect to exactly that one without asking Sentinel twice.
        self.host, self.port = address
        await SentinelManagedConnection.connect_check_health(
            self,
            check_health=self.connection_pool.check_connection,
            retry_socket_connect=False,
        )

    async def read_response(
        self,
        disable_decoding: bool = False,
        # Same signature as the method overridden (upstream types the flag as a float).
        timeout: float | None = None,  # noqa: ASYNC109
        *,
        disconnect_on_error: float | None = True,
        push_request: bool | None = False,
    ) -> Any:
        try:
            return await super().read_response(
                disable_decoding=disable_decoding,
                timeout=timeout,
                disconnect_on_error=disconnect_on_error,
                push_request=push_request,
            )
        except ResponseError as error:
            if self.connection_pool.is_master and str(error).startswith("NOREPLICAS"):
                await self.disconnect()
                raise NoReplicasError(
                    f"master {self.host}:{self.port} refused the write: {error}"
                ) from error
            raise


class FailoverAwareSSLConnection(FailoverAwareConnection, SentinelManagedSSLConnection):
    """``FailoverAwareConnection`` over TLS."""


async def follow_master(pool: SentinelConnectionPool) -> bool:
    """Ask Sentinel for the master; if it moved, no connection of ``pool`` talks to the
    old one after its current command. Returns True when the master moved; never raises
    for an unreachable Sentinel (the next call asks again)."""
    previous = pool.master_address
    try:
        # Also drops the idle connections when the address changed (redis-py).
        address = await pool.get_master_address()  # type: ignore[no-untyped-call]
    except (ConnectionError, TimeoutError):
        return False
    if previous is None or address == previous:
        return False
    # A connection busy right now finishes its command, then reconnects on release
    # (ConnectionPool.release) and so asks Sentinel for the new master.
    for connection in list(pool._in_use_connections):
        connection.mark_for_reconnect()  # type: ignore[no-untyped-call]
    return True


async def master_address(sentinel: Sentinel, service_name: str) -> tuple[str, int]:
    """The master the first answering sentinel names (the promoted replica already while
    a failover reconfigures the other replicas); ``MasterNotFoundError`` if none does."""
    errors = []
    for client in sentinel.sentinels:
        try:
            answer = await client.sentinel_get_master_addr_by_name(service_name)
        except (ConnectionError, TimeoutError) as error:
            errors.append(repr(error))
            continue
        if isinstance(answer, tuple | list) and len(answer) == 2:
            host, port = answer
            host = host.decode() if isinstance(host, bytes) else str(host)
            return host, int(port)
    raise MasterNotFoundError(f"no sentinel names a master for {service_name!r}: {errors}")
