"""May this HTTP request reach the service? Envoy's ext_authz Check, decided from the
request's bearer token (RFC 6750) and the route's requirements.

Steps, cheapest first:

1. No ``authorization`` header, or another scheme: 401 with a bare challenge (RFC 6750
   section 3.1: a request without credentials gets no error code). No Redis.
2. A Bearer token (section 2.1; the scheme is case-insensitive) that fails its checksum:
   401 ``invalid_token``. No Redis.
3. One Redis round trip resolves the token and counts the request against the rate
   limits (``check_access_token.lua``); over a limit: 429 with ``Retry-After``. With the
   hot-token cache (``token_cache.py``), a cached live token skips Redis (0 round trips)
   only when no Redis-counted limit applies to the request (no IP, client, client-own or
   route limit): counting a limit needs Redis, and that same script resolves the token.
4. No live token (unknown, expired, revoked), or not for the route's audience: 401
   ``invalid_token``.
5. The route's required scopes not all granted: 403 ``insufficient_scope`` naming them.
6. Otherwise allowed, as the token's client and subject with its scopes.

Denials are answers, not failures: only an unreachable Redis raises (the transport turns
that into an RPC error, which Envoy treats as "authorizer broken").
"""

from __future__ import annotations

import functools
import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from tokenservice_server.domain.bearer_challenge import (
    BearerError,
    bearer_challenge,
    http_status_for,
)
from tokenservice_server.domain.credentials import CredentialKind, digest, is_well_formed_known
from tokenservice_server.domain.errors import InvalidRequest
from tokenservice_server.domain.rate_limiting import RateLimitPolicy
from tokenservice_server.domain.stats_buffer import StatsBuffer
from tokenservice_server.domain.token_cache import TokenCache
from tokenservice_server.domain.tokens import Caller, TokenRecord, caller_of
from tokenservice_server.domain.value_object import value_object

if TYPE_CHECKING:
    from tokenservice_server.domain.ports import AccessCheckStore

__all__ = [
    "AccessChecker",
    "AccessDecision",
    "AccessRequest",
    "Outcome",
    "RouteRequirements",
    "canonical_ip",
    "client_ip",
    "route_requirements",
]

#: Per-route ``context_extensions`` keys of Envoy's ext_authz filter.
REQUIRED_SCOPES = "required_scopes"
AUDIENCE = "audience"
RATE_LIMIT_KEY = "rate_limit_key"

_ROUTE_KEY = re.compile(r"^[A-Za-z0-9._~:/-]{1,128}$")


class Outcome(StrEnum):
    """Every answer Check gives; the values label ``tokenservice_check_total``."""

    ALLOWED = "allowed"
    MISSING_CREDENTIALS = "missing_credentials"
    INVALID_TOKEN = "invalid_token"
    INSUFFICIENT_SCOPE = "insufficient_scope"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class RouteRequirements:
    """What a route demands, from its ``context_extensions`` (set per route in Envoy)."""

    scopes: frozenset[str] = frozenset()
    audience: str = ""
    rate_limit_key: str = ""  # counts the route's requests per client in its own bucket


@value_object
class AccessRequest:
    """The parts of an HTTP request that Check reads."""

    authorization: str | None
    source_address: str = ""
    forwarded_for: str = ""
    route: RouteRequirements = RouteRequirements()


@value_object
class AccessDecision:
    outcome: Outcome
    http_status: int = 200
    caller: Caller | None = None
    challenge: str = ""  # the WWW-Authenticate value of a 401/403
    error: BearerError | None = None
    description: str = ""
    retry_after: float = 0.0  # seconds, for a 429
    limited_by: str = ""  # the bucket that refused a 429: ip, client or route

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOWED

    @property
    def retry_after_seconds(self) -> int:
        """``Retry-After`` is whole seconds (RFC 9110 section 10.2.3); never 0."""
        return max(1, math.ceil(self.retry_after))


def route_requirements(extensions: Mapping[str, str]) -> RouteRequirements:
    """Read a route's ``context_extensions``; a malformed rate-limit key is a config error.

    Required scopes are split on whitespace and not validated: a scope no token can hold
    simply denies every request (fail closed) and is named in the challenge.
    """
    return _route(
        extensions.get(REQUIRED_SCOPES, ""),
        extensions.get(AUDIENCE, ""),
        extensions.get(RATE_LIMIT_KEY, ""),
    )


