"""The Check decision (domain only, a fake store): what is answered without Redis, the
RFC 6750 challenges, client IP resolution, route requirements and the counters."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tokenservice_server.domain.access_check import (
    AccessChecker,
    AccessRequest,
    Outcome,
    RouteRequirements,
    client_ip,
    route_requirements,
)
from tokenservice_server.domain.bearer_challenge import BearerError, bearer_challenge
from tokenservice_server.domain.credentials import CredentialKind, digest, new_credential
from tokenservice_server.domain.errors import InvalidRequest, RateLimited
from tokenservice_server.domain.rate_limiting import (
    ADMITTED,
    Admission,
    RateLimitPolicy,
    TokenEndpointThrottle,
)
from tokenservice_server.domain.stats_buffer import StatsBuffer
from tokenservice_server.domain.token_cache import TokenCache, token_key
from tokenservice_server.domain.tokens import TokenRecord

NOW = 1_800_000_000.0
TOKEN = new_credential(CredentialKind.ACCESS_TOKEN)


def _record(**changes: object) -> TokenRecord:
    values: dict[str, object] = {
        "digest": digest(TOKEN),
        "client_id": "svc",
        "scopes": frozenset({"orders:read"}),
        "issued_at": int(NOW) - 10,
        "expires_at": int(NOW) + 900,
        "jti": "j",
        "subject": "user-1",
        "audiences": ("orders",),
    }
    values.update(changes)
    return TokenRecord(**values)  # type: ignore[arg-type]


@dataclass
class FakeStore:
    record: TokenRecord | None = None
    admission: Admission = ADMITTED
    calls: list[dict[str, object]] = field(default_factory=list)

    async def resolve_and_admit(
        self, token_digest: str, *, client_ip: str, route_key: str, policy: RateLimitPolicy
    ) -> tuple[TokenRecord | None, Admission]:
        self.calls.append({"digest": token_digest, "ip": client_ip, "route": route_key})
        return self.record, self.admission


@dataclass
class FakeSink:
    written: list[dict[str, int]] = field(default_factory=list)
    fail: bool = False

    async def increment(self, counts: dict[str, int]) -> None:
        if self.fail:
            raise ConnectionError("redis away")
        self.written.append(counts)


def _checker(store: FakeStore, stats: StatsBuffer | None = None, **options: bool) -> AccessChecker:
    return AccessChecker(
        store,
        RateLimitPolicy(),
        stats or StatsBuffer(FakeSink()),
        lambda: NOW,
        realm="orders",
        **options,
    )


@pytest.mark.parametrize("authorization", [None, "", "Basic dXNlcjpwYXNz", "Token abc"])
async def test_no_bearer_credentials_get_a_bare_challenge_without_a_lookup(
    authorization: str | None,
) -> None:
    store = FakeStore(record=_record())

    decision = await _checker(store).check(AccessRequest(authorization))

    assert decision.outcome is Outcome.MISSING_CREDENTIALS
    assert (decision.http_status, decision.challenge) == (401, 'Bearer realm="orders"')
    assert store.calls == []


@pytest.mark.parametrize(
    "token",
    ["", "tsat_short", TOKEN[:-1] + ("1" if TOKEN.endswith("0") else "0"), "tsrt" + TOKEN[4:]],
)
async def test_malformed_tokens_are_refused_by_checksum_alone(token: str) -> None:
    store = FakeStore(record=_record())

    decision = await _checker(store).check(AccessRequest(f"Bearer {token}"))

    assert decision.outcome is Outcome.INVALID_TOKEN
    assert decision.error is BearerError.INVALID_TOKEN
    assert store.calls == []


@pytest.mark.parametrize(
    "authorization",
    [
        *(f"  {scheme}  {TOKEN} " for scheme in ("Bearer", "bearer", "BEARER", "bEaReR")),
        f"Bearer {TOKEN}",
        f"Bearer  {TOKEN} ",  # the usual spelling's shortcut strips the token too
    ],
)
async def test_the_scheme_is_case_insensitive(authorization: str) -> None:
    store = FakeStore(record=_record())

    decision = await _checker(store).check(AccessRequest(authorization))

    assert decision.allowed
    assert decision.caller is not None
    assert (decision.caller.client_id, decision.caller.subject) == ("svc", "user-1")
    assert store.calls == [{"digest": digest(TOKEN), "ip": "", "route": ""}]


@pytest.mark.parametrize(
    ("record", "route", "outcome", "status"),
    [
        (None, RouteRequirements(), Outcome.INVALID_TOKEN, 401),
        (_record(expires_at=int(NOW)), RouteRequirements(), Outcome.INVALID_TOKEN, 401),
        (_record(), RouteRequirements(audience="billing"), Outcome.INVALID_TOKEN, 401),
        (_record(), RouteRequirements(audience="orders"), Outcome.ALLOWED, 200),
        (
            _record(),
            RouteRequirements(scopes=frozenset({"orders:read", "orders:write"})),
            Outcome.INSUFFICIENT_SCOPE,
            403,
        ),
        (_record(), RouteRequirements(scopes=frozenset({"orders:read"})), Outcome.ALLOWED, 200),
    ],
)
async def test_token_and_route_decide(
    record: TokenRecord | None, route: RouteRequirements, outcome: Outcome, status: int
) -> None:
    decision = await _checker(FakeStore(record=record)).check(
        AccessRequest(f"Bearer {TOKEN}", route=route)
    )

    assert (decision.outcome, decision.http_status) == (outcome, status)


NO_LIMITS = RateLimitPolicy(per_ip=0, per_client=0, per_route=0)


def _cached(record: TokenRecord, client_rate_limit: float = 0.0) -> TokenCache:
    cache = TokenCache(10, 60.0, lambda: 0.0)
    cache.set_up(True)
    cache.put(record, client_rate_limit, cache.epoch)
    return cache


def _hot_checker(
    cache: TokenCache | None, policy: RateLimitPolicy = NO_LIMITS, stats: StatsBuffer | None = None
) -> AccessChecker:
    store = FakeStore(record=_record())
    sink = stats or StatsBuffer(FakeSink())
    return AccessChecker(store, policy, sink, lambda: NOW, realm="orders", token_cache=cache)


@pytest.mark.parametrize(
    ("record", "route"),
    [
        (_record(expires_at=int(NOW)), RouteRequirements()),
        (_record(), RouteRequirements(audience="billing")),
        (_record(), RouteRequirements(audience="orders")),
        (_record(), RouteRequirements(scopes=frozenset({"orders:read", "orders:write"}))),
        (_record(), RouteRequirements(scopes=frozenset({"orders:read"}))),
    ],
)
async def test_a_cached_token_is_decided_without_the_store_as_check_decides(
    record: TokenRecord, route: RouteRequirements
) -> None:
    """``check_cached`` gives ``check``'s answer for a cached token, and counts it."""
    sink = FakeSink()
    stats = StatsBuffer(sink)
    checker = _hot_checker(_cached(record), stats=stats)

    hot = checker.check_cached(f"Bearer {TOKEN}", route)
    await stats.flush()
    expected = await _checker(FakeStore(record=record)).check(
        AccessRequest(f"Bearer {TOKEN}", route=route)
    )

    assert hot is not None
    assert (hot.outcome, hot.http_status, hot.challenge) == (
        expected.outcome,
        expected.http_status,
        expected.challenge,
    )
    assert (hot.caller is None) == (expected.caller is None)
    assert sink.written == [{"checks_allowed" if hot.allowed else "checks_denied": 1}]


