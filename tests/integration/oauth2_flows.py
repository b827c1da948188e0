"""Shared steps of the OAuth2 flow tests (races, sessions, bulk revocation, statistics,
round trips): a server on a fresh Valkey with an admin token, clients of each type, the
calls of the authorization code flow, and what Redis holds of a grant family."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import secrets
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import pytest
import redis
import redis.asyncio

from tests.harness.grpc_server import AppFactory, Credentials, bearer, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.harness.redis_writes import on_redis_writes
from tokenservice.client import error_info, error_reason
from tokenservice.v1 import (
    client_registry_pb2,
    client_registry_pb2_grpc,
    token_service_pb2,
    token_service_pb2_grpc,
)
from tokenservice_server.app import Application
from tokenservice_server.domain.credentials import digest
from tokenservice_server.storage import keys
from tokenservice_server.storage.scripts import ScriptRegistry

pb = token_service_pb2

REDIRECT_URI = "https://app.example/callback"
NATIVE_REDIRECT_URI = "http://127.0.0.1/callback"
#: The token endpoint's rate limits off (0 = unlimited), so 50 concurrent requests from
#: one IP are not refused before they reach the grant.
NO_TOKEN_LIMITS = {"token_per_ip": 0, "token_per_client": 0}

AUTH_CODE = pb.GRANT_TYPE_AUTHORIZATION_CODE
REFRESH = pb.GRANT_TYPE_REFRESH_TOKEN
CLIENT_CREDENTIALS = pb.GRANT_TYPE_CLIENT_CREDENTIALS

_numbers = itertools.count(1)
T = TypeVar("T")


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE code verifier and its S256 challenge (RFC 7636 section 4.2)."""
    verifier = secrets.token_urlsafe(48)  # 64 characters of the unreserved set
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def expect_error(
    outcome: object, code: grpc.StatusCode, reason: str, field_name: str | None = None
) -> grpc.aio.AioRpcError:
    """``outcome`` is a failed call with this status, ErrorInfo reason and field."""
    assert isinstance(outcome, grpc.aio.AioRpcError), f"expected {reason}, got {outcome!r}"
    assert outcome.code() is code, (outcome.code(), outcome.details())
    assert error_reason(outcome) == reason, outcome.details()
    if field_name is not None:
        info = error_info(outcome)
        assert info is not None
        assert info.metadata["field"] == field_name, dict(info.metadata)
    return outcome


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def settle(calls: Sequence[Awaitable[T]]) -> list[T | grpc.aio.AioRpcError]:
    """Run ``calls`` concurrently; RPC failures become values, anything else is raised."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, grpc.aio.AioRpcError):
            raise outcome
    return outcomes  # type: ignore[return-value]


@dataclass
class Flow:
    """A running server, a channel to it, its Valkey, and an admin token (scopes
    tokenservice.admin, tokenservice.authorize and tokenservice.introspect: it plays the
    login front end and the operator)."""

    app: Application
    channel: grpc.aio.Channel
    sync: redis.Redis
    admin: Credentials
    admin_token: str
    tokens: token_service_pb2_grpc.TokenServiceStub = field(init=False)
    registry: client_registry_pb2_grpc.ClientRegistryStub = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = token_service_pb2_grpc.TokenServiceStub(self.channel)
        self.registry = client_registry_pb2_grpc.ClientRegistryStub(self.channel)

    @property
    def target(self) -> str:
        assert self.app.addresses is not None
        return self.app.addresses.grpc_target

    @property
    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.admin_token)

    # -- clients ---------------------------------------------------------------------------

    async def client(
        self,
        *,
        public: bool = False,
        refresh: bool = True,
        client_credentials: bool = False,
        scopes: Sequence[str] = ("profile", "orders:read"),
        redirect_uris: Sequence[str] = (REDIRECT_URI,),
        client_id: str = "",
    ) -> Credentials:
        grants = [AUTH_CODE]
        if refresh:
            grants.append(REFRESH)
        if client_credentials:
            grants.append(CLIENT_CREDENTIALS)
        kind = (
            client_registry_pb2.CLIENT_TYPE_PUBLIC
            if public
            else (client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL)
        )
        response = await self.registry.CreateClient(
            client_registry_pb2.CreateClientRequest(
                client=client_registry_pb2.Client(
                    client_id=client_id or f"app-{next(_numbers)}",
                    client_type=kind,
                    allowed_grant_types=grants,  # type: ignore[arg-type]
                    allowed_scopes=list(scopes),
                    redirect_uris=list(redirect_uris),
                )
            ),
            metadata=self.admin_metadata,
            timeout=5,
        )
        return Credentials(response.client.client_id, response.client_secret)

    async def service_token(self, *scopes: str) -> tuple[Credentials, str]:
        """A confidential client_credentials client holding ``scopes``, and its token."""
        response = await self.registry.CreateClient(
            client_registry_pb2.CreateClientRequest(
                client=client_registry_pb2.Client(
                    client_id=f"svc-{next(_numbers)}",
                    client_type=client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL,
                    allowed_grant_types=[CLIENT_CREDENTIALS],
                    allowed_scopes=list(scopes),
                )
            ),
            metadata=self.admin_metadata,
            timeout=5,
        )
        credentials = Credentials(response.client.client_id, response.client_secret)
        return credentials, await issue_token(self.channel, credentials, " ".join(scopes))

    # -- the authorization code flow --------------------------------------------------------

    async def authorize(
        self,
        client: Credentials,
        *,
        subject: str = "alice",
        scope: str = "",
        session_id: str = "",
        redirect_uri: str = REDIRECT_URI,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> tuple[str, str]:
        """Authorize as the login front end; returns (code, verifier)."""
        verifier, challenge = pkce_pair()
        response = await self.tokens.Authorize(
            pb.AuthorizeRequest(
                client_id=client.client_id,
                redirect_uri=redirect_uri,
                scope=scope,
                code_challenge=challenge,
                code_challenge_method=pb.CODE_CHALLENGE_METHOD_S256,
                subject=subject,
                session_id=session_id,
            ),
            metadata=self.admin_metadata if metadata is None else metadata,
            timeout=5,
        )
        return response.code, verifier

    def redeem(
        self,
        client: Credentials,
        code: str,
        verifier: str,
        *,
        redirect_uri: str = REDIRECT_URI,
        channel: grpc.aio.Channel | None = None,
    ) -> Awaitable[pb.IssueTokenResponse]:
        stub = self.tokens if channel is None else token_service_pb2_grpc.TokenServiceStub(channel)
        return stub.IssueToken(  # type: ignore[no-any-return]
            pb.IssueTokenRequest(
                grant_type=AUTH_CODE,
                client_id=client.client_id,
                client_secret=client.client_secret,
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=verifier,
            ),
            timeout=10,
        )

    async def login(self, client: Credentials, **authorize: Any) -> pb.IssueTokenResponse:
        """Authorize and redeem: a new grant family with an access and a refresh token."""
        code, verifier = await self.authorize(client, **authorize)
        redirect_uri = authorize.get("redirect_uri", REDIRECT_URI)
        return await self.redeem(client, code, verifier, redirect_uri=redirect_uri)

    def refresh(
        self,
        client: Credentials,
        refresh_token: str,
        *,
        scope: str = "",
        channel: grpc.aio.Channel | None = None,
    ) -> Awaitable[pb.IssueTokenResponse]:
        stub = self.tokens if channel is None else token_service_pb2_grpc.TokenServiceStub(channel)
        return stub.IssueToken(  # type: ignore[no-any-return]
            pb.IssueTokenRequest(
                grant_type=REFRESH,
                client_id=client.client_id,
                client_secret=client.client_secret,
                refresh_token=refresh_token,
                scope=scope,
            ),
            timeout=10,
        )

    def revoke(
        self, client: Credentials, token: str, *, channel: grpc.aio.Channel | None = None
    ) -> Awaitable[pb.RevokeTokenResponse]:
        """RevokeToken authenticated with the client's own credentials (RFC 7009)."""
        stub = self.tokens if channel is None else token_service_pb2_grpc.TokenServiceStub(channel)
        return stub.RevokeToken(  # type: ignore[no-any-return]
            pb.RevokeTokenRequest(
                token=token, client_id=client.client_id, client_secret=client.client_secret
            ),
            timeout=10,
        )

    async def introspect(self, token: str) -> pb.IntrospectTokenResponse:
        return await self.tokens.IntrospectToken(  # type: ignore[no-any-return]
            pb.IntrospectTokenRequest(token=token), metadata=self.admin_metadata, timeout=5
        )

    async def active(self, token: str) -> bool:
        return bool((await self.introspect(token)).active)

    # -- sessions, operators ----------------------------------------------------------------

    async def create_session(
        self,
        *,
        subject: str = "alice",
        client_id: str = "web-app",
        attributes: dict[str, str] | None = None,
        ttl_seconds: int = 0,
    ) -> pb.Session:
        response = await self.tokens.CreateSession(
            pb.CreateSessionRequest(
                session=pb.Session(
                    subject=subject, client_id=client_id, attributes=attributes or {}
                ),
                ttl_seconds=ttl_seconds,
            ),
            metadata=self.admin_metadata,
            timeout=5,
        )
        return response.session

    async def stats(self) -> pb.GetTokenStatsResponse:
        return await self.tokens.GetTokenStats(  # type: ignore[no-any-return]
            pb.GetTokenStatsRequest(), metadata=self.admin_metadata, timeout=5
        )

    # -- what Redis holds -------------------------------------------------------------------

    def family_records(self, grant_id: str) -> list[str]:
        """Every access/refresh token record still stored for grant family ``grant_id``."""
        found = []
        for pattern in ("auth:access_token:*", "auth:refresh_token:*"):
            for key in self.sync.scan_iter(pattern):
                if self.sync.hget(key, "f") == grant_id:
                    found.append(key)
        return found

    def live_refresh_records(self, grant_id: str) -> list[str]:
        """Refresh token records of the family that could still be exchanged."""
        return [
            key
            for key in self.family_records(grant_id)
            if key.startswith("auth:refresh_token:") and self.sync.hget(key, "st") == "live"
        ]

    def assert_family_gone(self, grant_id: str, tokens: Sequence[str]) -> None:
        """Nothing of the family can be used any more, by any path: no index, no record,
        no live-count entry, and a blacklist marker for every token given."""
        assert not self.sync.exists(f"auth:family:{grant_id}")
        assert self.family_records(grant_id) == []
        # (NEVER_DECODE: access tokens' entries hold raw digest bytes.)
        access_entries: list[bytes] = self.sync.execute_command(
            "ZRANGE", "auth_token_cleanup", 0, -1, NEVER_DECODE=True
        )
        for token in tokens:
            if token.startswith("tsat_"):
                # Its entry starts with the compact member ('A' + raw digest).
                member = keys.compact_access_member(digest(token))
                assert not [entry for entry in access_entries if entry.startswith(member)]
            else:
                member_text = "r:" + digest(token)
                assert self.sync.zscore("auth_refresh_token_cleanup", member_text) is None
            assert self.sync.exists(f"auth:blacklist:{digest(token)}"), token

    def counter(self, name: str) -> int:
        return int(self.sync.hget("auth_stats", name) or 0)


