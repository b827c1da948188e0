"""A workload touching every RPC family (tokens, codes, refresh, introspection, revocation,
cache, admin actions), for tests that must see the service work end to end: it returns
every credential it issued or presented, for tests that look for them where they must not
be (logs)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import grpc
from google.protobuf import field_mask_pb2

from tests.harness.grpc_server import Credentials, bearer, issue_token
from tests.integration.cache_support import Cache
from tests.integration.oauth2_support import CC, OAuth
from tokenservice.v1 import client_registry_pb2
from tokenservice.v1 import token_service_pb2 as pb


async def full_workload(channel: grpc.aio.Channel, admin: Credentials) -> list[str]:
    admin_token = await issue_token(channel, admin)
    oauth = OAuth(cast("Any", None), channel, admin_token, cast("Any", None))
    seen = [admin.client_secret, admin_token]

    service = await oauth.client(grant_types=(CC,), scopes=("read",), redirect_uris=())
    service_token = await oauth.client_credentials(service, scope="read")
    seen += [service.client_secret, service_token]

    web = await oauth.client()
    flow = await oauth.authorize(web, scope="read")
    issued = await oauth.redeem(flow)
    refreshed = await oauth.refresh(web, issued.refresh_token)
    seen += [web.client_secret, flow.code, flow.verifier, issued.access_token]
    seen += [issued.refresh_token, refreshed.access_token, refreshed.refresh_token]

    assert (await oauth.introspect(refreshed.access_token)).active
    assert (await oauth.introspect(service_token, caller=service_token)).active
    await oauth.revoke(refreshed.refresh_token, client=web)
    assert not (await oauth.introspect(refreshed.refresh_token)).active

    cache = Cache(channel, admin_token)
    await cache.set("recipes", "soup", b"tomato")
    assert (await cache.get("recipes", "soup")).value == b"tomato"

    # Administrative actions (audited).
    await oauth.registry.UpdateClient(
        client_registry_pb2.UpdateClientRequest(
            client=client_registry_pb2.Client(client_id=service.client_id, display_name="svc"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=bearer(admin_token),
        timeout=5,
    )
    rotated = await oauth.registry.RotateClientSecret(
        client_registry_pb2.RotateClientSecretRequest(client_id=service.client_id),
        metadata=bearer(admin_token),
        timeout=5,
    )
    seen.append(rotated.client_secret)
    renewed = replace(service, client_secret=rotated.client_secret)
    seen.append(await oauth.client_credentials(renewed))
    session = await oauth.tokens.CreateSession(
        pb.CreateSessionRequest(session=pb.Session(subject="bob", client_id=web.client_id)),
        metadata=bearer(admin_token),
        timeout=5,
    )
    await oauth.tokens.EndSession(
        pb.EndSessionRequest(session_id=session.session.session_id),
        metadata=bearer(admin_token),
        timeout=5,
    )
    await oauth.tokens.RevokeTokens(
        pb.RevokeTokensRequest(subject="alice"), metadata=bearer(admin_token), timeout=5
    )
    await oauth.registry.DeleteClient(
        client_registry_pb2.DeleteClientRequest(client_id=web.client_id),
        metadata=bearer(admin_token),
        timeout=5,
    )
    return [value for value in seen if value]
