"""Composition root: builds the domain services on their Redis stores from settings."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from tokenservice_server.config import ConfigError, RedisTopology, Settings
from tokenservice_server.domain.access_check import AccessChecker
from tokenservice_server.domain.audit import AuditTrail
from tokenservice_server.domain.authentication import BearerAuthenticator
from tokenservice_server.domain.bootstrap import admin_client_spec
from tokenservice_server.domain.cache import CacheService
from tokenservice_server.domain.cache_policy import CacheLimits
from tokenservice_server.domain.client_directory import ClientDirectory
from tokenservice_server.domain.client_registry import ClientRegistryService
from tokenservice_server.domain.credentials import CredentialKind, SecretHasher, new_credential
from tokenservice_server.domain.grants.authorization_code import AuthorizationCodeGrant
from tokenservice_server.domain.grants.client_credentials import (
    ClientCredentialsGrant,
    TokenLifetimes,
)
from tokenservice_server.domain.grants.refresh_token import RefreshTokenGrant
from tokenservice_server.domain.introspection import Introspector
from tokenservice_server.domain.rate_limiting import RateLimitPolicy, TokenEndpointThrottle
from tokenservice_server.domain.revocation import Revoker
from tokenservice_server.domain.sessions import SessionService
from tokenservice_server.domain.stats_buffer import StatsBuffer
from tokenservice_server.domain.token_cache import TokenCache
from tokenservice_server.domain.token_lookup import TokenLookup
from tokenservice_server.logging import get_logger
from tokenservice_server.storage.audit_store import RedisAuditStore
from tokenservice_server.storage.cache_store import RedisCacheStore
from tokenservice_server.storage.client_store import RedisClientStore
from tokenservice_server.storage.connection import RedisConnections
from tokenservice_server.storage.grant_store import RedisGrantStore
from tokenservice_server.storage.rate_limits import (
    RedisAccessCheckStore,
    RedisRateLimitStore,
    RedisStatsStore,
)
from tokenservice_server.storage.scripts import ScriptRegistry
from tokenservice_server.storage.session_store import RedisSessionStore
from tokenservice_server.storage.token_store import RedisTokenStore

__all__ = [
    "ADMIN_CREDENTIALS_FILE",
    "Components",
    "bootstrap_embedded_admin",
    "build_components",
    "previous_peppers",
    "resolve_pepper",
]

ADMIN_CREDENTIALS_FILE = "admin-credentials.json"
_log = get_logger("tokenservice.wiring")
_PEPPER_FILE = "secret-pepper"


@dataclass(frozen=True)
class Components:
    registry: ClientRegistryService
    client_credentials: ClientCredentialsGrant
    authorization_code: AuthorizationCodeGrant
    refresh_token: RefreshTokenGrant
    introspector: Introspector
    revoker: Revoker
    sessions: SessionService
    authenticator: BearerAuthenticator
    clients: RedisClientStore
    tokens: RedisTokenStore
    cache: CacheService  # CacheService, on the cache DB
    access_checker: AccessChecker  # Envoy ext_authz Check
    token_throttle: TokenEndpointThrottle  # IssueToken rate limits
    check_stats: StatsBuffer  # Check and introspection counters, flushed to auth_stats
    audit: AuditTrail  # audit trail of admin actions (log + auth_audit stream)
    token_cache: TokenCache | None = None  # hot-token cache (token_cache.enabled)

    async def token_statistics(self) -> dict[str, int]:
        """``auth_stats`` and live counts, plus this replica's counts not flushed yet."""
        stats = await self.tokens.statistics()
        for name, amount in self.check_stats.pending.items():
            stats[name] = stats.get(name, 0) + amount
        return stats


def _write_private(path: Path, content: str) -> None:
    """Create ``path`` readable by its owner only (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(content)
    os.replace(temporary, path)


def resolve_pepper(settings: Settings) -> bytes:
    """The client-secret HMAC key: configured, or kept beside an embedded Valkey's data."""
    configured = settings.auth.secret_pepper
    if configured is not None:
        return configured.get_secret_value().encode("utf-8")
    if settings.redis.topology is not RedisTopology.EMBEDDED:
        raise ConfigError(
            "invalid setting auth.secret_pepper (env TOKENSERVICE_AUTH__SECRET_PEPPER): "
            "required when Redis is not embedded; every replica needs the same value "
            "(e.g. `openssl rand -base64 48` stored in a Kubernetes Secret)"
        )
    path = settings.redis.data_dir / _PEPPER_FILE
    if not path.exists():
        _write_private(path, secrets.token_urlsafe(48))
    return path.read_text(encoding="utf-8").strip().encode("utf-8")


def previous_peppers(settings: Settings) -> list[bytes]:
    """Former peppers still accepted while client-secret hashes are upgraded."""
    return [
        pepper.get_secret_value().encode("utf-8")
        for pepper in settings.auth.previous_secret_peppers
    ]


