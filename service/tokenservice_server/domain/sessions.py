"""User sessions: created by the login front end, extended while the user is active
(sliding TTL), ended at logout. Ending a session revokes every token bound to it."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from typing import Protocol

from tokenservice_server.domain.audit import AuditInStep
from tokenservice_server.domain.clients import validate_client_id
from tokenservice_server.domain.errors import InvalidRequest, NotFound
from tokenservice_server.domain.tokens import Session

__all__ = ["SessionService", "SessionStore", "validate_session_id"]

MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_KEY = 64
MAX_ATTRIBUTE_VALUE = 1024
MAX_SESSION_TTL = 30 * 86_400
_SESSION_ID_LENGTH = 35  # "ses_" + 31 characters of token_urlsafe(23)


class SessionStore(Protocol):
    async def create(self, session: Session, ttl: int) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def extend(self, session_id: str, ttl: int, expire_time: float) -> Session | None: ...
    async def end(self, session_id: str, audit: AuditInStep | None = None) -> int | None: ...


def validate_session_id(session_id: str, *, field: str = "session_id") -> str:
    valid = session_id.startswith("ses_") and len(session_id) == _SESSION_ID_LENGTH
    if not valid or not session_id[4:].replace("-", "").replace("_", "").isalnum():
        raise InvalidRequest(field, "not a session id returned by CreateSession")
    return session_id


class SessionService:
    def __init__(self, store: SessionStore, clock: Callable[[], float], default_ttl: int) -> None:
        self._store = store
        self._clock = clock
        self._default_ttl = default_ttl

    def _ttl(self, ttl: int) -> int:
        if ttl == 0:
            return self._default_ttl
        if not 60 <= ttl <= MAX_SESSION_TTL:
            raise InvalidRequest(
                "ttl_seconds", f"0 (default) or 60-{MAX_SESSION_TTL}", limit=MAX_SESSION_TTL
            )
        return ttl

    async def create(
        self, subject: str, client_id: str, attributes: Mapping[str, str], ttl: int
    ) -> Session:
        if not subject or len(subject) > 256 or not subject.isprintable():
            raise InvalidRequest("session.subject", "1-256 printable characters")
        validate_client_id(client_id, field="session.client_id")
        if len(attributes) > MAX_ATTRIBUTES:
            raise InvalidRequest(
                "session.attributes", f"at most {MAX_ATTRIBUTES} entries", limit=MAX_ATTRIBUTES
            )
        for key, value in attributes.items():
            if not key or len(key) > MAX_ATTRIBUTE_KEY or len(value) > MAX_ATTRIBUTE_VALUE:
                raise InvalidRequest(
                    f"session.attributes[{key[:40]!r}]",
                    f"keys 1-{MAX_ATTRIBUTE_KEY}, values up to {MAX_ATTRIBUTE_VALUE} characters",
                )
        seconds = self._ttl(ttl)
        now = self._clock()
        session = Session(
            session_id="ses_" + secrets.token_urlsafe(23),
            subject=subject,
            client_id=client_id,
            create_time=now,
            expire_time=now + seconds,
            attributes=dict(attributes),
        )
        await self._store.create(session, seconds)
        return session

    async def get(self, session_id: str) -> Session:
        found = await self._store.get(validate_session_id(session_id))
        if found is None:
            raise NotFound("the session does not exist or has ended", field="session_id")
        return found

    async def extend(self, session_id: str, ttl: int) -> Session:
        seconds = self._ttl(ttl)
        extended = await self._store.extend(
            validate_session_id(session_id), seconds, self._clock() + seconds
        )
        if extended is None:
            raise NotFound("the session does not exist or has ended", field="session_id")
        return extended

    async def end(self, session_id: str, audit: AuditInStep | None = None) -> int:
        """End the session and revoke its tokens; ``audit`` is written in the same step."""
        revoked = await self._store.end(validate_session_id(session_id), audit)
        if revoked is None:
            raise NotFound("the session does not exist or has ended", field="session_id")
        return revoked
