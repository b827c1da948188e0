"""Domain failures, one exception type per failure, each carrying its reason constant.

Reasons are the ``ErrorReason`` names of ``proto/tokenservice/v1/errors.proto`` without
their prefix. Only the transport layer turns these into gRPC statuses.
"""

from __future__ import annotations

__all__ = [
    "Aborted",
    "AlreadyExists",
    "BackendUnavailable",
    "DomainError",
    "FailedPrecondition",
    "InvalidClient",
    "InvalidGrant",
    "InvalidRequest",
    "InvalidScope",
    "InvalidToken",
    "NamespaceFull",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "Unauthenticated",
    "UnauthorizedClient",
    "UnsupportedGrantType",
    "ValueTooLarge",
]


class DomainError(Exception):
    """Base of every expected failure; ``reason`` is the ErrorInfo reason."""

    reason = "INVALID_REQUEST"

    def __init__(self, message: str, *, field: str | None = None, limit: int | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.limit = limit
        # True when storage decided the failure in the step that also counted the
        # request against its rate limits (so it must not be counted again).
        self.attempt_counted = False

    @property
    def metadata(self) -> dict[str, str]:
        meta: dict[str, str] = {}
        if self.field is not None:
            meta["field"] = self.field
        if self.limit is not None:
            meta["limit"] = str(self.limit)
        return meta


class InvalidRequest(DomainError):
    """A field is missing, malformed or out of bounds (names the field)."""

    reason = "INVALID_REQUEST"

    def __init__(self, field: str, problem: str, *, limit: int | None = None) -> None:
        super().__init__(f"{field}: {problem}", field=field, limit=limit)


class InvalidClient(DomainError):
    """Client authentication failed; deliberately vague about why."""

    reason = "INVALID_CLIENT"

    def __init__(self, message: str = "client authentication failed") -> None:
        super().__init__(message)


class InvalidGrant(DomainError):
    reason = "INVALID_GRANT"


class UnauthorizedClient(DomainError):
    reason = "UNAUTHORIZED_CLIENT"


class UnsupportedGrantType(DomainError):
    reason = "UNSUPPORTED_GRANT_TYPE"


class InvalidScope(DomainError):
    reason = "INVALID_SCOPE"


class NotFound(DomainError):
    reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    reason = "ALREADY_EXISTS"


class PermissionDenied(DomainError):
    """The caller is known but lacks the scope this operation needs."""

    reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    """The call carries no credentials."""

    reason = "UNAUTHENTICATED"


class InvalidToken(DomainError):
    """The presented bearer token is malformed, unknown, expired or revoked."""

    reason = "INVALID_TOKEN"


class FailedPrecondition(DomainError):
    reason = "FAILED_PRECONDITION"


class Aborted(DomainError):
    """A concurrent change to the same resource won; the caller may retry."""

    reason = "ABORTED"


class RateLimited(DomainError):
    """Over a rate limit; ``limited_by`` names the bucket (ErrorInfo metadata ``bucket``)."""

    reason = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: float, limited_by: str = "") -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limited_by = limited_by

    @property
    def metadata(self) -> dict[str, str]:
        meta = super().metadata
        if self.limited_by:
            meta["bucket"] = self.limited_by
        return meta


class BackendUnavailable(DomainError):
    """Storage cannot serve or confirm the request now; the caller may retry after
    ``retry_after`` seconds (sent as google.rpc.RetryInfo when set)."""

    reason = "BACKEND_UNAVAILABLE"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ValueTooLarge(DomainError):
    """A cache key or value exceeds its size limit (names the field and the limit in bytes)."""

    reason = "VALUE_TOO_LARGE"

    def __init__(self, field: str, limit: int) -> None:
        super().__init__(f"{field}: larger than {limit} bytes", field=field, limit=limit)


class NamespaceFull(DomainError):
    """A write cannot fit in a cache namespace even after LRU eviction."""

    reason = "NAMESPACE_FULL"
