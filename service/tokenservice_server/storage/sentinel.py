"""Sentinel-managed connections that follow a failover (SPEC section 5, production topology).

Why these classes exist: redis-py's asyncio ``SentinelManagedConnection`` asks Sentinel for
the master only in ``connect()``, the path a pool takes for a fresh connection. A command
that fails on an established connection is retried by the client's retry loop, and that
loop reconnects through ``AbstractConnection.connect_check_health()``, which reuses
``self.host``/``self.port``: the *dead* master's address. With retries enabled every retry
(and the socket-connect retries nested inside each) hammers the old address, so a failover
that Sentinel completes in ~2 s took 8-9 s for the client (redis/redis-py#3874, measured in
TOOLCHAIN.md). Our ``connect_check_health`` re-reads the master address from the pool first.

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

from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection
from redis.exceptions import ConnectionError, ResponseError

from tokenservice_server.storage.lean import LeanSendMixin

__all__ = [
    "FailoverAwareConnection",
    "FailoverAwareSSLConnection",
    "NoReplicasError",
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
