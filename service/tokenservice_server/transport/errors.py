"""Domain errors -> gRPC status with one google.rpc.ErrorInfo (the only place it happens).

The code for each reason is the table in proto/tokenservice/v1/errors.proto.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from tokenservice_server.domain.errors import BackendUnavailable, DomainError, RateLimited

__all__ = ["ERROR_DOMAIN", "STATUS_FOR_REASON", "abort_with_domain_error", "status_details"]

ERROR_DOMAIN = "tokenservice"

STATUS_FOR_REASON: dict[str, grpc.StatusCode] = {
    "INVALID_REQUEST": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_CLIENT": grpc.StatusCode.UNAUTHENTICATED,
    "INVALID_GRANT": grpc.StatusCode.INVALID_ARGUMENT,
    "UNAUTHORIZED_CLIENT": grpc.StatusCode.PERMISSION_DENIED,
    "UNSUPPORTED_GRANT_TYPE": grpc.StatusCode.INVALID_ARGUMENT,
    "INVALID_SCOPE": grpc.StatusCode.INVALID_ARGUMENT,
    "ACCESS_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "RATE_LIMITED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "NOT_FOUND": grpc.StatusCode.NOT_FOUND,
    "ALREADY_EXISTS": grpc.StatusCode.ALREADY_EXISTS,
    "PERMISSION_DENIED": grpc.StatusCode.PERMISSION_DENIED,
    "UNAUTHENTICATED": grpc.StatusCode.UNAUTHENTICATED,
    "INVALID_TOKEN": grpc.StatusCode.UNAUTHENTICATED,
    "VALUE_TOO_LARGE": grpc.StatusCode.INVALID_ARGUMENT,
    "NAMESPACE_FULL": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "BACKEND_UNAVAILABLE": grpc.StatusCode.UNAVAILABLE,
    "FAILED_PRECONDITION": grpc.StatusCode.FAILED_PRECONDITION,
    "ABORTED": grpc.StatusCode.ABORTED,
}


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_details(error: DomainError) -> tuple[grpc.StatusCode, bytes]:
    code = STATUS_FOR_REASON.get(error.reason, grpc.StatusCode.INVALID_ARGUMENT)
    details = [
        _packed(
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
            )
        )
    ]
    retry_after = error.retry_after if isinstance(error, RateLimited | BackendUnavailable) else None
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return code, status.SerializeToString()


async def abort_with_domain_error(
    context: grpc.aio.ServicerContext[Any, Any], error: DomainError
) -> NoReturn:
    code, details = status_details(error)
    await context.abort(
        code, error.message, trailing_metadata=(("grpc-status-details-bin", details),)
    )
    raise AssertionError("unreachable: abort raises")  # pragma: no cover
