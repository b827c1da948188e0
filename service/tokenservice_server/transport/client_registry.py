"""ClientRegistry servicer: protobuf <-> domain, nothing else (admin scope enforced by
the caller-authorization interceptor)."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tokenservice.v1 import client_registry_pb2 as pb
from tokenservice.v1 import token_service_pb2 as token_pb
from tokenservice_server.domain.audit import AuditTrail
from tokenservice_server.domain.client_registry import ClientRegistryService, IssuedSecret
from tokenservice_server.domain.clients import Client, ClientSpec, ClientType, GrantType
from tokenservice_server.domain.errors import InvalidRequest
from tokenservice_server.transport.audit import audited

__all__ = ["ClientRegistryServicer", "client_to_proto", "spec_from_proto"]

Context = grpc.aio.ServicerContext[Any, Any]

_CLIENT_TYPES = {
    pb.CLIENT_TYPE_CONFIDENTIAL: ClientType.CONFIDENTIAL,
    pb.CLIENT_TYPE_PUBLIC: ClientType.PUBLIC,
}
_CLIENT_TYPES_PB = {value: key for key, value in _CLIENT_TYPES.items()}
GRANT_TYPES = {
    token_pb.GRANT_TYPE_CLIENT_CREDENTIALS: GrantType.CLIENT_CREDENTIALS,
    token_pb.GRANT_TYPE_AUTHORIZATION_CODE: GrantType.AUTHORIZATION_CODE,
    token_pb.GRANT_TYPE_REFRESH_TOKEN: GrantType.REFRESH_TOKEN,
}
_GRANT_TYPES_PB = {value: key for key, value in GRANT_TYPES.items()}

# update_mask paths (proto field names) -> ClientSpec attributes.
_MASK_PATHS = {
    "display_name": "display_name",
    "allowed_grant_types": "grant_types",
    "allowed_scopes": "scopes",
    "redirect_uris": "redirect_uris",
    "audiences": "audiences",
    "access_token_ttl_seconds": "access_token_ttl",
    "refresh_token_ttl_seconds": "refresh_token_ttl",
    "rate_limit_per_minute": "rate_limit_per_minute",
}


def _timestamp(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    stamp = Timestamp()
    stamp.FromMicroseconds(round(seconds * 1e6))
    return stamp


def spec_from_proto(message: pb.Client, *, require_type: bool = True) -> ClientSpec:
    if message.client_type not in _CLIENT_TYPES and require_type:
        raise InvalidRequest("client.client_type", "CONFIDENTIAL or PUBLIC")
    grant_types = []
    for index, grant in enumerate(message.allowed_grant_types):
        if grant not in GRANT_TYPES:
            raise InvalidRequest(f"client.allowed_grant_types[{index}]", "unknown grant type")
        grant_types.append(GRANT_TYPES[grant])
    return ClientSpec(
        display_name=message.display_name,
        client_type=_CLIENT_TYPES.get(message.client_type, ClientType.CONFIDENTIAL),
        grant_types=tuple(grant_types),
        scopes=tuple(message.allowed_scopes),
        redirect_uris=tuple(message.redirect_uris),
        audiences=tuple(message.audiences),
        access_token_ttl=message.access_token_ttl_seconds,
        refresh_token_ttl=message.refresh_token_ttl_seconds,
        rate_limit_per_minute=message.rate_limit_per_minute,
    )


def client_to_proto(client: Client) -> pb.Client:
    spec = client.spec
    return pb.Client(
        client_id=client.client_id,
        display_name=spec.display_name,
        client_type=_CLIENT_TYPES_PB[spec.client_type],
        allowed_grant_types=[_GRANT_TYPES_PB[grant] for grant in spec.grant_types],
        allowed_scopes=list(spec.scopes),
        redirect_uris=list(spec.redirect_uris),
        audiences=list(spec.audiences),
        access_token_ttl_seconds=spec.access_token_ttl,
        refresh_token_ttl_seconds=spec.refresh_token_ttl,
        rate_limit_per_minute=spec.rate_limit_per_minute,
        create_time=_timestamp(client.create_time),
        update_time=_timestamp(client.update_time),
        previous_secret_expire_time=_timestamp(client.previous_secret_expire_time),
    )


class ClientRegistryServicer:
    def __init__(self, registry: ClientRegistryService, audit: AuditTrail | None = None) -> None:
        self._registry = registry
        self._audit = audit

    async def CreateClient(
        self, request: pb.CreateClientRequest, context: Context
    ) -> pb.CreateClientResponse:
        async def create() -> IssuedSecret:
            if not request.HasField("client"):
                raise InvalidRequest("client", "required")
            return await self._registry.create(
                spec_from_proto(request.client), request.client.client_id
            )

        issued = await audited(
            self._audit,
            context,
            "client.create",
            f"client:{request.client.client_id}",
            create,
            target_of=lambda issued: f"client:{issued.client.client_id}",
        )
        return pb.CreateClientResponse(
            client=client_to_proto(issued.client), client_secret=issued.secret or ""
        )

    async def GetClient(
        self, request: pb.GetClientRequest, context: Context
    ) -> pb.GetClientResponse:
        return pb.GetClientResponse(
            client=client_to_proto(await self._registry.get(request.client_id))
        )

    async def ListClients(
        self, request: pb.ListClientsRequest, context: Context
    ) -> pb.ListClientsResponse:
        page = await self._registry.list(request.page_size, request.page_token)
        return pb.ListClientsResponse(
            clients=[client_to_proto(client) for client in page.clients],
            next_page_token=page.next_page_token,
        )

    async def UpdateClient(
        self, request: pb.UpdateClientRequest, context: Context
    ) -> pb.UpdateClientResponse:
        async def update() -> Client:
            if not request.HasField("client"):
                raise InvalidRequest("client", "required")
            requested = list(request.update_mask.paths)
            if requested == ["*"]:
                # AIP-134 full replacement: every updatable field ("*" must stand alone).
                requested = list(_MASK_PATHS)
            paths = []
            for path in requested:
                if path not in _MASK_PATHS:
                    raise InvalidRequest("update_mask", f"cannot update {path!r}")
                paths.append(_MASK_PATHS[path])
            spec = spec_from_proto(request.client, require_type=False)
            return await self._registry.update(request.client.client_id, spec, paths)

        client = await audited(
            self._audit,
            context,
            "client.update",
            f"client:{request.client.client_id}",
            update,
            detail=lambda _: {"fields": ",".join(request.update_mask.paths)},
        )
        return pb.UpdateClientResponse(client=client_to_proto(client))

    async def DeleteClient(
        self, request: pb.DeleteClientRequest, context: Context
    ) -> pb.DeleteClientResponse:
        revoked = await audited(
            self._audit,
            context,
            "client.delete",
            f"client:{request.client_id}",
            lambda: self._registry.delete(request.client_id),
            detail=lambda count: {"revoked_token_count": str(count)},
        )
        return pb.DeleteClientResponse(revoked_token_count=revoked)

    async def RotateClientSecret(
        self, request: pb.RotateClientSecretRequest, context: Context
    ) -> pb.RotateClientSecretResponse:
        grace = request.previous_secret_grace_seconds
        issued = await audited(
            self._audit,
            context,
            "client.rotate_secret",
            f"client:{request.client_id}",
            lambda: self._registry.rotate_secret(request.client_id, grace),
            detail=lambda _: {"previous_secret_grace_seconds": str(grace)},
        )
        return pb.RotateClientSecretResponse(
            client_secret=issued.secret or "", client=client_to_proto(issued.client)
        )
