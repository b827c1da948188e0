"""IssueToken is rate limited per client id and per peer IP: a refused request fails with
RESOURCE_EXHAUSTED, reason RATE_LIMITED and a google.rpc.RetryInfo saying when to retry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.harness.clients import register_client
from tests.harness.grpc_server import AppFactory, Credentials, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tokenservice.client import error_info


class TokenEndpoint:
    def __init__(self, channel: grpc.aio.Channel, admin_token: str) -> None:
        self.channel = channel
        self.admin_token = admin_token

    async def client(self, rate_limit_per_minute: int = 0) -> Credentials:
        return await register_client(
            self.channel, self.admin_token, rate_limit_per_minute=rate_limit_per_minute
        )

    async def refused(self, credentials: Credentials) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await issue_token(self.channel, credentials)
        return caught.value


@pytest.fixture
async def endpoint_factory(valkey: RedisProcess, app_factory: AppFactory) -> AsyncIterator[Any]:
    channels: list[grpc.aio.Channel] = []

    async def make(**limits: int) -> TokenEndpoint:
        app = await app_factory(redis={"url": valkey.url}, rate_limit={"period": 3600, **limits})
        assert app.addresses is not None
        channel = grpc.aio.insecure_channel(app.addresses.grpc_target)
        channels.append(channel)
        admin = await bootstrap_admin(app)
        return TokenEndpoint(channel, await issue_token(channel, admin))

    yield make
    for channel in channels:
        await channel.close()


def _retry_delay(error: grpc.aio.AioRpcError) -> float:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return float(info.retry_delay.ToNanoseconds() / 1e9)
    raise AssertionError("no RetryInfo in the status details")


async def test_client_over_its_limit_is_told_when_to_retry(endpoint_factory: Any) -> None:
    endpoint = await endpoint_factory(token_per_client=3, token_per_ip=0)
    client, other = await endpoint.client(), await endpoint.client()

    for _ in range(3):
        await issue_token(endpoint.channel, client)
    error = await endpoint.refused(client)

    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info is not None
    assert (info.reason, info.domain) == ("RATE_LIMITED", "tokenservice")
    assert info.metadata["bucket"] == "issue_client"
    assert 1100 < _retry_delay(error) <= 1200  # 3 per 3600 s: one every 1200 s
    # Another client has its own bucket.
    await issue_token(endpoint.channel, other)


async def test_peer_ip_limit_counts_every_client_and_bad_request(endpoint_factory: Any) -> None:
    # The admin token of the fixture was the first request from this address.
    endpoint = await endpoint_factory(token_per_ip=3, token_per_client=0)
    client = await endpoint.client()
    await issue_token(endpoint.channel, client)
    # A wrong secret is counted before authentication: floods cost no secret checks.
    with pytest.raises(grpc.aio.AioRpcError) as wrong:
        await issue_token(endpoint.channel, Credentials(client.client_id, "tscs_wrong"))
    assert wrong.value.code() is grpc.StatusCode.UNAUTHENTICATED

    error = await endpoint.refused(await endpoint.client())

    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info is not None
    assert info.metadata["bucket"] == "issue_ip"


async def test_client_record_limit_replaces_the_default(endpoint_factory: Any) -> None:
    endpoint = await endpoint_factory(token_per_client=1000, token_per_ip=0)
    client = await endpoint.client(rate_limit_per_minute=1)

    await issue_token(endpoint.channel, client)
    error = await endpoint.refused(client)

    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 55 < _retry_delay(error) <= 60  # the record says 1 per minute


async def test_unregistrable_client_ids_mint_no_buckets(
    endpoint_factory: Any, valkey: RedisProcess
) -> None:
    endpoint = await endpoint_factory(token_per_client=5, token_per_ip=0)

    error = await endpoint.refused(Credentials("not a client id!", "tscs_x"))

    assert error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED
    buckets = sorted(valkey.client().scan_iter("auth:rate_limit:issue_client:*"))
    assert buckets == ["auth:rate_limit:issue_client:test-admin"]