@functools.lru_cache(maxsize=1024)
def _route(required_scopes: str, audience: str, key: str) -> RouteRequirements:
    # Routes are few (Envoy's configuration): each is parsed once.
    if key and not _ROUTE_KEY.match(key):
        raise InvalidRequest(
            f"context_extensions.{RATE_LIMIT_KEY}", "1-128 characters of A-Z a-z 0-9 . _ ~ : / -"
        )
    return RouteRequirements(
        scopes=frozenset(required_scopes.split()),
        audience=audience.strip(),
        rate_limit_key=key,
    )


@functools.lru_cache(maxsize=4096)
def canonical_ip(text: str) -> str:
    """``text`` as a canonical IP address, '' if it is none."""
    # Parsing costs ~6 microseconds and the same addresses repeat (Envoy's peers, the
    # clients behind it); the cache is bounded, so a flood of distinct ones only misses.
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return ""


def client_ip(source_address: str, forwarded_for: str, *, trust_forwarded_for: bool) -> str:
    """The address whose bucket counts the request ('' if there is none).

    The first ``x-forwarded-for`` hop names the original client only behind an edge
    proxy that overwrites the header; anyone else can write any address there, so it is
    used only when ``trust_forwarded_for`` says the deployment has such a proxy.
    """
    if trust_forwarded_for and forwarded_for:
        first = canonical_ip(forwarded_for.split(",", 1)[0])
        if first:
            return first
    return canonical_ip(source_address)


def _bearer(authorization: str | None) -> str | None:
    """The token of ``Bearer <token>`` (RFC 6750 section 2.1), '' if empty, None if the
    header is absent or names another scheme."""
    if authorization is None:
        return None
    if authorization.startswith("Bearer "):  # as clients write it: no split, no lower()
        return authorization[7:].strip()
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


@functools.lru_cache(maxsize=1024)
def _challenge(
    realm: str, error: BearerError | None, description: str, scope: frozenset[str]
) -> str:
    # Denials repeat (a flood of bad tokens is the same few answers): format each once.
    return bearer_challenge(realm, error, description=description, scope=scope)


#: The ``auth_stats`` counter of a Check, by whether it was allowed.
_COUNTED_AS = {True: "checks_allowed", False: "checks_denied"}

# Enum members read on every Check, as module globals: on Python 3.11 (the image's)
# ``EnumType`` defines ``__getattr__``, so every attribute lookup on an enum class takes
# the slow hook and ``Outcome.ALLOWED`` costs ~180 ns, a global ~15 (docs/performance.md,
# eighth pass).
_ALLOWED = Outcome.ALLOWED
_ACCESS_TOKEN = CredentialKind.ACCESS_TOKEN


