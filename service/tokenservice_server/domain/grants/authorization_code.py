"""The authorization code grant with PKCE (RFC 6749 section 4.1, RFC 7636, RFC 9700).

``authorize`` is called by the trusted login/consent front end once it has
authenticated the user; ``redeem`` is the token request of section 4.1.3. The code is
single use: a second redemption is refused and revokes every token issued from it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from tokenservice_server.domain.authentication import authenticate_for_grant
from tokenservice_server.domain.client_attempts import STALE, with_current_client
from tokenservice_server.domain.client_directory import ClientDirectory
from tokenservice_server.domain.clients import ClientRecord, ClientType, GrantType
from tokenservice_server.domain.clients import is_loopback_host as _is_loopback
from tokenservice_server.domain.credentials import (
    CredentialKind,
    SecretHasher,
    digest,
    is_well_formed,
    new_credential,
)
from tokenservice_server.domain.errors import (
    InvalidGrant,
    InvalidRequest,
    UnauthorizedClient,
)
from tokenservice_server.domain.grants.client_credentials import (
    IssuedTokens,
    TokenLifetimes,
    resolve_scope,
)
from tokenservice_server.domain.grants.issuance import plan_token_pair, settle
from tokenservice_server.domain.pkce import (
    ChallengeMethod,
    s256,
    validate_challenge,
    validate_verifier,
)
from tokenservice_server.domain.ports import GrantStore
from tokenservice_server.domain.rate_limiting import TokenRequestLimits
from tokenservice_server.domain.tokens import AuthorizationCode
from tokenservice_server.domain.value_object import value_object

__all__ = ["AuthorizationCodeGrant", "AuthorizeRequest", "IssuedCode", "redirect_uri_matches"]

MAX_SUBJECT = 256
MAX_STATE = 1024

_FAILURES = {
    "invalid": "the authorization code is invalid, expired, or bound to another client "
    "or redirect_uri",
    "reused": "the authorization code was already used; every token issued from it is revoked",
    "pkce_required": "code_verifier is required: the authorization request had a code_challenge",
    "pkce_mismatch": "code_verifier does not match the code_challenge",
    "pkce_unexpected": "code_verifier given, but the authorization request had no code_challenge",
    "session_ended": "the session the code was issued in has ended",
}


@value_object
class AuthorizeRequest:
    client_id: str
    redirect_uri: str
    scope: str
    subject: str
    code_challenge: str = ""
    code_challenge_method: ChallengeMethod | None = None
    session_id: str = ""
    state: str = ""


@value_object
class IssuedCode:
    code: str
    expires_in: int
    state: str


def _loopback_parts(uri: str) -> tuple[str, str] | None:
    """(host, everything after the authority) of an ``http://`` loopback URI whose port
    is absent or a plain 1-65535; None for anything else (user information, a malformed
    port, another scheme or host)."""
    if not uri.startswith("http://"):
        return None
    rest = uri[len("http://") :]
    end = next((i for i, ch in enumerate(rest) if ch in "/?#"), len(rest))
    authority, tail = rest[:end], rest[end:]
    if authority.startswith("["):
        host, bracket, port = authority.partition("]")
        host += bracket
    else:
        host, colon, port = authority.partition(":")
        port = colon + port
    if port and not (
        port[0] == ":" and port[1:].isdigit() and port[1:].isascii() and 0 < int(port[1:]) < 65536
    ):
        return None
    if "@" in host or not _is_loopback(host.removeprefix("[").removesuffix("]")):
        return None
    return host, tail


def redirect_uri_matches(registered: tuple[str, ...], presented: str) -> bool:
    """Exact string match (RFC 9700 section 2.1), except that the port of a loopback
    redirect URI may vary for native apps (RFC 8252 section 7.3): everything else, the
    path, query and (absent) fragment included, must still match character for character."""
    if presented in registered:
        return True
    wanted = _loopback_parts(presented)
    if wanted is None:
        return False
    return any(_loopback_parts(uri) == wanted for uri in registered)


class AuthorizationCodeGrant:
    def __init__(
        self,
        directory: ClientDirectory,
        grants: GrantStore,
        hasher: SecretHasher,
        lifetimes: TokenLifetimes,
        clock: Callable[[], float],
        *,
        code_ttl: int,
        allow_plain_pkce: bool,
    ) -> None:
        self._directory = directory
        self._grants = grants
        self._hasher = hasher
        self._lifetimes = lifetimes
        self._clock = clock
        self._code_ttl = code_ttl
        self._allow_plain = allow_plain_pkce

    def _validate(self, request: AuthorizeRequest, record: ClientRecord) -> AuthorizationCode:
        client = record.spec
        if GrantType.AUTHORIZATION_CODE not in client.grant_types:
            raise UnauthorizedClient("this client may not use the authorization_code grant")
        if not request.redirect_uri:
            raise InvalidRequest("redirect_uri", "required")
        if not redirect_uri_matches(client.redirect_uris, request.redirect_uri):
            raise InvalidRequest("redirect_uri", "not registered for this client (exact match)")
        scopes = resolve_scope(request.scope, record)
        if not request.subject or len(request.subject) > MAX_SUBJECT:
            raise InvalidRequest("subject", f"required, at most {MAX_SUBJECT} characters")
        if not request.subject.isprintable() or " " in request.subject:
            raise InvalidRequest("subject", "printable characters without spaces")
        if len(request.state) > MAX_STATE:
            raise InvalidRequest("state", f"at most {MAX_STATE} characters", limit=MAX_STATE)
        method = ""
        if request.code_challenge:
            chosen = request.code_challenge_method or ChallengeMethod.PLAIN  # RFC 7636 4.3
            validate_challenge(request.code_challenge, chosen, allow_plain=self._allow_plain)
            method = chosen.value
        elif client.client_type is ClientType.PUBLIC:
            raise InvalidRequest("code_challenge", "public clients must use PKCE (RFC 9700 2.1.1)")
        return AuthorizationCode(
            client_id=record.client_id,
            redirect_uri=request.redirect_uri,
            scopes=scopes,
            subject=request.subject,
            family_id=secrets.token_hex(16),
            challenge=request.code_challenge,
            challenge_method=method,
            session_id=request.session_id,
        )

    async def authorize(self, request: AuthorizeRequest) -> IssuedCode:
        async def attempt(record: ClientRecord | None) -> IssuedCode | None:
            if record is None:
                raise InvalidRequest("client_id", "unknown client")
            pending = self._validate(request, record)
            code = new_credential(CredentialKind.AUTHORIZATION_CODE)
            stored = await self._grants.store_code(
                digest(code), pending, client_generation=record.generation, ttl=self._code_ttl
            )
            if stored == 0:
                return STALE
            if stored == -1:
                raise InvalidRequest("session_id", "no such live session")
            if stored < 0:
                raise InvalidRequest("session_id", "the session belongs to another subject")
            return IssuedCode(code=code, expires_in=self._code_ttl, state=request.state)

        return await with_current_client(self._directory, request.client_id, attempt)

    async def redeem(
        self,
        client_id: str,
        client_secret: str,
        code: str,
        redirect_uri: str,
        code_verifier: str,
        limits: TokenRequestLimits,
    ) -> IssuedTokens:
        if not code:
            raise InvalidRequest("code", "required")
        if not redirect_uri:
            raise InvalidRequest("redirect_uri", "required")
        if code_verifier:
            validate_verifier(code_verifier)
        if not is_well_formed(code, CredentialKind.AUTHORIZATION_CODE):
            raise InvalidGrant(_FAILURES["invalid"], field="code")

        async def attempt(record: ClientRecord | None) -> IssuedTokens | None:
            now = self._clock()
            client = authenticate_for_grant(
                record, client_secret, self._hasher, now, GrantType.AUTHORIZATION_CODE
            )
            wants_refresh = GrantType.REFRESH_TOKEN in client.spec.grant_types
            pair = plan_token_pair(client, self._lifetimes, refresh=wants_refresh)
            result = await self._grants.redeem_code(
                digest(code),
                client_id=client.client_id,
                client_generation=client.generation,
                redirect_uri=redirect_uri,
                verifier_s256=s256(code_verifier) if code_verifier else "",
                verifier=code_verifier,
                now=int(now),
                access=pair.access,
                refresh=pair.refresh,
                audiences=client.spec.audiences,
                limits=limits,
            )
            return settle(pair, result, _FAILURES, field="code")

        return await with_current_client(self._directory, client_id, attempt)
