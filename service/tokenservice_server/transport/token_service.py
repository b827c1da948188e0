"""TokenService servicer: protobuf <-> domain for the token endpoint and friends.

Caller authorization is the interceptor's (caller_auth.py), except for the RPCs that
authenticate from the request itself: IssueToken and RevokeToken (client credentials,
RFC 6749 section 2.3 / RFC 7009) and IntrospectToken (caller and target token are looked
up in one round trip).
"""

from __future__ import annotations

import functools
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tokenservice.v1 import token_service_pb2 as pb
from tokenservice_server.domain.audit import AuditInStep, AuditTrail
from tokenservice_server.domain.errors import (
    DomainError,
    InvalidRequest,
    RateLimited,
    UnsupportedGrantType,
)
from tokenservice_server.domain.grants.authorization_code import (
    AuthorizationCodeGrant,
    AuthorizeRequest,
)
from tokenservice_server.domain.grants.client_credentials import (
    ClientCredentialsGrant,
    IssuedTokens,
)
from tokenservice_server.domain.grants.refresh_token import RefreshTokenGrant
from tokenservice_server.domain.introspection import Introspector
from tokenservice_server.domain.pkce import ChallengeMethod
from tokenservice_server.domain.rate_limiting import TokenEndpointThrottle, TokenRequestLimits
from tokenservice_server.domain.revocation import Revoker
from tokenservice_server.domain.scopes import format_scope
from tokenservice_server.domain.sessions import SessionService
from tokenservice_server.domain.tokens import Session, TokenKind, TokenRecord
from tokenservice_server.metrics import ServerMetrics
from tokenservice_server.transport.audit import audited_in_step
from tokenservice_server.transport.caller_auth import (
    authorization_metadata,
    current_caller,
    optional_caller,
)
from tokenservice_server.transport.peers import peer_ip
from tokenservice_server.transport.unimplemented import serialized_response

__all__ = ["TokenServiceServicer"]

Context = grpc.aio.ServicerContext[Any, Any]

_MAX_FIELD = 4096
_BOUNDED_FIELDS = (
    "client_id",
    "client_secret",
    "scope",
    "code",
    "redirect_uri",
    "code_verifier",
    "refresh_token",
)
_CHALLENGE_METHODS = {
    pb.CODE_CHALLENGE_METHOD_UNSPECIFIED: None,
    pb.CODE_CHALLENGE_METHOD_S256: ChallengeMethod.S256,
    pb.CODE_CHALLENGE_METHOD_PLAIN: ChallengeMethod.PLAIN,
}
_GRANT_LABELS = {
    pb.GRANT_TYPE_CLIENT_CREDENTIALS: "client_credentials",
    pb.GRANT_TYPE_AUTHORIZATION_CODE: "authorization_code",
    pb.GRANT_TYPE_REFRESH_TOKEN: "refresh_token",
}
#: Distinct IntrospectToken answers kept (one per active token record).
_ANSWERS = 4096
_INACTIVE = pb.IntrospectTokenResponse(active=False).SerializeToString()

_KINDS = {
    TokenKind.ACCESS: pb.TOKEN_KIND_ACCESS_TOKEN,
    TokenKind.REFRESH: pb.TOKEN_KIND_REFRESH_TOKEN,
}


def _bounded(message: Any, names: tuple[str, ...]) -> None:
    for name in names:
        if len(getattr(message, name)) > _MAX_FIELD:
            raise InvalidRequest(name, f"longer than {_MAX_FIELD} characters", limit=_MAX_FIELD)


def _timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(round(seconds * 1000))
    return stamp


def _session(session: Session) -> pb.Session:
    return pb.Session(
        session_id=session.session_id,
        subject=session.subject,
        client_id=session.client_id,
        create_time=_timestamp(session.create_time),
        expire_time=_timestamp(session.expire_time),
        attributes=session.attributes,
    )


def _token_response(issued: IssuedTokens) -> pb.IssueTokenResponse:
    if not (issued.refresh_token or issued.family_id or issued.session_id):
        # client_credentials: no refresh token, grant or session fields to set.
        return pb.IssueTokenResponse(
            access_token=issued.access_token,
            token_type="Bearer",
            expires_in=issued.expires_in,
            scope=format_scope(issued.scopes),
        )
    return pb.IssueTokenResponse(
        access_token=issued.access_token,
        token_type="Bearer",
        expires_in=issued.expires_in,
        refresh_token=issued.refresh_token,
        refresh_token_expires_in=issued.refresh_expires_in,
        scope=format_scope(issued.scopes),
        grant_id=issued.family_id,
        session_id=issued.session_id,
    )


