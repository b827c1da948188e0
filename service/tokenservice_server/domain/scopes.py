"""Scope syntax and comparison (RFC 6749 section 3.3).

    scope       = scope-token *( SP scope-token )
    scope-token = 1*( %x21 / %x23-5B / %x5D-7E )

Scopes are case-sensitive sets; order and repetition carry no meaning.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenservice_server.domain.errors import InvalidRequest, InvalidScope

__all__ = [
    "ADMIN",
    "AUTHORIZE",
    "INTROSPECT",
    "MAX_SCOPE_LENGTH",
    "format_scope",
    "is_scope_token",
    "parse_scope",
    "validate_scope_tokens",
]

ADMIN = "tokenservice.admin"
INTROSPECT = "tokenservice.introspect"
AUTHORIZE = "tokenservice.authorize"

MAX_SCOPE_LENGTH = 128
MAX_SCOPES = 100


def is_scope_token(token: str) -> bool:
    if not 0 < len(token) <= MAX_SCOPE_LENGTH:
        return False
    return all(ch == "\x21" or "\x23" <= ch <= "\x5b" or "\x5d" <= ch <= "\x7e" for ch in token)


def parse_scope(text: str, *, field: str = "scope") -> frozenset[str]:
    """A space-delimited scope string as a set; malformed input is INVALID_SCOPE."""
    if not text:
        return frozenset()
    tokens = text.split(" ")
    if len(tokens) > MAX_SCOPES:
        raise InvalidScope(f"{field}: at most {MAX_SCOPES} scopes", field=field, limit=MAX_SCOPES)
    for token in tokens:
        if not is_scope_token(token):
            raise InvalidScope(
                f"{field}: scope tokens are 1-{MAX_SCOPE_LENGTH} printable ASCII characters "
                "other than space, '\"' and '\\', separated by single spaces",
                field=field,
            )
    return frozenset(tokens)


def validate_scope_tokens(tokens: Iterable[str], *, field: str) -> tuple[str, ...]:
    """Scopes given as a list (client registration): each must be a scope-token."""
    listed = list(tokens)
    if len(listed) > MAX_SCOPES:
        raise InvalidRequest(field, f"at most {MAX_SCOPES} scopes", limit=MAX_SCOPES)
    for index, token in enumerate(listed):
        if not is_scope_token(token):
            raise InvalidRequest(
                f"{field}[{index}]",
                f"not a scope token (RFC 6749 section 3.3): {token[:40]!r}",
            )
    return tuple(sorted(set(listed)))


def format_scope(scopes: Iterable[str]) -> str:
    """The canonical space-delimited form (sorted, so equal sets print equally)."""
    return " ".join(sorted(scopes))
