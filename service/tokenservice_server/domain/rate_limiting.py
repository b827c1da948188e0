"""Rate limiting: how many requests a caller may make, one mechanism for every entry point.

Limits are counted per bucket (a client id, a source IP, a route) by the GCRA in
``storage/lua/lib/gcra.lua``: ``limit`` requests per ``period``, of which up to ``limit``
may arrive at once, refilled evenly over the period. Counting happens atomically inside
Redis, so the limits are exact across every replica and under any concurrency. A request
refused by one bucket consumes nothing from the others.

Two entry points use it: Envoy's Check (per client, source IP and route; a refusal is
an HTTP 429 with ``Retry-After``, see :mod:`access_check`) and the token endpoint
(per client and peer IP; a refusal is :class:`RateLimited`, which the transport turns
into RESOURCE_EXHAUSTED with a ``google.rpc.RetryInfo``). A client's own
``rate_limit_per_minute`` replaces the per-client default for that client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenservice_server.domain.clients import CLIENT_ID_PATTERN
from tokenservice_server.domain.errors import RateLimited
from tokenservice_server.domain.tokens import GrantResult
from tokenservice_server.domain.value_object import value_object

if TYPE_CHECKING:
    from tokenservice_server.domain.ports import RateLimitStore

__all__ = [
    "ADMITTED",
    "Admission",
    "RateLimitPolicy",
    "TokenEndpointThrottle",
    "TokenRequestLimits",
    "rate_limited",
    "refused",
]


@dataclass(frozen=True)
class RateLimitPolicy:
    """Requests allowed per ``period`` seconds in each kind of bucket; 0 means no limit.

    ``per_*`` apply to Check, ``token_per_*`` to the token endpoint (separate buckets: a
    service's traffic never spends its token budget). A client's own
    ``rate_limit_per_minute`` (when set) replaces both per-client limits.
    """

    period: int = 60
    per_ip: int = 50
    per_client: int = 1000
    per_route: int = 100
    token_per_ip: int = 50
    token_per_client: int = 1000

    @property
    def period_ms(self) -> int:
        return self.period * 1000


@value_object
class Admission:
    """Whether one request was admitted; when not, which bucket refused and for how long."""

    allowed: bool
    retry_after: float = 0.0  # seconds until a retry can be admitted
    limited_by: str = ""  # the refusing bucket's kind: ip, client, route, issue_ip, ...


ADMITTED = Admission(allowed=True)


@value_object
class TokenRequestLimits:
    """The buckets one token request is counted in, handed to the grant's storage step so
    that counting and issuing are one Redis round trip."""

    client_id: str  # '' when the id could not be registered (no client bucket then)
    client_ip: str  # '' for unix-socket peers (no IP bucket then)
    period_ms: int
    client_limit: int
    ip_limit: int


def refused(admission: Admission) -> RateLimited:
    return RateLimited(
        f"too many token requests ({admission.limited_by} limit); retry later",
        retry_after=admission.retry_after,
        limited_by=admission.limited_by,
    )


def rate_limited(result: GrantResult) -> RateLimited:
    """The refusal a grant's storage step reported."""
    return refused(
        Admission(allowed=False, retry_after=result.retry_after, limited_by=result.limited_by)
    )


class TokenEndpointThrottle:
    """The token endpoint's limits: per client id and per peer IP.

    They are counted before the client authenticates, so a flood of requests costs
    neither secret verification nor token writes. The per-client bucket is counted only
    for ids that could be registered (an arbitrary id would mint arbitrary bucket keys);
    the per-IP bucket bounds everything else.
    """

    def __init__(self, store: RateLimitStore, policy: RateLimitPolicy) -> None:
        self._store = store
        self._policy = policy

    def limits(self, client_id: str, client_ip: str) -> TokenRequestLimits:
        known_id = client_id if CLIENT_ID_PATTERN.match(client_id) else ""
        policy = self._policy
        # Positional (client_id, client_ip, period_ms, client_limit, ip_limit): keywords
        # cost more, on every IssueToken.
        return TokenRequestLimits(
            known_id,
            client_ip,
            policy.period_ms,
            policy.token_per_client if known_id else 0,
            policy.token_per_ip if client_ip else 0,
        )

    async def count_failure(self, limits: TokenRequestLimits) -> None:
        """Count a request that failed before reaching storage (a wrong secret, a
        malformed code), so failures are limited too; raise :class:`RateLimited` when the
        caller is over its limit."""
        admission = await self._store.admit_token_request(
            limits.client_id, limits.client_ip, self._policy
        )
        if not admission.allowed:
            raise refused(admission)
