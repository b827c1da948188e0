"""The convenience clients and token sources of tokenservice-client, against a real
in-process gRPC server whose servicers (built from the generated code) script the
outcomes: the subject is the client's behaviour, not the server's."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from tokenservice.client import (
    AsyncTokenServiceClient,
    RetryPolicy,
    SyncTokenServiceClient,
    TokenServiceClient,
    error_reason,
)
from tokenservice.token_source import (
    ClientCredentialsTokenSource,
    SyncClientCredentialsTokenSource,
)
from tokenservice.v1 import cache_service_pb2 as cache
from tokenservice.v1 import cache_service_pb2_grpc as cache_grpc
from tokenservice.v1 import token_service_pb2 as ts
from tokenservice.v1 import token_service_pb2_grpc as ts_grpc

# Quick retries so the suite stays fast; the policy's shape is what is under test.
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)


@dataclass
class Failure:
    code: grpc.StatusCode
    reason: str | None = None


@dataclass
class Script:
    """Shared by the fake servicers: what to do, and what was seen."""

    failures: dict[str, list[Failure]] = field(default_factory=dict)
    always_fail: dict[str, Failure] = field(default_factory=dict)
    delay: dict[str, float] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    cancelled: Counter[str] = field(default_factory=Counter)
    authorization: dict[str, list[str | None]] = field(default_factory=dict)
    expires_in: int = 900
    issued: int = 0
    last_issue: ts.IssueTokenRequest | None = None

    async def enter(self, method: str, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
        self.calls[method] += 1
        headers = dict(context.invocation_metadata() or ())
        self.authorization.setdefault(method, []).append(headers.get("authorization"))  # type: ignore[arg-type]
        if delay := self.delay.get(method):
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:
                self.cancelled[method] += 1
                raise
        failure = self.always_fail.get(method)
        queued = self.failures.get(method)
        if failure is None and queued:
            failure = queued.pop(0)
        if failure is not None:
            await abort(context, failure)


async def abort(context: grpc.aio.ServicerContext, failure: Failure) -> None:  # type: ignore[type-arg]
    """Fail the call as tokenservice does: status plus one ErrorInfo in the trailers."""
    trailing: tuple[tuple[str, bytes], ...] = ()
    if failure.reason is not None:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.ErrorInfo(reason=failure.reason, domain="tokenservice"))
        status = status_pb2.Status(
            code=getattr(code_pb2, failure.code.name), message="scripted", details=[detail]
        )
        trailing = (("grpc-status-details-bin", status.SerializeToString()),)
    await context.abort(failure.code, "scripted", trailing_metadata=trailing)


class FakeTokens(ts_grpc.TokenServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script

    async def IssueToken(self, request, context):  # type: ignore[no-untyped-def]
        await self.script.enter("IssueToken", context)
        self.script.issued += 1
        self.script.last_issue = request
        return ts.IssueTokenResponse(
            access_token=f"token-{self.script.issued}",
            token_type="Bearer",
            expires_in=self.script.expires_in,
            scope=request.scope,
        )

    async def IntrospectToken(self, request, context):  # type: ignore[no-untyped-def]
        await self.script.enter("IntrospectToken", context)
        return ts.IntrospectTokenResponse(active=request.token.startswith("token-"))

    async def RevokeToken(self, request, context):  # type: ignore[no-untyped-def]
        await self.script.enter("RevokeToken", context)
        return ts.RevokeTokenResponse()


class FakeCache(cache_grpc.CacheServiceServicer):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.values: dict[tuple[str, str], bytes] = {}

    async def GetValue(self, request, context):  # type: ignore[no-untyped-def]
        await self.script.enter("GetValue", context)
        value = self.values.get((request.namespace, request.key))
        if value is None:
            return cache.GetValueResponse(found=False)
        return cache.GetValueResponse(found=True, value=value, remaining_ttl_seconds=60)

    async def SetValue(self, request, context):  # type: ignore[no-untyped-def]
        await self.script.enter("SetValue", context)
        self.values[(request.namespace, request.key)] = request.value
        return cache.SetValueResponse()

    async def DeleteValue(self, request, context):  # type: ignore[no-untyped-def]
        await self.script.enter("DeleteValue", context)
        deleted = self.values.pop((request.namespace, request.key), None) is not None
        return cache.DeleteValueResponse(deleted=deleted)


@dataclass
class Server:
    target: str
    script: Script


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    script = Script()
    grpc_server = grpc.aio.server()
    ts_grpc.add_TokenServiceServicer_to_server(FakeTokens(script), grpc_server)  # type: ignore[abstract]
    cache_grpc.add_CacheServiceServicer_to_server(FakeCache(script), grpc_server)  # type: ignore[abstract]
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    await grpc_server.start()
    try:
        yield Server(f"127.0.0.1:{port}", script)
    finally:
        await grpc_server.stop(None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# --- retries and deadlines ------------------------------------------------------------


async def test_retries_unavailable_then_succeeds(server: Server) -> None:
    server.script.failures["IssueToken"] = [Failure(grpc.StatusCode.UNAVAILABLE)] * 2

    async with AsyncTokenServiceClient(server.target, retry=FAST_RETRY) as client:
        response = await client.issue_client_credentials("svc", "s3cret", "cache:r")

    assert response.access_token == "token-1"
    assert response.expires_in == 900
    assert server.script.calls["IssueToken"] == 3
    issued = server.script.last_issue
    assert issued is not None
    assert (issued.grant_type, issued.client_id, issued.client_secret, issued.scope) == (
        ts.GRANT_TYPE_CLIENT_CREDENTIALS,
        "svc",
        "s3cret",
        "cache:r",
    )


async def test_raw_stub_calls_get_the_same_retry_policy(server: Server) -> None:
    server.script.failures["GetValue"] = [Failure(grpc.StatusCode.UNAVAILABLE)]

    async with TokenServiceClient.from_target(server.target, retry=FAST_RETRY) as client:
        response = await client.cache.GetValue(cache.GetValueRequest(namespace="n", key="k"))

    assert response.found is False
    assert server.script.calls["GetValue"] == 2


async def test_gives_up_after_max_attempts_with_the_last_unavailable(server: Server) -> None:
    server.script.always_fail["IntrospectToken"] = Failure(grpc.StatusCode.UNAVAILABLE)

    async with AsyncTokenServiceClient(server.target, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.introspect("token-x")

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.script.calls["IntrospectToken"] == FAST_RETRY.max_attempts


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
    ],
)
async def test_does_not_retry_other_codes(server: Server, code: grpc.StatusCode) -> None:
    server.script.always_fail["SetValue"] = Failure(code, reason="INVALID_REQUEST")

    async with AsyncTokenServiceClient(server.target, retry=FAST_RETRY) as client:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.cache_set("recipes", "k", b"v", ttl_seconds=60)

    assert caught.value.code() == code
    assert error_reason(caught.value) == "INVALID_REQUEST"
    assert server.script.calls["SetValue"] == 1


async def test_default_deadline_applies_to_every_call(server: Server) -> None:
    server.script.delay["IntrospectToken"] = 2.0

    async with AsyncTokenServiceClient(server.target, timeout=0.2) as client:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.introspect("token-1")
        elapsed = time.monotonic() - started

    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.0


async def test_per_call_timeout_overrides_the_default(server: Server) -> None:
    server.script.delay["GetValue"] = 0.3

    async with AsyncTokenServiceClient(server.target, timeout=0.1) as client:
        response = await client.cache_get("recipes", "k", timeout=2.0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.cache.GetValue(cache.GetValueRequest(namespace="n", key="k"))

    assert response.found is False
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_retries_never_run_past_the_deadline(server: Server) -> None:
    server.script.always_fail["IntrospectToken"] = Failure(grpc.StatusCode.UNAVAILABLE)
    server.script.delay["IntrospectToken"] = 0.05
    patient = RetryPolicy(max_attempts=100, initial_backoff=0.02, max_backoff=0.05)

    async with AsyncTokenServiceClient(server.target, timeout=0.5, retry=patient) as client:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.introspect("token-1")
        elapsed = time.monotonic() - started

    assert caught.value.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert 1 < server.script.calls["IntrospectToken"] < 100
    assert elapsed < 0.7


async def test_a_backoff_longer_than_the_deadline_is_not_taken(server: Server) -> None:
    server.script.always_fail["IntrospectToken"] = Failure(grpc.StatusCode.UNAVAILABLE)
    slow = RetryPolicy(max_attempts=5, initial_backoff=5.0, max_backoff=5.0, jitter=0.0)

    async with AsyncTokenServiceClient(server.target, timeout=0.5, retry=slow) as client:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.introspect("token-1")
        elapsed = time.monotonic() - started

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert server.script.calls["IntrospectToken"] == 1
    assert elapsed < 0.4


async def test_cancelling_a_call_cancels_the_rpc(server: Server) -> None:
    server.script.delay["GetValue"] = 2.0

    async with AsyncTokenServiceClient(server.target) as client:
        call = asyncio.ensure_future(client.cache_get("recipes", "k"))
        await asyncio.sleep(0.2)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(50):
            if server.script.cancelled["GetValue"]:
                break
            await asyncio.sleep(0.02)

    assert server.script.cancelled["GetValue"] == 1


def test_retry_policy_backoff_grows_within_jitter_and_cap() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.5, multiplier=2.0, jitter=0.2)

    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        for _ in range(20):
            assert base * 0.8 <= policy.backoff(attempt) <= base * 1.2
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="timeout"):
        SyncTokenServiceClient("127.0.0.1:1", timeout=0)


# --- bearer credentials ---------------------------------------------------------------


async def test_token_source_adds_bearer_metadata_except_to_issue_token(server: Server) -> None:
    async with AsyncTokenServiceClient(server.target, retry=FAST_RETRY) as client:
        client.token_source = ClientCredentialsTokenSource(client, "svc", "s3cret", "cache:rw")
        assert (await client.cache_set("recipes", "k", b"v")).evicted_count == 0
        hit = await client.cache_get("recipes", "k")
        assert (await client.introspect("token-1")).active is True
        await client.revoke("token-1")
        assert (await client.cache_delete("recipes", "k")).deleted is True
        await client.cache_get("recipes", "k", metadata=[("authorization", "Bearer mine")])

    assert hit.value == b"v"
    seen = server.script.authorization
    assert seen["IssueToken"] == [None]
    assert seen["SetValue"] == ["Bearer token-1"]
    assert seen["IntrospectToken"] == ["Bearer token-1"]
    assert seen["RevokeToken"] == ["Bearer token-1"]
    assert seen["DeleteValue"] == ["Bearer token-1"]
    # A caller's own authorization metadata wins over the source's.
    assert seen["GetValue"] == ["Bearer token-1", "Bearer mine"]


async def test_a_token_source_failure_fails_the_call_before_it_is_sent(server: Server) -> None:
    server.script.always_fail["IssueToken"] = Failure(
        grpc.StatusCode.UNAUTHENTICATED, reason="INVALID_CLIENT"
    )

    async with AsyncTokenServiceClient(server.target) as client:
        client.token_source = ClientCredentialsTokenSource(client, "svc", "wrong")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.cache_get("recipes", "k")

    assert error_reason(caught.value) == "INVALID_CLIENT"
    assert server.script.calls["GetValue"] == 0


async def test_without_token_source_no_authorization_is_sent(server: Server) -> None:
    async with AsyncTokenServiceClient(server.target) as client:
        await client.cache_get("recipes", "k", metadata=[("x-trace", "1")])

    assert server.script.authorization["GetValue"] == [None]


# --- ClientCredentialsTokenSource -------------------------------------------------------


async def test_concurrent_callers_share_one_issue_token_call(server: Server) -> None:
    server.script.delay["IssueToken"] = 0.1

    async with AsyncTokenServiceClient(server.target) as client:
        source = ClientCredentialsTokenSource(client, "svc", "s3cret")
        tokens = await asyncio.gather(*(source.token() for _ in range(20)))
        again = await source.token()

    assert set(tokens) == {"token-1"}
    assert again == "token-1"
    assert server.script.calls["IssueToken"] == 1


async def test_renews_before_expiry_on_the_injected_clock(server: Server) -> None:
    clock = FakeClock()
    server.script.expires_in = 100  # renewed with max(10 % = 10 s, 30 s) = 30 s left

    async with AsyncTokenServiceClient(server.target) as client:
        source = ClientCredentialsTokenSource(client, "svc", "s3cret", clock=clock)
        assert await source.token() == "token-1"
        clock.now = 69.9
        assert await source.token() == "token-1"
        clock.now = 70.0
        assert await source.token() == "token-2"
        clock.now = 139.9
        assert await source.token() == "token-2"
        clock.now = 140.0
        assert await source.token() == "token-3"

    assert server.script.calls["IssueToken"] == 3


async def test_renewal_margin_is_configurable_and_capped_for_short_tokens() -> None:
    clock = FakeClock()
    lifetimes = iter([1000, 20])
    calls = 0

    async def issue(client_id: str, client_secret: str, scope: str | None) -> ts.IssueTokenResponse:
        nonlocal calls
        calls += 1
        return ts.IssueTokenResponse(access_token=f"t{calls}", expires_in=next(lifetimes))

    fixed = ClientCredentialsTokenSource(issue, "svc", "s", renew_before=5, clock=clock)
    assert await fixed.token() == "t1"
    clock.now = 994.9
    assert await fixed.token() == "t1"
    clock.now = 995.0
    assert await fixed.token() == "t2"  # a 20 s token: default would renew at 10 s left
    clock.now = 995.0 + 14.9
    assert await fixed.token() == "t2"

    lifetimes = iter([20, 20])
    calls = 0
    default = ClientCredentialsTokenSource(issue, "svc", "s", clock=clock)
    clock.now = 0.0
    assert await default.token() == "t1"
    clock.now = 9.9  # 30 s minimum margin is capped at half of the 20 s lifetime
    assert await default.token() == "t1"
    clock.now = 10.0
    assert await default.token() == "t2"


async def test_failed_renewal_reaches_every_waiter_and_the_next_call_retries(
    server: Server,
) -> None:
    clock = FakeClock()
    server.script.delay["IssueToken"] = 0.05

    async with AsyncTokenServiceClient(server.target) as client:
        source = ClientCredentialsTokenSource(client, "svc", "s3cret", clock=clock)
        assert await source.token() == "token-1"
        clock.now = 10_000.0  # long expired
        server.script.failures["IssueToken"] = [
            Failure(grpc.StatusCode.UNAUTHENTICATED, reason="INVALID_CLIENT")
        ]

        outcomes = await asyncio.gather(
            *(source.token() for _ in range(10)), return_exceptions=True
        )

        assert server.script.calls["IssueToken"] == 2
        assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)
        assert {error_reason(o) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)} == {
            "INVALID_CLIENT"
        }
        assert await source.token() == "token-2"
        assert server.script.calls["IssueToken"] == 3


async def test_a_cancelled_waiter_does_not_cancel_the_shared_renewal(server: Server) -> None:
    server.script.delay["IssueToken"] = 0.1

    async with AsyncTokenServiceClient(server.target) as client:
        source = ClientCredentialsTokenSource(client, "svc", "s3cret")
        impatient = asyncio.ensure_future(source.token())
        patient = asyncio.ensure_future(source.token())
        await asyncio.sleep(0.02)
        impatient.cancel()

        assert await patient == "token-1"
        with pytest.raises(asyncio.CancelledError):
            await impatient

    assert server.script.calls["IssueToken"] == 1


async def test_invalidate_forces_a_renewal(server: Server) -> None:
    async with AsyncTokenServiceClient(server.target) as client:
        source = ClientCredentialsTokenSource(client, "svc", "s3cret")
        assert await source.token() == "token-1"
        source.invalidate()
        assert await source.token() == "token-2"


# --- the blocking client and token source ---------------------------------------------
# The server runs on this test's event loop, so blocking calls go to a worker thread.


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    # The blocking client's errors are also grpc.Call (types-grpcio cannot express that).
    return cast("grpc.Call", error).code()


async def test_sync_client_retries_unavailable_only(server: Server) -> None:
    server.script.failures["IssueToken"] = [Failure(grpc.StatusCode.UNAVAILABLE)] * 2
    server.script.always_fail["SetValue"] = Failure(
        grpc.StatusCode.INVALID_ARGUMENT, reason="INVALID_REQUEST"
    )

    def run() -> tuple[str, grpc.RpcError]:
        with SyncTokenServiceClient(server.target, retry=FAST_RETRY) as client:
            issued = client.issue_client_credentials("svc", "s3cret")
            with pytest.raises(grpc.RpcError) as caught:
                client.cache_set("recipes", "k", b"v")
            return issued.access_token, caught.value

    token, error = await asyncio.to_thread(run)

    assert token == "token-1"
    assert server.script.calls["IssueToken"] == 3
    assert _code(error) == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error) == "INVALID_REQUEST"
    assert server.script.calls["SetValue"] == 1


async def test_sync_client_deadline(server: Server) -> None:
    server.script.delay["GetValue"] = 2.0
    server.script.always_fail["IntrospectToken"] = Failure(grpc.StatusCode.UNAVAILABLE)

    def run() -> tuple[grpc.StatusCode, grpc.StatusCode, float]:
        with SyncTokenServiceClient(server.target, timeout=0.2, retry=FAST_RETRY) as client:
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as slow:
                client.cache_get("recipes", "k")
            with pytest.raises(grpc.RpcError) as down:
                client.introspect("token-1")
            return _code(slow.value), _code(down.value), time.monotonic() - started

    slow_code, down_code, elapsed = await asyncio.to_thread(run)

    assert slow_code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert down_code == grpc.StatusCode.UNAVAILABLE
    assert server.script.calls["IntrospectToken"] == FAST_RETRY.max_attempts
    assert elapsed < 1.0


async def test_sync_token_source_shares_one_renewal_across_threads(server: Server) -> None:
    server.script.delay["IssueToken"] = 0.1

    def run() -> tuple[set[str], str | None]:
        with SyncTokenServiceClient(server.target) as client:
            source = SyncClientCredentialsTokenSource(client, "svc", "s3cret", "cache:r")
            client.token_source = source
            barrier = threading.Barrier(10)

            def fetch() -> str:
                barrier.wait()
                return source.token()

            with ThreadPoolExecutor(10) as pool:
                tokens = set(pool.map(lambda _: fetch(), range(10)))
            client.cache_get("recipes", "k")
            return tokens, server.script.authorization["GetValue"][-1]

    tokens, authorization = await asyncio.to_thread(run)

    assert tokens == {"token-1"}
    assert server.script.calls["IssueToken"] == 1
    assert authorization == "Bearer token-1"
    assert server.script.authorization["IssueToken"] == [None]


def test_sync_token_source_failure_reaches_waiters_and_is_not_cached() -> None:
    clock = FakeClock()
    started = threading.Event()
    release = threading.Event()
    calls = 0

    def issue(client_id: str, client_secret: str, scope: str | None) -> ts.IssueTokenResponse:
        nonlocal calls
        calls += 1
        if calls == 2:
            started.set()
            release.wait(5)
            raise RuntimeError("token service down")
        return ts.IssueTokenResponse(access_token=f"t{calls}", expires_in=100)

    source = SyncClientCredentialsTokenSource(issue, "svc", "s", clock=clock)
    assert source.token() == "t1"
    clock.now = 80.0  # within the 30 s renewal margin

    def attempt() -> str | BaseException:
        try:
            return source.token()
        except RuntimeError as exc:
            return exc

    with ThreadPoolExecutor(5) as pool:
        owner = pool.submit(attempt)
        started.wait(5)
        waiters = [pool.submit(attempt) for _ in range(4)]
        time.sleep(0.2)  # let the waiters block on the renewal
        release.set()
        results = [owner.result(), *(w.result() for w in waiters)]

    assert calls == 2
    assert all(isinstance(r, RuntimeError) for r in results)
    assert source.token() == "t3"
    assert calls == 3
