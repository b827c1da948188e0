"""Service configuration: one source of truth, layered file < environment < command line.

Every setting has an environment variable ``TOKENSERVICE_<NAME>``; nested settings use a
double underscore (``TOKENSERVICE_REDIS__URL``). A YAML file (``--config`` or
``TOKENSERVICE_CONFIG``) may hold any of them with the same nesting.
"""

from __future__ import annotations

import ipaddress
import re
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = [
    "ENV_PREFIX",
    "AuthSettings",
    "CacheSettings",
    "ConfigError",
    "ExtAuthzSettings",
    "RateLimitSettings",
    "RedisSettings",
    "RedisTopology",
    "ServerTlsSettings",
    "Settings",
    "TlsClientSettings",
    "TokenCacheSettings",
    "load_settings",
    "parse_host_port",
]

ENV_PREFIX = "TOKENSERVICE_"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names it."""


def parse_host_port(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6); raise ValueError naming the problem."""
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    host = host or default_host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port must be a number 0-65535, got {port_text!r}")
    return host, int(port_text)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TlsClientSettings(_Strict):
    """TLS towards Redis (data nodes and sentinels)."""

    enabled: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class RedisTopology(StrEnum):
    EMBEDDED = "embedded"
    STANDALONE = "standalone"
    SENTINEL = "sentinel"


class RedisSettings(_Strict):
    """Where the data lives. No ``url`` and no ``sentinels`` means the embedded Valkey."""

    url: str | None = Field(default=None, description="redis://, rediss:// or unix:// URL")
    sentinels: list[str] = Field(default_factory=list, description="sentinel HOST:PORT list")
    master_name: str = "tokenservice"
    username: str | None = Field(default=None, description="ACL user for the auth DB")
    password: SecretStr | None = None
    cache_username: str | None = Field(default=None, description="ACL user for the cache DB")
    cache_password: SecretStr | None = None
    sentinel_username: str | None = None
    sentinel_password: SecretStr | None = None
    auth_db: int = Field(default=0, ge=0, le=15)
    cache_db: int = Field(default=1, ge=0, le=15)
    tls: TlsClientSettings = TlsClientSettings()
    socket_timeout: float = Field(default=2.0, gt=0, le=60)
    connect_timeout: float = Field(default=1.0, gt=0, le=60)
    fail_fast_after: float = Field(
        default=5.0, ge=0, le=300, description="seconds of outage before calls stop retrying"
    )
    max_connections: int = Field(default=128, ge=1, le=10_000)
    shared_connection: bool = Field(
        default=True,
        description="hot-path commands of concurrent calls share one pipelined connection",
    )
    data_dir: Path = Field(default=Path("var"), description="embedded Valkey data directory")
    embedded_port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    durability: Literal["async", "replicated"] = Field(
        default="async",
        description="replicated: state changes wait for a replica (WAIT 1) before acknowledging",
    )
    replica_ack_timeout_ms: int = Field(
        default=500, ge=1, le=60_000, description="how long a replicated write waits (WAIT)"
    )

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return url

    @field_validator("sentinels")
    @classmethod
    def _sentinel_addresses(cls, sentinels: list[str]) -> list[str]:
        for address in sentinels:
            parse_host_port(address)
        return sentinels

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.url is not None and self.sentinels:
            raise ValueError("set either url or sentinels, not both")
        if self.auth_db == self.cache_db and self.topology is not RedisTopology.EMBEDDED:
            # Isolation of auth data from cache data is part of the data model (SPEC 4).
            raise ValueError("auth_db and cache_db must differ")
        return self

    @property
    def topology(self) -> RedisTopology:
        if self.sentinels:
            return RedisTopology.SENTINEL
        if self.url:
            return RedisTopology.STANDALONE
        return RedisTopology.EMBEDDED


