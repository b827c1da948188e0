"""Client registration (admin): create, read, list, update, delete, rotate secret.

Secrets are generated here, returned once, and stored only as keyed hashes. Updates
use optimistic concurrency on the record's generation, so two operators editing one
client never silently overwrite each other's change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import secrets
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from tokenservice_server.domain.client_directory import ClientDirectory
from tokenservice_server.domain.clients import (
    Client,
    ClientRecord,
    ClientSpec,
    ClientType,
    validate_client_id,
    validate_spec,
)
from tokenservice_server.domain.credentials import CredentialKind, SecretHasher, new_credential
from tokenservice_server.domain.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
)
from tokenservice_server.domain.ports import ClientStore

__all__ = ["UPDATABLE_FIELDS", "ClientPage", "ClientRegistryService", "IssuedSecret"]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_SECRET_GRACE = 30 * 86_400
_UPDATE_ATTEMPTS = 5

# Field-mask paths an operator may change (names of the ClientSpec fields).
UPDATABLE_FIELDS = frozenset(
    {
        "display_name",
        "grant_types",
        "scopes",
        "redirect_uris",
        "audiences",
        "access_token_ttl",
        "refresh_token_ttl",
        "rate_limit_per_minute",
    }
)


@dataclass(frozen=True)
class IssuedSecret:
    client: Client
    secret: str | None  # None for public clients


@dataclass(frozen=True)
class ClientPage:
    clients: list[Client]
    next_page_token: str


def _encode_page_token(after: str) -> str:
    raw = json.dumps({"v": 1, "after": after}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_page_token(token: str) -> str:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        after = data["after"]
        if data.get("v") != 1 or not isinstance(after, str):
            raise ValueError(token)
        return validate_client_id(after, field="page_token")
    except (ValueError, KeyError, TypeError, UnicodeEncodeError, binascii.Error):
        raise InvalidRequest("page_token", "not a token returned by ListClients") from None


class ClientRegistryService:
    def __init__(
        self,
        store: ClientStore,
        hasher: SecretHasher,
        directory: ClientDirectory,
        clock: Callable[[], float],
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._directory = directory
        self._clock = clock

    def _new_secret(self, spec: ClientSpec) -> tuple[str | None, str | None]:
        if spec.client_type is ClientType.PUBLIC:
            return None, None
        secret = new_credential(CredentialKind.CLIENT_SECRET)
        return secret, self._hasher.hash(secret)

    async def create(
        self, spec: ClientSpec, client_id: str = "", *, secret: str | None = None
    ) -> IssuedSecret:
        """Register a client; ``secret`` is only for bootstrap (init) use."""
        client_id = validate_client_id(client_id, field="client.client_id") if client_id else ""
        client_id = client_id or f"c-{secrets.token_hex(12)}"
        spec = validate_spec(spec)
        clear: str | None
        hashed: str | None
        if secret is not None and spec.client_type is ClientType.CONFIDENTIAL:
            clear, hashed = secret, self._hasher.hash(secret)
        else:
            clear, hashed = self._new_secret(spec)
        now = self._clock()
        record = ClientRecord(
            client=Client(client_id=client_id, spec=spec, create_time=now, update_time=now),
            secret_hash=hashed,
        )
        if not await self._store.create(record):
            raise AlreadyExists(f"client {client_id!r} already exists", field="client.client_id")
        return IssuedSecret(record.client, clear)

    async def _load(self, client_id: str, field: str = "client_id") -> ClientRecord:
        validate_client_id(client_id, field=field)
        record = await self._store.get(client_id)
        if record is None:
            raise NotFound(f"client {client_id!r} not found", field=field)
        return record

    def _visible(self, client: Client) -> Client:
        """The client as callers see it: a grace period that has ended is not shown."""
        until = client.previous_secret_expire_time
        if until is not None and until <= self._clock():
            return replace(client, previous_secret_expire_time=None)
        return client

    async def get(self, client_id: str) -> Client:
        return self._visible((await self._load(client_id)).client)

    async def list(self, page_size: int, page_token: str) -> ClientPage:
        if page_size < 0:
            raise InvalidRequest("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        after = _decode_page_token(page_token) if page_token else ""
        # One extra row tells whether another page exists without a second query.
        records = await self._store.list_after(after, size + 1)
        page = records[:size]
        more = len(records) > size
        token = _encode_page_token(page[-1].client_id) if more and page else ""
        return ClientPage([self._visible(record.client) for record in page], token)

    async def _replace(
        self, client_id: str, change: Callable[[ClientRecord], ClientRecord]
    ) -> ClientRecord:
        for attempt in range(_UPDATE_ATTEMPTS):
            if attempt:
                # Jittered backoff spreads out writers that keep colliding on one record.
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311
            current = await self._load(client_id, field="client.client_id")
            updated = change(current)
            updated = replace(updated, generation=current.generation + 1)
            if await self._store.replace(updated, current.generation):
                self._directory.forget(client_id)
                return updated
        raise Aborted(f"client {client_id!r} is being changed concurrently; retry")

    async def update(self, client_id: str, spec: ClientSpec, paths: Collection[str]) -> Client:
        if not paths:
            raise InvalidRequest("update_mask", "name at least one field to update")
        unknown = sorted(set(paths) - UPDATABLE_FIELDS)
        if unknown:
            raise InvalidRequest("update_mask", f"cannot update {', '.join(unknown)}")

        def change(record: ClientRecord) -> ClientRecord:
            merged = replace(record.spec, **{path: getattr(spec, path) for path in paths})
            merged = validate_spec(merged)
            client = replace(record.client, spec=merged, update_time=self._clock())
            return replace(record, client=client)

        return self._visible((await self._replace(client_id, change)).client)

    async def bootstrap(self, client_id: str, spec: ClientSpec, secret: str | None) -> str:
        """Create or converge a client to ``spec`` with ``secret`` (idempotent, for init).

        ``secret`` is None for a public client. A confidential client's hash is re-made
        when it was made with a previous pepper. Returns "created", "updated" or
        "unchanged".
        """
        spec = validate_spec(spec)
        public = spec.client_type is ClientType.PUBLIC
        if not public and not secret:
            raise InvalidRequest("client_secret", "a confidential client needs a secret")
        current = await self._store.get(client_id)
        if current is None:
            try:
                await self.create(spec, client_id, secret=secret)
            except AlreadyExists:
                return await self.bootstrap(client_id, spec, secret)  # lost a race: converge
            return "created"
        if public:
            secret_ok = current.secret_hash is None and current.previous_secret_hash is None
        else:
            assert secret is not None
            secret_ok = current.secret_hash is not None and self._hasher.is_current(
                secret, current.secret_hash
            )
        if secret_ok and current.spec == spec:
            return "unchanged"

        def change(record: ClientRecord) -> ClientRecord:
            client = replace(
                record.client,
                spec=spec,
                update_time=self._clock(),
                previous_secret_expire_time=None,
            )
            return replace(
                record,
                client=client,
                secret_hash=None if secret is None or public else self._hasher.hash(secret),
                previous_secret_hash=None,
            )

        await self._replace(client_id, change)
        return "updated"

    async def upgrade_secret_hash(self, client_id: str, stored_hash: str, secret: str) -> bool:
        """Re-hash a secret that verified under a previous pepper with the current one.

        Only when the record still holds ``stored_hash`` (a concurrent rotation wins) and
        ``secret`` still verifies against it. True when the record was rewritten.
        """
        current = await self._store.get(client_id)
        if (
            current is None
            or current.secret_hash != stored_hash
            or not self._hasher.verify(secret, stored_hash)
            or self._hasher.is_current(secret, stored_hash)
        ):
            return False
        updated = replace(
            current, secret_hash=self._hasher.hash(secret), generation=current.generation + 1
        )
        if not await self._store.replace(updated, current.generation):
            return False
        self._directory.forget(client_id)
        return True

    async def delete(self, client_id: str) -> int:
        validate_client_id(client_id)
        revoked = await self._store.delete(client_id)
        if revoked is None:
            raise NotFound(f"client {client_id!r} not found", field="client_id")
        self._directory.forget(client_id)
        return revoked

    async def rotate_secret(self, client_id: str, grace_seconds: int) -> IssuedSecret:
        if not 0 <= grace_seconds <= MAX_SECRET_GRACE:
            raise InvalidRequest(
                "previous_secret_grace_seconds",
                f"0-{MAX_SECRET_GRACE} seconds",
                limit=MAX_SECRET_GRACE,
            )
        secret = new_credential(CredentialKind.CLIENT_SECRET)

        def change(record: ClientRecord) -> ClientRecord:
            if record.spec.client_type is ClientType.PUBLIC:
                raise FailedPrecondition(
                    "a public client has no secret to rotate", field="client_id"
                )
            now = self._clock()
            keep_previous = grace_seconds > 0 and record.secret_hash is not None
            client = replace(
                record.client,
                update_time=now,
                previous_secret_expire_time=now + grace_seconds if keep_previous else None,
            )
            return replace(
                record,
                client=client,
                secret_hash=self._hasher.hash(secret),
                previous_secret_hash=record.secret_hash if keep_previous else None,
            )

        updated = await self._replace(client_id, change)
        return IssuedSecret(updated.client, secret)