@contextlib.asynccontextmanager
async def open_flow(
    app_factory: AppFactory, valkey: RedisProcess, **settings: Any
) -> AsyncIterator[Flow]:
    """A server on ``valkey`` (token endpoint limits off unless ``settings`` say
    otherwise), a channel to it and an admin token."""
    settings.setdefault("rate_limit", NO_TOKEN_LIMITS)
    app = await app_factory(redis={"url": valkey.url}, **settings)
    admin = await bootstrap_admin(app)
    assert app.addresses is not None
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        yield Flow(app, channel, valkey.client(), admin, await issue_token(channel, admin))


@contextlib.asynccontextmanager
async def channels(target: str, count: int) -> AsyncIterator[list[grpc.aio.Channel]]:
    """``count`` separate channels (separate HTTP/2 connections) to one server."""
    async with contextlib.AsyncExitStack() as stack:
        opened = [
            await stack.enter_async_context(
                grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
            )
            for _ in range(count)
        ]
        yield opened


# -- counting Redis round trips ----------------------------------------------------------------


def script_names() -> dict[str, str]:
    """SHA1 -> script name of every shipped Lua script (computed locally, no server)."""
    registry = ScriptRegistry(redis.asyncio.Redis())
    return {script.sha: name for name, script in registry.items()}