class TokenServiceServicer:
    def __init__(
        self,
        client_credentials: ClientCredentialsGrant,
        authorization_code: AuthorizationCodeGrant,
        refresh_token: RefreshTokenGrant,
        introspector: Introspector,
        revoker: Revoker,
        sessions: SessionService,
        statistics: Any,
        throttle: TokenEndpointThrottle,
        metrics: ServerMetrics,
        audit: AuditTrail | None = None,
    ) -> None:
        self._audit = audit
        self._throttle = throttle
        self._issued = metrics.tokens_issued.labels  # by grant, result
        self._rate_limited = metrics.rate_limited.labels  # by bucket
        self._client_credentials = client_credentials
        self._authorization_code = authorization_code
        self._refresh_token = refresh_token
        self._introspector = introspector
        self._revoker = revoker
        self._sessions = sessions
        self._statistics = statistics
        # An active token's answer, made and serialized once per distinct record: building
        # the message costs ~20,000 instructions and serializing it ~4,000, and resource
        # servers introspect the same hot tokens over and over.
        self._active = functools.lru_cache(maxsize=_ANSWERS)(self._build_active)

    async def IssueToken(
        self, request: pb.IssueTokenRequest, context: Context
    ) -> pb.IssueTokenResponse:
        # Limits are counted inside the grant's storage step (one round trip); a request
        # that fails before reaching storage is counted here, so failures are limited too.
        limits = self._throttle.limits(request.client_id, peer_ip(context.peer()))
        grant = _GRANT_LABELS.get(request.grant_type, "unsupported")
        try:
            issued = await self._issue(request, limits)
        except RateLimited as refusal:
            self._rate_limited(refusal.limited_by).inc()
            self._issued(grant, "rate_limited").inc()
            raise
        except DomainError as failure:
            result = failure.reason.lower()
            try:
                if not failure.attempt_counted:
                    try:
                        await self._throttle.count_failure(limits)
                    except RateLimited as refusal:
                        # The caller is told RESOURCE_EXHAUSTED: that is the result counted.
                        self._rate_limited(refusal.limited_by).inc()
                        result = "rate_limited"
                        raise
            finally:
                self._issued(grant, result).inc()
            raise
        except Exception:
            self._issued(grant, "error").inc()
            raise
        self._issued(grant, "issued").inc()
        return _token_response(issued)

    async def _issue(
        self, request: pb.IssueTokenRequest, limits: TokenRequestLimits
    ) -> IssuedTokens:
        _bounded(request, _BOUNDED_FIELDS)
        if not request.client_id:
            raise InvalidRequest("client_id", "required")
        grant = request.grant_type
        if grant == pb.GRANT_TYPE_CLIENT_CREDENTIALS:
            return await self._client_credentials.issue(
                request.client_id, request.client_secret, request.scope, limits
            )
        if grant == pb.GRANT_TYPE_AUTHORIZATION_CODE:
            return await self._authorization_code.redeem(
                request.client_id,
                request.client_secret,
                request.code,
                request.redirect_uri,
                request.code_verifier,
                limits,
            )
        if grant == pb.GRANT_TYPE_REFRESH_TOKEN:
            return await self._refresh_token.refresh(
                request.client_id,
                request.client_secret,
                request.refresh_token,
                request.scope,
                limits,
            )
        if grant == pb.GRANT_TYPE_UNSPECIFIED:
            raise UnsupportedGrantType("grant_type is required", field="grant_type")
        raise UnsupportedGrantType(f"grant type {grant} is not supported", field="grant_type")

    async def Authorize(
        self, request: pb.AuthorizeRequest, context: Context
    ) -> pb.AuthorizeResponse:
        _bounded(request, ("client_id", "redirect_uri", "scope", "code_challenge", "subject"))
        if not request.client_id:
            raise InvalidRequest("client_id", "required")
        if request.code_challenge_method not in _CHALLENGE_METHODS:
            raise InvalidRequest("code_challenge_method", "S256 or PLAIN")
        issued = await self._authorization_code.authorize(
            AuthorizeRequest(
                client_id=request.client_id,
                redirect_uri=request.redirect_uri,
                scope=request.scope,
                subject=request.subject,
                code_challenge=request.code_challenge,
                code_challenge_method=_CHALLENGE_METHODS[request.code_challenge_method],
                session_id=request.session_id,
                state=request.state,
            )
        )
        return pb.AuthorizeResponse(
            code=issued.code, expires_in=issued.expires_in, state=issued.state
        )

    @serialized_response
    async def IntrospectToken(self, request: pb.IntrospectTokenRequest, context: Context) -> bytes:
        """The serialized IntrospectTokenResponse."""
        result = await self._introspector.introspect(
            authorization_metadata(context.invocation_metadata()), request.token
        )
        record = result.record
        if not result.active or record is None:
            return _INACTIVE
        return self._active(record, result.issuer)

    @staticmethod
    def _build_active(record: TokenRecord, issuer: str) -> bytes:
        # Only the fields with a value: each keyword costs the constructor ~1,200
        # instructions, and an unset field reads as its default all the same.
        response = pb.IntrospectTokenResponse(
            active=True,
            scope=format_scope(record.scopes),
            client_id=record.client_id,
            token_kind=_KINDS[record.kind],
            exp=record.expires_at,
            iat=record.issued_at,
            nbf=record.issued_at,
            sub=record.subject or record.client_id,
            iss=issuer,
            jti=record.jti,
        )
        if record.kind is TokenKind.ACCESS:
            response.token_type = "Bearer"
        if record.subject:
            response.username = record.subject
        if record.audiences:
            response.aud.extend(record.audiences)
        if record.session_id:
            response.session_id = record.session_id
        serialized: bytes = response.SerializeToString()
        return serialized

    async def RevokeToken(
        self, request: pb.RevokeTokenRequest, context: Context
    ) -> pb.RevokeTokenResponse:
        _bounded(request, ("token", "client_id", "client_secret"))
        await self._revoker.revoke(
            optional_caller(), request.client_id, request.client_secret, request.token
        )
        return pb.RevokeTokenResponse()

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        if not request.HasField("session"):
            raise InvalidRequest("session", "required")
        given = request.session
        session = await self._sessions.create(
            given.subject, given.client_id, dict(given.attributes), request.ttl_seconds
        )
        return pb.CreateSessionResponse(session=_session(session))

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(session=_session(await self._sessions.get(request.session_id)))

    async def ExtendSession(
        self, request: pb.ExtendSessionRequest, context: Context
    ) -> pb.ExtendSessionResponse:
        session = await self._sessions.extend(request.session_id, request.ttl_seconds)
        return pb.ExtendSessionResponse(session=_session(session))

    async def EndSession(
        self, request: pb.EndSessionRequest, context: Context
    ) -> pb.EndSessionResponse:
        revoked = await audited_in_step(
            self._audit,
            context,
            "session.end",
            f"session:{request.session_id}",
            lambda audit: self._sessions.end(request.session_id, audit),
            detail=lambda count: {"revoked_token_count": str(count)},
        )
        return pb.EndSessionResponse(revoked_token_count=revoked)

    async def RevokeTokens(
        self, request: pb.RevokeTokensRequest, context: Context
    ) -> pb.RevokeTokensResponse:
        current_caller()  # admin scope is enforced by the interceptor
        selector = request.WhichOneof("selector")

        async def revoke(audit: AuditInStep | None) -> int:
            if selector == "subject":
                return await self._revoker.revoke_subject(request.subject, audit)
            if selector == "client_id":
                return await self._revoker.revoke_client(request.client_id, audit)
            raise InvalidRequest("selector", "give subject or client_id")

        target = f"{selector}:{getattr(request, selector)}" if selector else ""
        revoked = await audited_in_step(
            self._audit,
            context,
            "tokens.revoke",
            target.replace("client_id:", "client:"),
            revoke,
            detail=lambda count: {"revoked_token_count": str(count)},
        )
        return pb.RevokeTokensResponse(revoked_token_count=revoked)

    async def GetTokenStats(
        self, request: pb.GetTokenStatsRequest, context: Context
    ) -> pb.GetTokenStatsResponse:
        stats: dict[str, int] = await self._statistics()
        return pb.GetTokenStatsResponse(
            active_access_tokens=stats["active_access_tokens"],
            active_refresh_tokens=stats["active_refresh_tokens"],
            active_sessions=stats["active_sessions"],
            access_tokens_issued_total=stats["access_tokens_issued"],
            refresh_tokens_issued_total=stats["refresh_tokens_issued"],
            authorization_codes_issued_total=stats["authorization_codes_issued"],
            access_tokens_revoked_total=stats["access_tokens_revoked"],
            refresh_tokens_revoked_total=stats["refresh_tokens_revoked"],
            introspections_total=stats["introspections"],
            checks_allowed_total=stats["checks_allowed"],
            checks_denied_total=stats["checks_denied"],
            refresh_token_reuse_total=stats["refresh_token_reuse"],
            authorization_code_reuse_total=stats["authorization_code_reuse"],
        )
