"""``tokenservice init``: prepare Redis for the service (the Kubernetes init Job).

Idempotent: running it twice changes nothing the second time. It waits for Redis within
a bounded time (logging progress), then

1. writes the service configuration into the ``auth_config`` hash (auth DB) and the
   ``cache_config`` hash (cache DB): the configuration file and environment are the one
   source of truth, Redis holds a copy for tooling (``redis-cli HGETALL auth_config``),
   and nothing reads it back into the service;
2. records the data-model version (``auth_config`` field ``data_model_version``);
3. loads every Lua script into the script cache (SCRIPT LOAD through both pools);
4. creates or converges the bootstrap admin client to the configured secret;
5. creates or converges the clients listed in ``auth.clients_file`` (YAML).

It prints a JSON object naming what it did per item ("created", "updated",
"unchanged", or the number of scripts loaded) and ``"changed"``: whether anything did.
Only fields it owns are written: a namespace's own cap (``{ns}:max_entries`` of
``cache_config``) set by an operator is left alone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from tokenservice_server.config import ConfigError, Settings
from tokenservice_server.domain.bootstrap import admin_client_spec
from tokenservice_server.domain.clients import ClientSpec, ClientType, GrantType, validate_spec
from tokenservice_server.domain.errors import DomainError
from tokenservice_server.logging import get_logger
from tokenservice_server.storage import cache_keys
from tokenservice_server.storage.connection import RedisConnections, open_redis
from tokenservice_server.storage.data_model import DATA_MODEL_VERSION
from tokenservice_server.storage.scripts import ScriptRegistry
from tokenservice_server.wiring import build_components

__all__ = [
    "AUTH_CONFIG",
    "ClientEntry",
    "admin_secret",
    "auth_config_fields",
    "cache_config_fields",
    "load_clients_file",
    "run_init",
    "wait_for_redis",
]

AUTH_CONFIG = "auth_config"

_log = get_logger("tokenservice.init")
_MIN_SECRET = 32
_CLIENTS_SETTING = "auth.clients_file (env TOKENSERVICE_AUTH__CLIENTS_FILE)"


def admin_secret(settings: Settings) -> str:
    auth = settings.auth
    if auth.admin_client_secret is not None:
        secret = auth.admin_client_secret.get_secret_value()
        source = "auth.admin_client_secret (env TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET)"
    elif auth.admin_client_secret_file is not None:
        source = "auth.admin_client_secret_file (env TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET_FILE)"
        try:
            secret = auth.admin_client_secret_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"invalid setting {source}: {exc}") from None
    else:
        raise ConfigError(
            "invalid setting auth.admin_client_secret (env TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET)"
            ": init needs the admin secret, or auth.admin_client_secret_file"
        )
    if len(secret) < _MIN_SECRET:
        raise ConfigError(f"invalid setting {source}: at least {_MIN_SECRET} characters")
    return secret


# -- the clients file -----------------------------------------------------------------------


class ClientEntry(BaseModel):
    """One client of ``auth.clients_file``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    client_id: str = Field(alias="id")
    display_name: str = Field(default="", alias="name")
    type: Literal["confidential", "public"] = "confidential"
    grant_types: list[GrantType] = Field(default_factory=list, alias="grants")
    scopes: list[str] = Field(default_factory=list)
    redirect_uris: list[str] = Field(default_factory=list)
    audiences: list[str] = Field(default_factory=list)
    access_token_ttl: int = 0
    refresh_token_ttl: int = 0
    rate_limit_per_minute: int = 0
    secret: str | None = Field(default=None, repr=False)
    secret_file: Path | None = None

    def spec(self) -> ClientSpec:
        return ClientSpec(
            display_name=self.display_name,
            client_type=ClientType(self.type),
            grant_types=tuple(self.grant_types),
            scopes=tuple(self.scopes),
            redirect_uris=tuple(self.redirect_uris),
            audiences=tuple(self.audiences),
            access_token_ttl=self.access_token_ttl,
            refresh_token_ttl=self.refresh_token_ttl,
            rate_limit_per_minute=self.rate_limit_per_minute,
        )

    def resolved_secret(self, base: Path) -> str | None:
        """The clear secret (``secret`` or the file's content); None for public clients."""
        where = f"invalid setting {_CLIENTS_SETTING}: client {self.client_id!r}"
        if self.type == "public":
            if self.secret is not None or self.secret_file is not None:
                raise ConfigError(f"{where}: a public client has no secret")
            return None
        if (self.secret is None) == (self.secret_file is None):
            raise ConfigError(f"{where}: a confidential client needs secret or secret_file")
        if self.secret_file is not None:
            path = self.secret_file if self.secret_file.is_absolute() else base / self.secret_file
            try:
                secret = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        else:
            secret = self.secret or ""
        if len(secret) < _MIN_SECRET:
            raise ConfigError(f"{where}: the secret needs at least {_MIN_SECRET} characters")
        return secret


