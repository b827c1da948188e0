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
import re
import secrets
import zlib
from collections.abc import Callable, Sequence
from enum import StrEnum

from tokenservice_server.recent import remember

__all__ = [
    "CredentialKind",
    "SecretHasher",
    "digest",
    "is_well_formed",
    "is_well_formed_known",
    "new_credential",
]

_BODY_BYTES = 32  # 256 bits of entropy
_BODY_LENGTH = 43  # base64url without padding
_CHECK_LENGTH = 6
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class CredentialKind(StrEnum):
    ACCESS_TOKEN = "tsat"
    REFRESH_TOKEN = "tsrt"
    AUTHORIZATION_CODE = "tsac"
    CLIENT_SECRET = "tscs"


#: Every pair of base62 digits, by value (0 .. 62**2 - 1).
_PAIRS = [high + low for high in _BASE62 for low in _BASE62]


def _check(text: str) -> str:
    """The CRC-32 of ``text`` as 6 base62 digits, most significant first."""
    value = zlib.crc32(text.encode("ascii"))
    pairs = _PAIRS
    # Two digits per lookup (62**4, 62**2, 1): this runs on every Check of an uncached
    # token, and each division of a 32-bit value is a multi-digit one in CPython.
    return pairs[value // 14_776_336] + pairs[value // 3_844 % 3_844] + pairs[value % 3_844]


def new_credential(kind: CredentialKind) -> str:
    """A fresh credential of ``kind`` from the OS CSPRNG."""
    body = base64.urlsafe_b64encode(secrets.token_bytes(_BODY_BYTES)).rstrip(b"=").decode()
    stem = f"{kind.value}_{body}"
    return stem + _check(stem)


_SHAPE = {
    kind: re.compile(
        rf"{kind.value}_[A-Za-z0-9_-]{{{_BODY_LENGTH}}}[0-9A-Za-z]{{{_CHECK_LENGTH}}}", re.ASCII
    )
    for kind in CredentialKind
}


def is_well_formed(value: str, kind: CredentialKind) -> bool:
    """Prefix, length, alphabet and checksum are right; says nothing about validity."""
    # One compiled pattern checks prefix, length and both alphabets (ASCII only, so a
    # non-ASCII value is False here, never a TypeError in compare_digest: callers pass
    # untrusted input such as bearer metadata).
    if _SHAPE[kind].fullmatch(value) is None:
        return False
    # The checksum is a public function of the rest of the value: nothing to time.
    return _check(value[:-_CHECK_LENGTH]) == value[-_CHECK_LENGTH:]


def is_well_formed_known(value: str, kind: CredentialKind, hashed: str) -> bool:
    """:func:`is_well_formed`, remembered by the value's digest (``hashed``): the same hot
    tokens are checked over and over (every Check and introspection that reaches Redis),
    the check costs ~10,000 instructions, and a digest names one value. Only digests are
    kept, never the value, and only of values found well-formed; bounded, oldest first."""
    if _WELL_FORMED.get(hashed) is kind:
        return True
    if not is_well_formed(value, kind):
        return False
    remember(_WELL_FORMED, hashed, kind, _WELL_FORMED_MAX)
    return True


_WELL_FORMED_MAX = 4096
_WELL_FORMED: dict[str, CredentialKind] = {}


def digest(value: str) -> str:
    """SHA-256 hex of a credential: the only form in which one is ever stored."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class SecretHasher:
    """Keyed fast hash of client secrets.

    Client secrets are 256-bit random values, so a slow password hash adds nothing but
    CPU per client_credentials call (and bcrypt reads only 72 bytes). HMAC-SHA256 with a
    server-side pepper means a copy of the database alone cannot even confirm a guess.

    The pepper can be rotated: :meth:`hash` always uses the current one, :meth:`verify`
    also accepts hashes made with a previous one, and :meth:`is_current` tells a caller
    that a verified hash should be re-made with the current pepper (see
    ``docs/security.md``).
    """

    _PREFIX = "hs256:"

    def __init__(self, pepper: bytes, previous: Sequence[bytes] = ()) -> None:
        self._pepper = pepper
        self._previous = tuple(previous)
        # Keyed once per pepper; each hash copies the keyed state (the key schedule is
        # most of an HMAC of a short secret: 2.5 -> 1.7 us).
        self._keyed = {key: hmac.new(key, digestmod=hashlib.sha256) for key in (pepper, *previous)}
        #: Called with (client_id, stored hash, secret) when a secret verified under a
        #: previous pepper; the composition root sets it to an opportunistic re-hash.
        self.on_outdated: Callable[[str, str, str], None] | None = None

    @property
    def rotating(self) -> bool:
        """Previous peppers are configured (hashes may need upgrading)."""
        return bool(self._previous)

    def _hash_with(self, pepper: bytes, secret: str) -> str:
        mac = self._keyed[pepper].copy()
        mac.update(secret.encode("utf-8"))
        return self._PREFIX + mac.hexdigest()

    def hash(self, secret: str) -> str:
        return self._hash_with(self._pepper, secret)

    def is_current(self, secret: str, stored: str) -> bool:
        """``stored`` is the hash of ``secret`` under the current pepper (constant time)."""
        return hmac.compare_digest(self.hash(secret), stored)

    def verify(self, secret: str, stored: str) -> bool:
        """Constant-time comparison against a stored hash, under any accepted pepper.

        Every pepper is tried, so the time taken does not tell which one matched.
        """
        matched = self.is_current(secret, stored)
        for pepper in self._previous:
            matched |= hmac.compare_digest(self._hash_with(pepper, secret), stored)
        return matched

    def check_current(self, client_id: str, secret: str, stored: str) -> None:
        """After a successful :meth:`verify`: report a hash made with a previous pepper."""
        if self._previous and self.on_outdated is not None and not self.is_current(secret, stored):
            self.on_outdated(client_id, stored, secret)
