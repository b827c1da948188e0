"""A small typed asyncio client for tokenservice.

One ``grpc.aio`` channel with a stub per service, plus decoding of the error model
documented in ``proto/tokenservice/v1/errors.proto`` (a gRPC status with one
``google.rpc.ErrorInfo`` of domain ``tokenservice``)::

    async with TokenServiceClient.from_target("127.0.0.1:50051") as client:
        try:
            response = await client.tokens.IssueToken(request)
        except grpc.aio.AioRpcError as exc:
            if error_reason(exc) == "INVALID_CLIENT":
                ...
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Self

import grpc
from google.rpc import error_details_pb2, status_pb2

from tokenservice.v1 import (
    cache_service_pb2_grpc,
    client_registry_pb2_grpc,
    token_service_pb2_grpc,
)

__all__ = ["ERROR_DOMAIN", "TokenServiceClient", "error_info", "error_reason"]

#: ``google.rpc.ErrorInfo.domain`` of every error tokenservice raises.
ERROR_DOMAIN = "tokenservice"

# Trailer in which gRPC carries the serialized google.rpc.Status with its details.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"


class TokenServiceClient:
    """An asyncio channel to tokenservice exposing the stubs of its three services.

    ``tokens`` is TokenService, ``clients`` is ClientRegistry and ``cache`` is
    CacheService. The client owns the channel: close it, or use ``async with``.
    """

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.tokens = token_service_pb2_grpc.TokenServiceStub(channel)
        self.clients = client_registry_pb2_grpc.ClientRegistryStub(channel)
        self.cache = cache_service_pb2_grpc.CacheServiceStub(channel)

    @classmethod
    def from_target(
        cls,
        target: str,
        credentials: grpc.ChannelCredentials | None = None,
        *,
        options: Sequence[tuple[str, str | int]] = (),
    ) -> Self:
        """Open a channel to ``target`` ("host:port"): TLS with ``credentials``, else plaintext."""
        if credentials is None:
            channel = grpc.aio.insecure_channel(target, options=list(options))
        else:
            channel = grpc.aio.secure_channel(target, credentials, options=list(options))
        return cls(channel)

    async def close(self, grace: float | None = None) -> None:
        """Close the channel; in-flight calls get ``grace`` seconds to finish."""
        await self.channel.close(grace)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


def error_info(exc: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """Return the tokenservice ``ErrorInfo`` of a failed call, or None if it carries none."""
    trailing = exc.trailing_metadata()
    if trailing is None:
        return None
    for key, value in trailing:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return info
    return None


def error_reason(exc: grpc.aio.AioRpcError) -> str | None:
    """Return the error reason (e.g. ``"INVALID_GRANT"``) of a failed call, or None.

    Reasons are the names of ``tokenservice.v1.ErrorReason`` without the
    ``ERROR_REASON_`` prefix.
    """
    info = error_info(exc)
    return info.reason if info is not None else None