@pytest.mark.parametrize(
    ("cache", "policy", "authorization"),
    [
        (None, NO_LIMITS, f"Bearer {TOKEN}"),  # no cache
        (_cached(_record()), RateLimitPolicy(per_ip=0, per_route=0), f"Bearer {TOKEN}"),
        (
            _cached(_record()),
            RateLimitPolicy(per_ip=10, per_client=0, per_route=0),
            f"Bearer {TOKEN}",
        ),
        (_cached(_record(), client_rate_limit=5), NO_LIMITS, f"Bearer {TOKEN}"),  # own limit
        (_cached(_record(digest=digest("other"))), NO_LIMITS, f"Bearer {TOKEN}"),  # not cached
        (None, NO_LIMITS, "Bearer tsat_short"),  # malformed, but no cache: check() says so
        (_cached(_record()), NO_LIMITS, None),
        (_cached(_record()), NO_LIMITS, "Bearer "),
        (_cached(_record()), NO_LIMITS, f"Basic {TOKEN}"),
    ],
)
def test_the_cache_answers_alone_only_when_nothing_is_counted_in_redis(
    cache: TokenCache | None, policy: RateLimitPolicy, authorization: str | None
) -> None:
    checker = _hot_checker(cache, policy)

    assert checker.check_cached(authorization, RouteRequirements()) is None