class ServerTlsSettings(_Strict):
    """TLS (and optionally mTLS) for the gRPC listener."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = Field(default=None, description="require client certs (mTLS)")
    allowed_client_identities: list[str] = Field(
        default_factory=list,
        description="mTLS: client-certificate identities (CN or SAN) allowed; empty: any "
        "certificate the client CA signed",
    )

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file needs cert_file and key_file")
        if self.allowed_client_identities and self.client_ca_file is None:
            raise ValueError("allowed_client_identities needs client_ca_file (mTLS)")
        return self


class AuthSettings(_Strict):
    """Token lifetimes, client-secret hashing and the bootstrap admin client."""

    secret_pepper: SecretStr | None = Field(
        default=None, description="HMAC key for client-secret hashes (32+ random bytes)"
    )
    previous_secret_peppers: list[SecretStr] = Field(
        default_factory=list,
        description="former peppers still accepted (rotation); hashes are upgraded on use",
    )
    clients_file: Path | None = Field(
        default=None, description="YAML list of clients init creates or converges"
    )
    audit_max_entries: int = Field(
        default=10_000, ge=100, le=10_000_000, description="length bound of the auth_audit stream"
    )
    access_token_ttl: int = Field(default=900, ge=1, le=86_400, description="seconds")
    refresh_token_ttl: int = Field(default=604_800, ge=60, le=31_536_000, description="seconds")
    code_ttl: int = Field(default=600, ge=1, le=3600, description="seconds")
    session_ttl: int = Field(default=3600, ge=60, le=2_592_000, description="seconds")
    issuer: str = Field(default="tokenservice", min_length=1, max_length=256)
    admin_client_id: str = Field(default="tokenservice-admin", pattern=r"^[A-Za-z0-9._~-]{1,128}$")
    admin_client_secret: SecretStr | None = Field(
        default=None, description="bootstrap secret of the admin client (init)"
    )
    admin_client_secret_file: Path | None = Field(
        default=None, description="file holding the admin client's secret (init)"
    )
    client_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)
    allow_plain_pkce: bool = Field(default=False, description="accept PKCE method plain")
    refresh_reuse_grace: float = Field(
        default=0.0, ge=0, le=60, description="seconds a rotated refresh token may be reused once"
    )

    @field_validator("secret_pepper")
    @classmethod
    def _pepper_length(cls, pepper: SecretStr | None) -> SecretStr | None:
        if pepper is not None and len(pepper.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return pepper

    @field_validator("previous_secret_peppers")
    @classmethod
    def _previous_lengths(cls, peppers: list[SecretStr]) -> list[SecretStr]:
        for pepper in peppers:
            if len(pepper.get_secret_value()) < 32:
                raise ValueError("every pepper must be at least 32 characters")
        return peppers


class RateLimitSettings(_Strict):
    """Requests per ``period`` per bucket (SPEC section 4), counted exactly in Redis (GCRA).

    0 means no limit. A client's registered ``rate_limit_per_minute`` replaces
    ``per_client`` and ``token_per_client`` for that client.
    """

    period: int = Field(default=60, ge=1, le=86_400, description="seconds the limits span")
    per_ip: int = Field(default=50, ge=0, le=10_000_000, description="Check, per source IP")
    per_client: int = Field(default=1000, ge=0, le=10_000_000, description="Check, per client")
    per_route: int = Field(
        default=100, ge=0, le=10_000_000, description="Check, per client on a rate-limited route"
    )
    token_per_ip: int = Field(default=50, ge=0, le=10_000_000, description="IssueToken, per IP")
    token_per_client: int = Field(
        default=1000, ge=0, le=10_000_000, description="IssueToken, per client id"
    )


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")


class ExtAuthzSettings(_Strict):
    """Envoy ext_authz Check (``envoy.service.auth.v3.Authorization``)."""

    realm: str = Field(
        default="tokenservice",
        min_length=1,
        max_length=128,
        description="realm of the WWW-Authenticate challenge (RFC 6750 section 3)",
    )
    headers_to_remove: list[str] = Field(
        default_factory=lambda: ["authorization"],
        description="request headers Envoy drops before the upstream on an allowed request",
    )
    trust_x_forwarded_for: bool = Field(
        default=False,
        description="rate-limit by the first x-forwarded-for hop (only behind an edge proxy "
        "that overwrites the header)",
    )
    stats_flush_interval: float = Field(
        default=1.0, gt=0, le=300, description="seconds between writes of the check counters"
    )

    @field_validator("realm")
    @classmethod
    def _printable_realm(cls, realm: str) -> str:
        if not realm.isprintable() or '"' in realm or "\\" in realm:
            raise ValueError("printable characters other than '\"' and '\\'")
        return realm

    @field_validator("headers_to_remove")
    @classmethod
    def _header_names(cls, names: list[str]) -> list[str]:
        lowered = [name.strip().lower() for name in names]
        for name in lowered:
            if not _HEADER_NAME.match(name) or name.startswith(":"):
                raise ValueError(f"not an HTTP header name: {name!r}")
        return lowered


class CacheSettings(_Strict):
    """CacheService bounds (SPEC section 3). A namespace's own entry cap, when it needs one,
    is the ``{namespace}:max_entries`` field of the ``cache_config`` hash in the cache DB."""

    default_ttl: int = Field(default=86_400, ge=1, description="seconds, when a write names none")
    max_ttl: int = Field(default=2_592_000, ge=1, le=31_536_000, description="seconds")
    # A value must fit in one request (max_message_bytes) with room to spare.
    max_value_bytes: int = Field(default=1_048_576, ge=1, le=8_388_608)
    max_key_bytes: int = Field(default=512, ge=1, le=4096)
    max_entries_per_namespace: int = Field(default=10_000, ge=1, le=10_000_000)
    max_batch: int = Field(default=100, ge=1, le=1000, description="keys per batch call")
    lease_ttl: int = Field(default=10, ge=1, description="fill-lease seconds (stampede guard)")
    max_lease_ttl: int = Field(default=60, ge=1, le=3600, description="seconds")

    @model_validator(mode="after")
    def _defaults_within_bounds(self) -> Self:
        if self.default_ttl > self.max_ttl:
            raise ValueError("default_ttl must not exceed max_ttl")
        if self.lease_ttl > self.max_lease_ttl:
            raise ValueError("lease_ttl must not exceed max_lease_ttl")
        return self


class TokenCacheSettings(_Strict):
    """The in-process hot-token cache (``domain/token_cache.py``): live access tokens for
    Check and caller authentication, dropped on every replica when a revocation is
    published on ``auth:revocations``; bypassed while that channel is down."""

    enabled: bool = Field(default=True, description="cache live access tokens in process")
    max_entries: int = Field(default=100_000, ge=1, le=10_000_000, description="LRU bound")
    ttl: float = Field(
        default=5.0, gt=0, le=60, description="seconds an entry lives, invalidated or not"
    )
    ping_interval: float = Field(
        default=0.5, gt=0, le=10, description="seconds between invalidation-channel PINGs"
    )


class Settings(BaseSettings):
    """Everything the server reads at start-up."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    listen: str = Field(default="127.0.0.1:50051", description="gRPC HOST:PORT")
    metrics_listen: str = Field(default="127.0.0.1:9464", description="Prometheus HOST:PORT")
    log_format: Literal["json", "console"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace: float = Field(default=10.0, ge=0, le=300, description="drain seconds")
    health_interval: float = Field(default=1.0, gt=0, le=60, description="Redis probe period")
    max_concurrent_rpcs: int | None = Field(default=None, ge=1)
    # Larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED before any
    # handler runs (docs/hostile-input.md); a cache value must fit with room to spare.
    max_message_bytes: int = Field(
        default=4 * 1024 * 1024, ge=65_536, le=64 * 1024 * 1024, description="per request"
    )
    use_uvloop: bool = True
    tls: ServerTlsSettings = ServerTlsSettings()
    redis: RedisSettings = RedisSettings()
    auth: AuthSettings = AuthSettings()
    cache: CacheSettings = CacheSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    ext_authz: ExtAuthzSettings = ExtAuthzSettings()
    token_cache: TokenCacheSettings = TokenCacheSettings()

    @model_validator(mode="after")
    def _cache_values_fit_in_a_message(self) -> Self:
        if self.cache.max_value_bytes + self.cache.max_key_bytes + 4096 > self.max_message_bytes:
            raise ValueError("cache.max_value_bytes must fit in max_message_bytes (4 KiB spare)")
        return self

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _address(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Command-line overrides (init) > environment > config file > defaults.
        return init_settings, env_settings, _ConfigFileSource(settings_cls)


_config_file_values: ContextVar[dict[str, Any]] = ContextVar("config_file_values")


class _ConfigFileSource(PydanticBaseSettingsSource):
    """Values from the YAML file given to :func:`load_settings`, below the environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return _config_file_values.get({}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_config_file_values.get({}))


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        dotted = ".".join(str(part) for part in item["loc"]) or "(settings)"
        env = ENV_PREFIX + "__".join(str(part) for part in item["loc"]).upper()
        message = str(item["msg"]).removeprefix("Value error, ")
        lines.append(f"invalid setting {dotted} (env {env}): {message}")
    return "\n".join(lines)


def load_settings(
    config_file: Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build settings from file, environment and overrides (highest wins)."""
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"invalid setting config ({config_file}): {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"invalid setting config ({config_file}): expected a mapping")
        file_values = loaded or {}
    token = _config_file_values.set(file_values)
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    finally:
        _config_file_values.reset(token)
