"""The ``WWW-Authenticate: Bearer`` challenge of a protected resource (RFC 6750 section 3).

    challenge = "Bearer" [ 1*SP 1#auth-param ]   ; realm, scope, error, error_description

"If the protected resource request does not include authentication credentials or does
not contain an access token that enables access to the protected resource, the resource
server MUST include the HTTP WWW-Authenticate response header field" (section 3). When
the request carried no credentials at all, the challenge has no error code (section 3.1:
the resource server "SHOULD NOT include an error code or other error information").
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = ["BearerError", "bearer_challenge", "http_status_for"]


class BearerError(StrEnum):
    """The error codes of RFC 6750 section 3.1."""

    INVALID_REQUEST = "invalid_request"
    INVALID_TOKEN = "invalid_token"
    INSUFFICIENT_SCOPE = "insufficient_scope"


_STATUS = {
    BearerError.INVALID_REQUEST: 400,  # "SHOULD respond with the HTTP 400 (Bad Request)"
    BearerError.INVALID_TOKEN: 401,  # "SHOULD respond with the HTTP 401 (Unauthorized)"
    BearerError.INSUFFICIENT_SCOPE: 403,  # "SHOULD respond with the HTTP 403 (Forbidden)"
}


def http_status_for(error: BearerError | None) -> int:
    """The status section 3.1 gives each error; a bare challenge is a 401."""
    return 401 if error is None else _STATUS[error]


def _attribute_text(value: str) -> str:
    # Section 3: error, error_description and scope values "MUST NOT include characters
    # outside the set %x20-21 / %x23-5B / %x5D-7E" (no quote, no backslash, no controls).
    return "".join(ch for ch in value if ch in (" ", "!") or "#" <= ch <= "[" or "]" <= ch <= "~")


def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string (the realm may contain anything printable)."""
    printable = "".join(ch for ch in value if ch == "\t" or " " <= ch <= "~")
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bearer_challenge(
    realm: str,
    error: BearerError | None = None,
    *,
    description: str = "",
    scope: Iterable[str] = (),
) -> str:
    """The ``WWW-Authenticate`` value, e.g. ``Bearer realm="api", error="invalid_token"``."""
    params = [f"realm={_quoted(realm)}"]
    if error is not None:
        params.append(f'error="{error.value}"')
        if description:
            params.append(f'error_description="{_attribute_text(description)}"')
    scopes = " ".join(sorted(filter(None, (_attribute_text(item) for item in scope))))
    if scopes:
        # Section 3: "The scope attribute is a space-delimited list of case-sensitive
        # scope values indicating the required scope of the access token".
        params.append(f'scope="{scopes}"')
    return "Bearer " + ", ".join(params)