@pytest.mark.parametrize(
    "token", ["tsat_short", TOKEN[:-1] + ("1" if TOKEN.endswith("0") else "0")]
)
def test_a_malformed_token_is_refused_without_the_store_as_check_refuses_it(token: str) -> None:
    sink = FakeSink()
    stats = StatsBuffer(sink)
    checker = _hot_checker(_cached(_record()), stats=stats)

    decision = checker.check_cached(f"Bearer {token}", RouteRequirements())

    assert decision is not None
    assert (decision.outcome, decision.http_status, decision.description) == (
        Outcome.INVALID_TOKEN,
        401,
        "the access token is malformed",
    )
    assert stats.pending == {"checks_denied": 1}


def test_a_cached_answer_is_judged_once_per_route_and_expiry_is_checked_every_time() -> None:
    now = [NOW]
    cache = _cached(_record(expires_at=int(NOW) + 30))
    checker = AccessChecker(
        FakeStore(),
        NO_LIMITS,
        StatsBuffer(FakeSink()),
        lambda: now[0],
        realm="orders",
        token_cache=cache,
    )
    orders = route_requirements({"required_scopes": "orders:read", "audience": "orders"})
    billing = route_requirements({"audience": "billing"})
    authorization = f"Bearer {TOKEN}"

    first = checker.check_cached(authorization, orders)
    assert first is not None
    assert first.outcome is Outcome.ALLOWED
    assert checker.check_cached(authorization, orders) is first  # judged once
    other = checker.check_cached(authorization, billing)  # another route: judged afresh
    assert other is not None
    assert other.outcome is Outcome.INVALID_TOKEN
    again = checker.check_cached(authorization, orders)
    assert again is not None
    assert again.outcome is Outcome.ALLOWED

    now[0] = NOW + 30  # the token's own expiry, well inside the cache's TTL
    expired = checker.check_cached(authorization, orders)
    assert expired is not None
    assert (expired.outcome, expired.description) == (
        Outcome.INVALID_TOKEN,
        "the access token is invalid, expired or revoked",
    )

    now[0] = NOW
    cache.invalidate([token_key(digest(TOKEN))])  # revoked: the entry and its answer go
    assert checker.check_cached(authorization, orders) is None


def test_a_bypassed_cache_answers_nothing() -> None:
    cache = _cached(_record())
    cache.set_up(False)

    assert _hot_checker(cache).check_cached(f"Bearer {TOKEN}", RouteRequirements()) is None
    assert (cache.hits, cache.misses) == (0, 1)


async def test_insufficient_scope_names_the_required_scopes() -> None:
    route = RouteRequirements(scopes=frozenset({"orders:write", "orders:read"}))

    decision = await _checker(FakeStore(record=_record())).check(
        AccessRequest(f"Bearer {TOKEN}", route=route)
    )

    assert decision.challenge == (
        'Bearer realm="orders", error="insufficient_scope", '
        'error_description="the access token lacks a required scope", '
        'scope="orders:read orders:write"'
    )


async def test_rate_limited_requests_say_when_to_retry() -> None:
    store = FakeStore(
        record=_record(), admission=Admission(False, retry_after=11.2, limited_by="client")
    )

    decision = await _checker(store).check(AccessRequest(f"Bearer {TOKEN}"))

    assert (decision.outcome, decision.http_status) == (Outcome.RATE_LIMITED, 429)
    assert (decision.retry_after_seconds, decision.limited_by) == (12, "client")


async def test_every_check_is_counted() -> None:
    sink = FakeSink()
    stats = StatsBuffer(sink)
    checker = _checker(FakeStore(record=_record()), stats)
    for authorization in (f"Bearer {TOKEN}", None, "Bearer x", f"Bearer {TOKEN}"):
        await checker.check(AccessRequest(authorization))

    await stats.flush()

    assert sink.written == [{"checks_allowed": 2, "checks_denied": 2}]


async def test_counts_survive_a_failed_flush() -> None:
    sink = FakeSink(fail=True)
    stats = StatsBuffer(sink)
    stats.add("checks_denied", 3)

    with pytest.raises(ConnectionError):
        await stats.flush()
    stats.add("checks_denied")
    sink.fail = False
    await stats.flush()

    assert sink.written == [{"checks_denied": 4}]