class _HashUpgrades:
    """Re-hashes, in the background, secrets that verified under a previous pepper."""

    def __init__(self, registry: ClientRegistryService) -> None:
        self._registry = registry
        self._pending: dict[str, asyncio.Task[None]] = {}

    def __call__(self, client_id: str, stored_hash: str, secret: str) -> None:
        if client_id in self._pending:
            return  # one upgrade per client at a time
        task = asyncio.get_running_loop().create_task(self._upgrade(client_id, stored_hash, secret))
        self._pending[client_id] = task
        task.add_done_callback(lambda _: self._pending.pop(client_id, None))

    async def _upgrade(self, client_id: str, stored_hash: str, secret: str) -> None:
        try:
            upgraded = await self._registry.upgrade_secret_hash(client_id, stored_hash, secret)
        except Exception as exc:  # opportunistic: the next authentication tries again
            _log.warning(
                "client_secret_rehash_failed", client_id=client_id, error=type(exc).__name__
            )
            return
        if upgraded:
            _log.info("client_secret_rehashed", client_id=client_id)


def build_components(
    settings: Settings, redis: RedisConnections, token_cache: TokenCache | None = None
) -> Components:
    """``token_cache``: the hot-token cache, kept current by a RevocationFeed the caller
    runs (app.py); None without one."""
    durable = settings.redis.durability == "replicated"
    scripts = ScriptRegistry(
        redis.auth,
        replica_ack_timeout_ms=settings.redis.replica_ack_timeout_ms if durable else None,
    )
    clients = RedisClientStore(redis.auth, scripts)
    audit_bound = settings.auth.audit_max_entries
    tokens = RedisTokenStore(redis.auth, scripts, audit_max_entries=audit_bound)
    clients.token_cache = tokens.token_cache = token_cache
    session_store = RedisSessionStore(redis.auth, scripts, audit_max_entries=audit_bound)
    session_store.token_cache = token_cache
    hasher = SecretHasher(resolve_pepper(settings), previous_peppers(settings))
    directory = ClientDirectory(clients, settings.auth.client_cache_size)
    registry = ClientRegistryService(clients, hasher, directory, time.time)
    hasher.on_outdated = _HashUpgrades(registry)
    lifetimes = TokenLifetimes(
        access_token=settings.auth.access_token_ttl,
        refresh_token=settings.auth.refresh_token_ttl,
    )
    grants = RedisGrantStore(redis.auth, scripts)
    grants.token_cache = token_cache
    auth = settings.auth
    limits = settings.rate_limit
    policy = RateLimitPolicy(**limits.model_dump())
    check_stats = StatsBuffer(RedisStatsStore(redis.auth))
    lookup = TokenLookup(tokens, token_cache)
    return Components(
        registry=registry,
        client_credentials=ClientCredentialsGrant(directory, tokens, hasher, lifetimes, time.time),
        authorization_code=AuthorizationCodeGrant(
            directory,
            grants,
            hasher,
            lifetimes,
            time.time,
            code_ttl=auth.code_ttl,
            allow_plain_pkce=auth.allow_plain_pkce,
        ),
        refresh_token=RefreshTokenGrant(
            directory, grants, hasher, lifetimes, time.time, reuse_grace=auth.refresh_reuse_grace
        ),
        introspector=Introspector(lookup, check_stats, time.time, auth.issuer),
        revoker=Revoker(directory, tokens, hasher, time.time),
        sessions=SessionService(session_store, time.time, auth.session_ttl),
        authenticator=BearerAuthenticator(lookup, time.time),
        clients=clients,
        tokens=tokens,
        cache=_cache_service(settings, redis),
        access_checker=AccessChecker(
            RedisAccessCheckStore(scripts, token_cache),
            policy,
            check_stats,
            time.time,
            realm=settings.ext_authz.realm,
            trust_forwarded_for=settings.ext_authz.trust_x_forwarded_for,
            token_cache=token_cache,
        ),
        token_throttle=TokenEndpointThrottle(RedisRateLimitStore(scripts), policy),
        check_stats=check_stats,
        audit=AuditTrail(RedisAuditStore(redis.auth, audit_bound), time.time),
        token_cache=token_cache,
    )


def _cache_service(settings: Settings, redis: RedisConnections) -> CacheService:
    # The cache DB has its own pool; its scripts are registered on that client.
    cache = settings.cache
    limits = CacheLimits(
        default_ttl=cache.default_ttl,
        max_ttl=cache.max_ttl,
        max_value_bytes=cache.max_value_bytes,
        max_key_bytes=cache.max_key_bytes,
        max_entries=cache.max_entries_per_namespace,
        max_batch=cache.max_batch,
        lease_ttl=cache.lease_ttl,
        max_lease_ttl=cache.max_lease_ttl,
    )
    return CacheService(RedisCacheStore(ScriptRegistry(redis.cache)), limits)


async def bootstrap_embedded_admin(components: Components, settings: Settings) -> Path:
    """Ensure the admin client exists and its credentials are in the data directory.

    The file (mode 0600) is the developer's way in: `make run`, then read it.
    """
    path = settings.redis.data_dir / ADMIN_CREDENTIALS_FILE
    client_id = settings.auth.admin_client_id
    secret = None
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("client_id") == client_id:
            secret = saved.get("client_secret")
    if not secret:
        secret = new_credential(CredentialKind.CLIENT_SECRET)
    await components.registry.bootstrap(client_id, admin_client_spec(), secret)
    _write_private(
        path, json.dumps({"client_id": client_id, "client_secret": secret}, indent=2) + "\n"
    )
    return path
