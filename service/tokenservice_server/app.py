"""The server process: wires storage, services, health, reflection and metrics together.

Start-up order matters: Redis first (the embedded Valkey must be up before anything can
answer), then the gRPC listener, then the health probe, so the first health answer is
already true. Shutdown runs the other way round: health NOT_SERVING, stop accepting,
drain in-flight RPCs within the grace period, close Redis, stop the embedded server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass

import grpc
from envoy.service.auth.v3 import external_auth_pb2
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from tokenservice.v1 import cache_service_pb2, client_registry_pb2, token_service_pb2
from tokenservice_server.config import (
    RedisTopology,
    ServerTlsSettings,
    Settings,
    parse_host_port,
)
from tokenservice_server.domain.token_cache import TokenCache
from tokenservice_server.logging import get_logger
from tokenservice_server.metrics import MetricsServer, ServerMetrics
from tokenservice_server.redis_metrics import instrument_redis
from tokenservice_server.storage.connection import RedisConnections, open_redis
from tokenservice_server.storage.revocation_feed import RevocationFeed, TokenCacheMetrics
from tokenservice_server.transport.cache_service import CacheServiceServicer
from tokenservice_server.transport.caller_auth import CallerAuthInterceptor
from tokenservice_server.transport.client_registry import ClientRegistryServicer
from tokenservice_server.transport.ext_authz import AuthorizationServicer
from tokenservice_server.transport.health import HealthMonitor
from tokenservice_server.transport.interceptors import ObservabilityInterceptor
from tokenservice_server.transport.mtls import ClientIdentityInterceptor
from tokenservice_server.transport.registration import GenericRegistration
from tokenservice_server.transport.server_tls import server_credentials
from tokenservice_server.transport.token_service import TokenServiceServicer
from tokenservice_server.transport.unimplemented import service_handler
from tokenservice_server.wiring import Components, bootstrap_embedded_admin, build_components

__all__ = ["SERVICES", "Application", "BoundAddresses", "serve"]

_log = get_logger("tokenservice.server")

# Every service this server answers, in the order `grpcurl list` shows them.
SERVICES: tuple[ServiceDescriptor, ...] = (
    token_service_pb2.DESCRIPTOR.services_by_name["TokenService"],
    client_registry_pb2.DESCRIPTOR.services_by_name["ClientRegistry"],
    cache_service_pb2.DESCRIPTOR.services_by_name["CacheService"],
    external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"],
)

_MiB = 1024 * 1024
_STOP_MARGIN = 5.0  # seconds past the drain grace before a stuck server stop is abandoned
_CLOSE_TIMEOUT = 10.0  # seconds for background tasks and Redis pools to close
_CHANNEL_OPTIONS: Sequence[tuple[str, int]] = (
    # A second server on a taken port must fail loudly, not share it silently.
    ("grpc.so_reuseport", 0),
    # grpc.max_receive_message_length comes from settings.max_message_bytes (start()).
    # Responses may batch many cache values.
    ("grpc.max_send_message_length", 16 * _MiB),
    # Let idle sidecar connections be probed instead of silently dying behind NAT.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


@dataclass(frozen=True)
class BoundAddresses:
    """Where a started server actually listens (ports resolved when 0 was asked for)."""

    grpc_host: str
    grpc_port: int
    metrics_host: str
    metrics_port: int

    @property
    def grpc_target(self) -> str:
        return f"{self.grpc_host}:{self.grpc_port}"


def _server_credentials(tls: ServerTlsSettings) -> grpc.ServerCredentials:
    # Re-read from disk when the files change: renewals need no restart.
    return server_credentials(tls)


class Application:
    """One running tokenservice: call :meth:`start`, then :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        extra_handlers: Sequence[grpc.GenericRpcHandler] = (),
        *,
        reuse_port: bool = False,
    ) -> None:
        """``reuse_port``: share the gRPC port with sibling processes (``serve --workers``)."""
        self.settings = settings
        self._reuse_port = reuse_port
        self._extra_handlers = tuple(extra_handlers)
        self.metrics = ServerMetrics()
        self._stack = AsyncExitStack()
        self._server: grpc.aio.Server | None = None
        self._metrics_server: MetricsServer | None = None
        self._health: HealthMonitor | None = None
        self._redis: RedisConnections | None = None
        self.components: Components | None = None
        self.revocation_feed: RevocationFeed | None = None  # with token_cache.enabled
        self.addresses: BoundAddresses | None = None

    @property
    def redis(self) -> RedisConnections:
        assert self._redis is not None, "start() first"
        return self._redis

    @property
    def health(self) -> HealthMonitor:
        assert self._health is not None, "start() first"
        return self._health

    async def start(self) -> BoundAddresses:
        settings = self.settings
        try:
            self._redis = await self._stack.enter_async_context(
                open_redis(settings.redis, log=_log)
            )
            instrument_redis(self._redis, self.metrics)
            token_cache = None
            if settings.token_cache.enabled:
                token_cache = TokenCache(
                    settings.token_cache.max_entries, settings.token_cache.ttl, time.monotonic
                )
                cache_metrics = TokenCacheMetrics(self.metrics.registry, token_cache)
                self.revocation_feed = RevocationFeed(
                    self._redis.auth,
                    token_cache,
                    cache_metrics,
                    ping_interval=settings.token_cache.ping_interval,
                )
                await self._stack.enter_async_context(self.revocation_feed.running())
            components = build_components(settings, self._redis, token_cache)
            self.components = components
            # Closed before Redis (the stack unwinds in reverse): the last counts get written.
            await self._stack.enter_async_context(
                components.check_stats.running(settings.ext_authz.stats_flush_interval)
            )
            if settings.redis.topology is RedisTopology.EMBEDDED:
                credentials = await bootstrap_embedded_admin(components, settings)
                _log.info(
                    "admin_client_ready",
                    client_id=settings.auth.admin_client_id,
                    credentials_file=str(credentials),
                )
            server = grpc.aio.server(
                interceptors=[
                    ObservabilityInterceptor(self.metrics),
                    *(
                        [ClientIdentityInterceptor(settings.tls.allowed_client_identities)]
                        if settings.tls.client_ca_file is not None
                        else []
                    ),
                    CallerAuthInterceptor(components.authenticator),
                ],
                options=(
                    *(option for option in _CHANNEL_OPTIONS if option[0] != "grpc.so_reuseport"),
                    ("grpc.so_reuseport", int(self._reuse_port)),
                    ("grpc.max_receive_message_length", settings.max_message_bytes),
                ),
                maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
            )
            implementations: dict[str, object] = {
                "tokenservice.v1.TokenService": TokenServiceServicer(
                    components.client_credentials,
                    components.authorization_code,
                    components.refresh_token,
                    components.introspector,
                    components.revoker,
                    components.sessions,
                    components.token_statistics,
                    components.token_throttle,
                    self.metrics,
                    components.audit,
                ),
                "tokenservice.v1.ClientRegistry": ClientRegistryServicer(
                    components.registry, components.audit
                ),
                "tokenservice.v1.CacheService": CacheServiceServicer(
                    components.cache, self.metrics
                ),
                "envoy.service.auth.v3.Authorization": AuthorizationServicer(
                    components.access_checker, self.metrics, settings.ext_authz.headers_to_remove
                ),
            }
            for service in SERVICES:
                implementation = implementations.get(service.full_name)
                server.add_generic_rpc_handlers((service_handler(service, implementation),))
            if self._extra_handlers:
                # Embedders (and tests) may serve more services behind the same interceptors.
                server.add_generic_rpc_handlers(self._extra_handlers)
            self._health = HealthMonitor(
                probe=self._redis.ping,
                services=[service.full_name for service in SERVICES],
                metrics=self.metrics,
                interval=settings.health_interval,
            )
            # Generic handlers only (transport/registration.py: registered methods made
            # every RPC slower); reflection as enable_server_reflection sets it up.
            generic = GenericRegistration(server)
            health_pb2_grpc.add_HealthServicer_to_server(self._health.servicer, generic)
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
                reflection.aio.ReflectionServicer(
                    [
                        *(service.full_name for service in SERVICES),
                        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                        reflection.SERVICE_NAME,
                    ]
                ),
                generic,
            )
            host, port = parse_host_port(settings.listen)
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if settings.tls.enabled:
                bound = server.add_secure_port(address, _server_credentials(settings.tls))
            else:
                bound = server.add_insecure_port(address)
            self._server = server
            metrics_host, metrics_port = parse_host_port(settings.metrics_listen)
            self._metrics_server = MetricsServer(self.metrics, metrics_host, metrics_port)
            metrics_bound = self._metrics_server.start()
            await self._health.start()
            await server.start()
        except BaseException:
            await self._close_resources()
            raise
        self.addresses = BoundAddresses(host, bound, metrics_host, metrics_bound)
        _log.info(
            "server_started",
            grpc=self.addresses.grpc_target,
            metrics=f"{metrics_host}:{metrics_bound}",
            redis=settings.redis.topology.value,
            tls=settings.tls.enabled,
            serving=self._health.serving,
        )
        return self.addresses

    async def stop(self, grace: float | None = None) -> None:
        """Drain and release everything; safe to call more than once."""
        grace = self.settings.shutdown_grace if grace is None else grace
        if self._health is not None:
            await self._health.shutdown()
        if self._server is not None:
            _log.info("server_draining", grace_seconds=grace)
            try:
                # grpc cancels what is left at the end of the grace; the margin only
                # guards against a stop that never returns.
                async with asyncio.timeout(grace + _STOP_MARGIN):
                    await self._server.stop(grace)
            except TimeoutError:
                _log.error("server_stop_timeout", grace_seconds=grace)
            self._server = None
        await self._close_resources()
        _log.info("server_stopped")

    async def _close_resources(self) -> None:
        """Release Redis and background tasks within a bounded time: a Redis that hangs
        must not hang shutdown (the embedded server is stopped whatever happens)."""
        if self._metrics_server is not None:
            self._metrics_server.stop()
            self._metrics_server = None
        embedded = self._redis.embedded if self._redis is not None else None
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._stack.aclose()
        except TimeoutError:
            _log.error("shutdown_close_timeout", seconds=_CLOSE_TIMEOUT)
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
        self._redis = None


def settle_heap() -> None:
    """Move everything alive once the server is up (modules, protobuf descriptors,
    wiring: some 200,000 objects) out of the cyclic collector's sight.

    They live as long as the process, yet every full (generation 2) collection walked
    them all: a 50-60 ms stop of the event loop, every few seconds under load, which was
    the p99 of every RPC around it (docs/performance.md, eighth pass). Frozen, a full
    collection walks only what the RPCs have made since (the bounded caches), and
    nothing frozen is ever freed, which for these objects changes nothing."""
    gc.collect()
    gc.freeze()


async def serve(settings: Settings, *, reuse_port: bool = False) -> int:
    """Run until SIGTERM or SIGINT, then drain; return the process exit status."""
    app = Application(settings, reuse_port=reuse_port)
    await app.start()
    settle_heap()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        _log.info("shutdown_requested")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await app.stop()
    return 0
