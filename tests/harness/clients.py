"""Registering clients and getting their tokens through the public RPCs."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import grpc

from tests.harness.grpc_server import Credentials, bearer, issue_token
from tokenservice.v1 import client_registry_pb2, client_registry_pb2_grpc, token_service_pb2

__all__ = ["register_client", "token_for"]

_numbers = itertools.count(1)


async def register_client(
    channel: grpc.aio.Channel,
    admin_token: str,
    *,
    scopes: Sequence[str] = (),
    rate_limit_per_minute: int = 0,
    client_id: str = "",
) -> Credentials:
    """A confidential client_credentials client (a fresh id unless one is given)."""
    stub = client_registry_pb2_grpc.ClientRegistryStub(channel)
    response = await stub.CreateClient(
        client_registry_pb2.CreateClientRequest(
            client=client_registry_pb2.Client(
                client_id=client_id or f"svc-{next(_numbers)}",
                client_type=client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL,
                allowed_grant_types=[token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS],
                allowed_scopes=list(scopes),
                rate_limit_per_minute=rate_limit_per_minute,
            )
        ),
        metadata=bearer(admin_token),
        timeout=5,
    )
    return Credentials(response.client.client_id, response.client_secret)


async def token_for(
    channel: grpc.aio.Channel, admin_token: str, *scopes: str, rate_limit_per_minute: int = 0
) -> tuple[Credentials, str]:
    """A new client holding ``scopes`` and an access token with all of them."""
    client = await register_client(
        channel, admin_token, scopes=scopes, rate_limit_per_minute=rate_limit_per_minute
    )
    return client, await issue_token(channel, client, " ".join(scopes))