def _parse_commands(packed: bytes) -> list[list[bytes]]:
    """RESP arrays of bulk strings (what redis-py sends) -> commands with their args."""
    commands, position = [], 0
    while position < len(packed):
        assert packed[position : position + 1] == b"*", packed[position : position + 20]
        end = packed.index(b"\r\n", position)
        count, position = int(packed[position + 1 : end]), end + 2
        args = []
        for _ in range(count):
            end = packed.index(b"\r\n", position)
            length, position = int(packed[position + 1 : end]), end + 2
            args.append(packed[position : position + length])
            position += length + 2
        commands.append(args)
    return commands


@dataclass
class RoundTrips:
    """Every batch of commands this process's asyncio Redis clients wrote, in order: one
    write is one round trip (a pipeline or MULTI/EXEC is one write). Each round trip is
    a tuple of command names, EVALSHA named by its script (``evalsha:rotate_refresh``)."""

    trips: list[tuple[str, ...]] = field(default_factory=list)
    recording: bool = False

    @contextlib.contextmanager
    def measure(self) -> Iterator[list[tuple[str, ...]]]:
        """Record the round trips made inside the block into the yielded list."""
        self.trips = []
        self.recording = True
        try:
            yield self.trips
        finally:
            self.recording = False


@contextlib.contextmanager
def recording_round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[RoundTrips]:
    names = script_names()
    recorder = RoundTrips()

    def record(packed: bytes) -> None:
        if not recorder.recording:
            return
        trip = []
        for args in _parse_commands(packed):
            name = args[0].decode().lower()
            if name == "evalsha":
                name = f"evalsha:{names.get(args[1].decode(), args[1].decode())}"
            trip.append(name)
        # A lone PING is the revocation feed's keepalive on its pub/sub connection
        # (or the health probe): no RPC sends one.
        if trip != ["ping"]:
            recorder.trips.append(tuple(trip))

    on_redis_writes(monkeypatch, record)
    yield recorder