def load_clients_file(path: Path) -> list[tuple[ClientEntry, ClientSpec, str | None]]:
    """Parse and validate every client (a list, or a mapping with a ``clients`` list)."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"invalid setting {_CLIENTS_SETTING}: {exc}") from None
    if isinstance(loaded, dict) and set(loaded) == {"clients"}:
        loaded = loaded["clients"]
    if loaded is None:
        loaded = []
    if not isinstance(loaded, list):
        raise ConfigError(f"invalid setting {_CLIENTS_SETTING}: expected a list of clients")
    clients = []
    seen: set[str] = set()
    for index, raw in enumerate(loaded):
        try:
            entry = ClientEntry.model_validate(raw)
            spec = validate_spec(entry.spec())
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, item['loc']))}: {item['msg']}" for item in exc.errors()
            )
            raise ConfigError(
                f"invalid setting {_CLIENTS_SETTING}: entry {index}: {problems}"
            ) from None
        except DomainError as exc:
            raise ConfigError(
                f"invalid setting {_CLIENTS_SETTING}: entry {index}: {exc.message}"
            ) from None
        if entry.client_id in seen:
            raise ConfigError(
                f"invalid setting {_CLIENTS_SETTING}: client {entry.client_id!r} listed twice"
            )
        seen.add(entry.client_id)
        clients.append((entry, spec, entry.resolved_secret(path.parent)))
    return clients


# -- configuration copies -------------------------------------------------------------------


def auth_config_fields(settings: Settings) -> dict[str, str]:
    """What ``auth_config`` holds: the auth settings that matter to tooling (no secrets)."""
    auth, limits = settings.auth, settings.rate_limit
    fields: dict[str, Any] = {
        "data_model_version": DATA_MODEL_VERSION,
        "issuer": auth.issuer,
        "access_token_ttl": auth.access_token_ttl,
        "refresh_token_ttl": auth.refresh_token_ttl,
        "code_ttl": auth.code_ttl,
        "session_ttl": auth.session_ttl,
        "refresh_reuse_grace": auth.refresh_reuse_grace,
        "allow_plain_pkce": int(auth.allow_plain_pkce),
        "admin_client_id": auth.admin_client_id,
        "audit_max_entries": auth.audit_max_entries,
        "previous_secret_peppers": len(auth.previous_secret_peppers),  # a count, never a value
    }
    for name, value in limits.model_dump().items():
        fields[f"rate_limit_{name}"] = value
    return {name: str(value) for name, value in fields.items()}


def cache_config_fields(settings: Settings) -> dict[str, str]:
    """Service-wide cache settings; their names hold no ``:``, unlike ``{ns}:max_entries``."""
    return {name: str(value) for name, value in settings.cache.model_dump().items()}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def _converge_hash(redis: Redis, key: str, wanted: dict[str, str]) -> str:
    """HSET the fields of ``wanted`` that differ; "created", "updated" or "unchanged"."""
    current = {_text(k): _text(v) for k, v in (await redis.hgetall(key)).items()}
    changed = {name: value for name, value in wanted.items() if current.get(name) != value}
    if not changed:
        return "unchanged"
    await redis.hset(key, mapping=changed)  # type: ignore[arg-type]
    return "updated" if current else "created"


async def _load_scripts(client: Redis) -> int:
    """SCRIPT LOAD what the server's script cache lacks; the number loaded."""
    registry = ScriptRegistry(client)
    scripts = [registry[name] for name in registry]
    present = await client.script_exists(*(script.sha for script in scripts))
    loaded = 0
    for script, exists in zip(scripts, present, strict=True):
        if not exists:
            await client.script_load(script.script)
            loaded += 1
    return loaded


async def wait_for_redis(redis: RedisConnections, within: float) -> None:
    started = time.monotonic()
    attempt = 0
    while not await redis.ping():
        attempt += 1
        waited = time.monotonic() - started
        if waited >= within:
            raise TimeoutError(f"Redis did not answer within {within:.0f} s ({redis.target})")
        _log.info("waiting_for_redis", target=redis.target, attempt=attempt, waited_s=round(waited))
        await asyncio.sleep(min(2.0, 0.2 * 2**attempt))


async def run_init(settings: Settings, *, wait_timeout: float) -> dict[str, Any]:
    """Returns what changed, e.g. {"admin_client": "created", ..., "changed": true}."""
    secret = admin_secret(settings)
    clients_file = settings.auth.clients_file
    listed = load_clients_file(clients_file) if clients_file is not None else []
    report: dict[str, Any] = {}
    async with open_redis(settings.redis, log=_log) as redis:
        await wait_for_redis(redis, wait_timeout)
        components = build_components(settings, redis)
        report["auth_config"] = await _converge_hash(
            redis.auth, AUTH_CONFIG, auth_config_fields(settings)
        )
        report["cache_config"] = await _converge_hash(
            redis.cache, cache_keys.CONFIG, cache_config_fields(settings)
        )
        report["data_model_version"] = DATA_MODEL_VERSION
        loaded = await _load_scripts(redis.auth) + await _load_scripts(redis.cache)
        report["scripts_loaded"] = loaded
        report["admin_client"] = await components.registry.bootstrap(
            settings.auth.admin_client_id, admin_client_spec(), secret
        )
        outcomes: dict[str, str] = {}
        for entry, spec, client_secret in listed:
            try:
                outcomes[entry.client_id] = await components.registry.bootstrap(
                    entry.client_id, spec, client_secret
                )
            except DomainError as exc:
                raise ConfigError(
                    f"invalid setting {_CLIENTS_SETTING}: client {entry.client_id!r}: {exc.message}"
                ) from None
        report["clients"] = outcomes
    report["changed"] = (
        loaded > 0
        or any(report[item] != "unchanged" for item in ("auth_config", "cache_config"))
        or report["admin_client"] != "unchanged"
        or any(outcome != "unchanged" for outcome in outcomes.values())
    )
    for item, outcome in report.items():
        _log.info("init_step", item=item, outcome=outcome)
    return report
