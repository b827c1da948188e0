"""Proof Key for Code Exchange (RFC 7636).

code_verifier  = 43*128unreserved              (section 4.1)
code_challenge = BASE64URL(SHA256(verifier))   (S256, section 4.2)
unreserved     = ALPHA / DIGIT / "-" / "." / "_" / "~"
"""

from __future__ import annotations

import base64
import hashlib
import re
from enum import StrEnum

from tokenservice_server.domain.errors import InvalidGrant, InvalidRequest

__all__ = ["ChallengeMethod", "s256", "validate_challenge", "validate_verifier"]

_UNRESERVED_43_128 = re.compile(r"^[A-Za-z0-9\-._~]{43,128}$")


class ChallengeMethod(StrEnum):
    S256 = "S256"
    PLAIN = "plain"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def validate_challenge(challenge: str, method: ChallengeMethod, *, allow_plain: bool) -> None:
    if not _UNRESERVED_43_128.match(challenge):
        raise InvalidRequest(
            "code_challenge", "43-128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636 section 4.2)"
        )
    if method is ChallengeMethod.PLAIN and not allow_plain:
        raise InvalidRequest(
            "code_challenge_method", "plain is not allowed on this server; use S256"
        )


def validate_verifier(verifier: str) -> None:
    # A malformed verifier can never match; say so as the grant being invalid.
    if not _UNRESERVED_43_128.match(verifier):
        raise InvalidGrant(
            "code_verifier must be 43-128 characters of A-Z a-z 0-9 - . _ ~ (RFC 7636 4.1)",
            field="code_verifier",
        )
