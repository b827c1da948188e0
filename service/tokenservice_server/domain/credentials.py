"""Opaque credentials: access and refresh tokens, authorization codes, client secrets.

Format ``<kind>_<body><check>``: a recognizable kind prefix (so leaked credentials are
easy to find by secret scanners), 256 random bits as base64url (43 characters), and a
CRC-32 checksum (6 base62 characters) so a mistyped or truncated value is rejected
without a storage lookup. Nothing here is stored: storage keys use :func:`digest`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import zlib
from enum import StrEnum

__all__ = [
    "CredentialKind",
    "SecretHasher",
    "digest",
    "is_well_formed",
    "new_credential",
]

_BODY_BYTES = 32  # 256 bits of entropy
_BODY_LENGTH = 43  # base64url without padding
_CHECK_LENGTH = 6
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class CredentialKind(StrEnum):
    ACCESS_TOKEN = "tsat"
    REFRESH_TOKEN = "tsrt"
    AUTHORIZATION_CODE = "tsac"
    CLIENT_SECRET = "tscs"


def _check(text: str) -> str:
    value = zlib.crc32(text.encode("ascii"))
    chars = []
    for _ in range(_CHECK_LENGTH):
        value, index = divmod(value, 62)
        chars.append(_BASE62[index])
    return "".join(reversed(chars))


def new_credential(kind: CredentialKind) -> str:
    """A fresh credential of ``kind`` from the OS CSPRNG."""
    body = base64.urlsafe_b64encode(secrets.token_bytes(_BODY_BYTES)).rstrip(b"=").decode()
    stem = f"{kind.value}_{body}"
    return stem + _check(stem)


_LENGTH = len(CredentialKind.ACCESS_TOKEN.value) + 1 + _BODY_LENGTH + _CHECK_LENGTH


def is_well_formed(value: str, kind: CredentialKind) -> bool:
    """Prefix, length, alphabet and checksum are right; says nothing about validity."""
    if len(value) != _LENGTH or not value.isascii() or not value.startswith(kind.value + "_"):
        # isascii: compare_digest raises TypeError on non-ASCII str, and callers pass
        # untrusted input (bearer metadata); a malformed value must be False, not an error.
        return False
    stem, check = value[:-_CHECK_LENGTH], value[-_CHECK_LENGTH:]
    body = stem[len(kind.value) + 1 :]
    if not _BODY_ALPHABET.issuperset(body):
        return False
    return hmac.compare_digest(_check(stem), check)


def digest(value: str) -> str:
    """SHA-256 hex of a credential: the only form in which one is ever stored."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class SecretHasher:
    """Keyed fast hash of client secrets.

    Client secrets are 256-bit random values, so a slow password hash adds nothing but
    CPU per client_credentials call (and bcrypt reads only 72 bytes). HMAC-SHA256 with a
    server-side pepper means a copy of the database alone cannot even confirm a guess.
    """

    _PREFIX = "hs256:"

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper

    def hash(self, secret: str) -> str:
        mac = hmac.new(self._pepper, secret.encode("utf-8"), hashlib.sha256).hexdigest()
        return self._PREFIX + mac

    def verify(self, secret: str, stored: str) -> bool:
        """Constant-time comparison against a stored hash."""
        return hmac.compare_digest(self.hash(secret), stored)