class AccessChecker:
    def __init__(
        self,
        store: AccessCheckStore,
        policy: RateLimitPolicy,
        stats: StatsBuffer,
        clock: Callable[[], float],
        *,
        realm: str,
        trust_forwarded_for: bool = False,
        token_cache: TokenCache | None = None,
    ) -> None:
        self._cache = token_cache
        self._store = store
        self._policy = policy
        self._stats = stats
        self._clock = clock
        self._realm = realm
        self._trust_forwarded_for = trust_forwarded_for
        self._counts_by_address = policy.per_ip > 0
        # No limit is counted in Redis at all: a cached token answers every Check alone.
        self._never_counted = (
            policy.per_ip == 0 and policy.per_client == 0 and policy.per_route == 0
        )

    @property
    def counts_by_address(self) -> bool:
        """Whether the request's addresses are read at all: only the per-IP limit counts
        by them, so without it ``source_address`` and ``forwarded_for`` may be left empty
        (reading Envoy's nested address field costs every Check)."""
        return self._counts_by_address

    @property
    def trusts_forwarded_for(self) -> bool:
        """Whether ``AccessRequest.forwarded_for`` is read (else it may be left empty)."""
        return self._trust_forwarded_for

    def check_cached(
        self, authorization: str | None, route: RouteRequirements
    ) -> AccessDecision | None:
        """The decision for a hot token, from the hot-token cache alone and without
        awaiting anything (and the refusal of a malformed token); None when the cache
        cannot answer (there is none, a limit is counted in Redis, a well-formed token is
        not cached): :meth:`check` then decides.

        Only under a policy that counts nothing in Redis (the per-IP, per-client and
        per-route limits all 0), so the request's addresses are never needed here."""
        cache = self._cache
        if cache is None or not self._never_counted:
            return None
        token = _bearer(authorization)
        if not token:
            return None
        decision = self._without_redis(token, digest(token), route, cache)
        if decision is not None:  # else a lookup in Redis decides
            self._stats.add(_COUNTED_AS[decision.outcome is _ALLOWED])
        return decision

    async def check(self, request: AccessRequest) -> AccessDecision:
        # One coroutine, not two: a hot token's Check awaits nothing.
        token = _bearer(request.authorization)
        if token is None:
            decision = self._deny(Outcome.MISSING_CREDENTIALS, None)
        else:
            route = request.route
            ip = (
                client_ip(
                    request.source_address,
                    request.forwarded_for,
                    trust_forwarded_for=self._trust_forwarded_for,
                )
                if self._counts_by_address
                else ""  # no bucket counts by it
            )
            hashed = digest(token)
            cache = self._cache
            if cache is not None and not (self._never_counted or self._uncounted(ip, route)):
                cache = None  # a limit is counted: the script that counts also resolves
            found = self._without_redis(token, hashed, route, cache)
            if found is not None:
                decision = found
            else:
                # The store caches what it finds live (with the client's own limit).
                record, admission = await self._store.resolve_and_admit(
                    hashed, client_ip=ip, route_key=route.rate_limit_key, policy=self._policy
                )
                if admission.allowed:
                    decision = self._judge(record, route, None)
                else:
                    decision = AccessDecision(
                        outcome=Outcome.RATE_LIMITED,
                        http_status=429,
                        description="too many requests",
                        retry_after=admission.retry_after,
                        limited_by=admission.limited_by,
                    )
        self._stats.add(_COUNTED_AS[decision.outcome is _ALLOWED])
        return decision

    def _judge(
        self, record: TokenRecord | None, route: RouteRequirements, caller: Caller | None
    ) -> AccessDecision:
        """The answer for an admitted request bearing ``record``'s token (None: unknown
        or revoked), as ``caller`` when the hot-token cache made it already."""
        if record is None or record.expires_at <= self._clock():
            return self._deny(
                Outcome.INVALID_TOKEN,
                BearerError.INVALID_TOKEN,
                "the access token is invalid, expired or revoked",
            )
        if route.audience and route.audience not in record.audiences:
            return self._deny(
                Outcome.INVALID_TOKEN,
                BearerError.INVALID_TOKEN,
                "the access token is not meant for this audience",
            )
        if not route.scopes <= record.scopes:
            return self._deny(
                Outcome.INSUFFICIENT_SCOPE,
                BearerError.INSUFFICIENT_SCOPE,
                "the access token lacks a required scope",
                scope=route.scopes,
            )
        # Positional (outcome, http_status, caller): keywords cost more on every Check.
        return AccessDecision(_ALLOWED, 200, caller or caller_of(record))

    def _without_redis(
        self, token: str, hashed: str, route: RouteRequirements, cache: TokenCache | None
    ) -> AccessDecision | None:
        """The decision that needs no Redis: a live token in ``cache`` (without a limit of
        its client's own, which Redis counts), or a malformed token's refusal; None when a
        lookup decides. A hit is a token this service issued (its SHA-256 is a cached live
        token's), so well-formed by construction: the checksum is verified on misses only."""
        hit = cache.get(hashed) if cache is not None else None
        if hit is not None and hit.client_rate_limit <= 0:
            if hit.record.expires_at <= self._clock():
                return self._judge(None, route, None)
            decision = hit.judged
            if decision is None or hit.judged_route is not route:
                # A live token's answer for a route depends on the two alone: judged once
                # per entry and route (routes are interned by ``_route``), while expiry,
                # revocation and the cache's TTL are checked on every call.
                decision = hit.judged = self._judge(hit.record, route, hit.caller)
                hit.judged_route = route
            return decision
        if not is_well_formed_known(token, _ACCESS_TOKEN, hashed):
            return self._deny(
                Outcome.INVALID_TOKEN, BearerError.INVALID_TOKEN, "the access token is malformed"
            )
        return None

    def _uncounted(self, ip: str, route: RouteRequirements) -> bool:
        """Whether no Redis-counted limit applies to this request (so a cached token may
        answer without Redis): no IP limit, no client limit (the client's own one is
        checked on the cached entry) and no limit for the route. Otherwise the one script
        both resolves and counts: a cache would save nothing."""
        policy = self._policy
        return (
            (policy.per_ip == 0 or not ip)
            and policy.per_client == 0
            and (policy.per_route == 0 or not route.rate_limit_key)
        )

    def _deny(
        self,
        outcome: Outcome,
        error: BearerError | None,
        description: str = "",
        *,
        scope: frozenset[str] = frozenset(),
    ) -> AccessDecision:
        challenge = _challenge(self._realm, error, description, scope)
        return AccessDecision(
            outcome=outcome,
            http_status=http_status_for(error),
            challenge=challenge,
            error=error,
            description=description,
        )
