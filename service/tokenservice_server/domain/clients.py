"""OAuth2 clients: the registration model and its validation (RFC 6749 section 2).

Redirect URIs follow RFC 6749 section 3.1.2 and RFC 9700 section 2.1: absolute, no
fragment, compared by exact string match; plain http only for loopback hosts
(RFC 8252 section 7.3), https everywhere else.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from urllib.parse import urlsplit

from tokenservice_server.domain.errors import InvalidRequest
from tokenservice_server.domain.scopes import validate_scope_tokens

__all__ = [
    "CLIENT_ID_PATTERN",
    "Client",
    "ClientRecord",
    "ClientSpec",
    "ClientType",
    "GrantType",
    "is_loopback_host",
    "validate_client_id",
    "validate_spec",
]

CLIENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{1,128}$")
MAX_DISPLAY_NAME = 200
MAX_REDIRECT_URIS = 20
MAX_REDIRECT_URI_LENGTH = 2000
MAX_AUDIENCES = 20
MAX_AUDIENCE_LENGTH = 256
MAX_ACCESS_TTL = 86_400
MAX_REFRESH_TTL = 31_536_000
MAX_RATE_LIMIT = 1_000_000


class ClientType(StrEnum):
    CONFIDENTIAL = "confidential"  # holds a secret
    PUBLIC = "public"  # cannot keep a secret: native and browser apps, PKCE only


class GrantType(StrEnum):
    CLIENT_CREDENTIALS = "client_credentials"
    AUTHORIZATION_CODE = "authorization_code"
    REFRESH_TOKEN = "refresh_token"


@dataclass(frozen=True)
class ClientSpec:
    """What an operator registers; everything but identity, times and credentials."""

    display_name: str = ""
    client_type: ClientType = ClientType.CONFIDENTIAL
    grant_types: tuple[GrantType, ...] = ()
    scopes: tuple[str, ...] = ()
    redirect_uris: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    access_token_ttl: int = 0  # 0: the server default
    refresh_token_ttl: int = 0  # 0: the server default
    rate_limit_per_minute: int = 0  # 0: the server default


@dataclass(frozen=True)
class Client:
    """A registered client as callers may see it (no credential material)."""

    client_id: str
    spec: ClientSpec
    create_time: float
    update_time: float
    previous_secret_expire_time: float | None = None


@dataclass(frozen=True)
class ClientRecord:
    """A client with its hashed credentials and its optimistic-concurrency generation."""

    client: Client
    secret_hash: str | None
    previous_secret_hash: str | None = None
    generation: int = 1

    @property
    def client_id(self) -> str:
        return self.client.client_id

    @property
    def spec(self) -> ClientSpec:
        return self.client.spec


def validate_client_id(client_id: str, *, field: str = "client_id") -> str:
    if not client_id:
        raise InvalidRequest(field, "required")
    if not CLIENT_ID_PATTERN.match(client_id):
        raise InvalidRequest(field, "1-128 characters of A-Z a-z 0-9 . _ ~ -", limit=128)
    return client_id


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP literal (127.0.0.0/8, ::1); never a DNS name such
    as ``127.attacker.example``, which may resolve anywhere."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate_redirect_uri(uri: str, field: str) -> None:
    if len(uri) > MAX_REDIRECT_URI_LENGTH:
        raise InvalidRequest(
            field,
            f"longer than {MAX_REDIRECT_URI_LENGTH} characters",
            limit=MAX_REDIRECT_URI_LENGTH,
        )
    if any(ch.isspace() for ch in uri) or not uri.isprintable():
        raise InvalidRequest(field, "must not contain whitespace or control characters")
    try:
        parts = urlsplit(uri)
        host = parts.hostname or ""
        _ = parts.port  # raises on a malformed port
    except ValueError as exc:
        raise InvalidRequest(field, f"not a valid URI: {exc}") from None
    if not parts.scheme or not parts.netloc or not host:
        raise InvalidRequest(field, "must be an absolute URI with a host")
    if "#" in uri:
        raise InvalidRequest(field, "must not contain a fragment (RFC 6749 section 3.1.2)")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest(field, "must not contain user information")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and is_loopback_host(host):
        return
    raise InvalidRequest(field, "must use https (http is allowed only for loopback hosts)")


def _validate_strings(
    values: Iterable[str], *, field: str, max_items: int, max_length: int
) -> tuple[str, ...]:
    listed = list(values)
    if len(listed) > max_items:
        raise InvalidRequest(field, f"at most {max_items} entries", limit=max_items)
    for index, value in enumerate(listed):
        if not value or len(value) > max_length or not value.isprintable():
            raise InvalidRequest(
                f"{field}[{index}]", f"1-{max_length} printable characters", limit=max_length
            )
    return tuple(dict.fromkeys(listed))


def _validate_range(value: int, *, field: str, low: int, high: int) -> None:
    if value != 0 and not low <= value <= high:
        raise InvalidRequest(field, f"0 (server default) or {low}-{high}", limit=high)


def validate_spec(spec: ClientSpec, *, prefix: str = "client") -> ClientSpec:
    """Check every field (naming the first bad one) and return the normalized spec."""
    if len(spec.display_name) > MAX_DISPLAY_NAME or not spec.display_name.isprintable():
        raise InvalidRequest(
            f"{prefix}.display_name",
            f"at most {MAX_DISPLAY_NAME} printable characters",
            limit=MAX_DISPLAY_NAME,
        )
    if not spec.grant_types:
        raise InvalidRequest(f"{prefix}.allowed_grant_types", "at least one grant type")
    grant_types = tuple(sorted(set(spec.grant_types)))
    if spec.client_type is ClientType.PUBLIC and GrantType.CLIENT_CREDENTIALS in grant_types:
        raise InvalidRequest(
            f"{prefix}.allowed_grant_types",
            "a public client cannot use client_credentials (it has no secret)",
        )
    scopes = validate_scope_tokens(spec.scopes, field=f"{prefix}.allowed_scopes")
    redirect_uris = _validate_strings(
        spec.redirect_uris,
        field=f"{prefix}.redirect_uris",
        max_items=MAX_REDIRECT_URIS,
        max_length=MAX_REDIRECT_URI_LENGTH,
    )
    for index, uri in enumerate(redirect_uris):
        _validate_redirect_uri(uri, f"{prefix}.redirect_uris[{index}]")
    if GrantType.AUTHORIZATION_CODE in grant_types and not redirect_uris:
        raise InvalidRequest(
            f"{prefix}.redirect_uris", "authorization_code needs at least one redirect URI"
        )
    audiences = _validate_strings(
        spec.audiences,
        field=f"{prefix}.audiences",
        max_items=MAX_AUDIENCES,
        max_length=MAX_AUDIENCE_LENGTH,
    )
    _validate_range(
        spec.access_token_ttl,
        field=f"{prefix}.access_token_ttl_seconds",
        low=1,
        high=MAX_ACCESS_TTL,
    )
    _validate_range(
        spec.refresh_token_ttl,
        field=f"{prefix}.refresh_token_ttl_seconds",
        low=60,
        high=MAX_REFRESH_TTL,
    )
    _validate_range(
        spec.rate_limit_per_minute,
        field=f"{prefix}.rate_limit_per_minute",
        low=1,
        high=MAX_RATE_LIMIT,
    )
    return replace(
        spec,
        grant_types=grant_types,
        scopes=scopes,
        redirect_uris=redirect_uris,
        audiences=audiences,
    )