@pytest.mark.parametrize(
    ("source", "forwarded", "trusted", "expected"),
    [
        ("10.0.0.1", "", False, "10.0.0.1"),
        ("10.0.0.1", "203.0.113.9, 10.0.0.1", False, "10.0.0.1"),
        ("10.0.0.1", "203.0.113.9, 10.0.0.1", True, "203.0.113.9"),
        ("10.0.0.1", " 2001:DB8:0::1 ", True, "2001:db8::1"),
        ("10.0.0.1", "unknown, 203.0.113.9", True, "10.0.0.1"),  # first hop unusable
        ("", "", False, ""),
        ("not-an-ip", "", False, ""),
    ],
)
def test_client_ip(source: str, forwarded: str, trusted: bool, expected: str) -> None:
    assert client_ip(source, forwarded, trust_forwarded_for=trusted) == expected


async def test_the_resolved_ip_and_route_key_reach_the_store() -> None:
    store = FakeStore(record=_record())
    checker = _checker(store, trust_forwarded_for=True)

    await checker.check(
        AccessRequest(
            f"Bearer {TOKEN}",
            source_address="10.0.0.1",
            forwarded_for="198.51.100.4",
            route=RouteRequirements(rate_limit_key="orders-write"),
        )
    )

    assert store.calls == [{"digest": digest(TOKEN), "ip": "198.51.100.4", "route": "orders-write"}]


def test_route_requirements_from_context_extensions() -> None:
    route = route_requirements(
        {"required_scopes": " orders:read  orders:write ", "audience": "orders", "other": "x"}
    )

    assert route == RouteRequirements(
        scopes=frozenset({"orders:read", "orders:write"}), audience="orders"
    )
    assert route_requirements({}) == RouteRequirements()
    with pytest.raises(InvalidRequest, match="rate_limit_key"):
        route_requirements({"rate_limit_key": "has space"})


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (("api",), 'Bearer realm="api"'),
        (('say "hi" \\',), 'Bearer realm="say \\"hi\\" \\\\"'),
        (
            ("api", BearerError.INVALID_TOKEN),
            'Bearer realm="api", error="invalid_token"',
        ),
    ],
)
def test_bearer_challenge_quotes_the_realm(arguments: tuple[object, ...], expected: str) -> None:
    assert bearer_challenge(*arguments) == expected  # type: ignore[arg-type]


def test_bearer_challenge_attributes_keep_to_the_rfc_character_set() -> None:
    challenge = bearer_challenge(
        "api",
        BearerError.INSUFFICIENT_SCOPE,
        description='bad "quote"\\ and\nnewline',
        scope={'a"b', "c"},
    )

    # No quote, backslash or control character may appear (RFC 6750 section 3).
    assert challenge == (
        'Bearer realm="api", error="insufficient_scope", '
        'error_description="bad quote andnewline", scope="ab c"'
    )


@dataclass
class FakeLimiter:
    admission: Admission = ADMITTED
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def admit_token_request(
        self, client_id: str, client_ip: str, policy: RateLimitPolicy
    ) -> Admission:
        self.calls.append((client_id, client_ip))
        return self.admission


async def test_token_throttle_raises_rate_limited_with_the_bucket() -> None:
    limiter = FakeLimiter(Admission(False, retry_after=2.5, limited_by="issue_ip"))

    throttle = TokenEndpointThrottle(limiter, RateLimitPolicy())
    with pytest.raises(RateLimited) as refused:
        await throttle.count_failure(throttle.limits("svc", "10.0.0.1"))

    assert (refused.value.retry_after, refused.value.metadata) == (2.5, {"bucket": "issue_ip"})


async def test_token_throttle_counts_unregistrable_ids_by_ip_only() -> None:
    limiter = FakeLimiter()
    throttle = TokenEndpointThrottle(limiter, RateLimitPolicy())

    for client_id in ("svc-1", "no spaces allowed", "x" * 129):
        await throttle.count_failure(throttle.limits(client_id, "10.0.0.1"))

    assert limiter.calls == [("svc-1", "10.0.0.1"), ("", "10.0.0.1"), ("", "10.0.0.1")]
    # The same buckets travel into the grant scripts: no client bucket for such ids.
    assert throttle.limits("no spaces allowed", "10.0.0.1").client_limit == 0
    assert throttle.limits("svc-1", "").ip_limit == 0
