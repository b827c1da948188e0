"""Client records in ``auth:client:{client_id}`` hashes (secrets only as keyed hashes)."""

from __future__ import annotations

import json
from typing import Any, cast

from redis.asyncio import Redis

from tokenservice_server.domain.clients import (
    Client,
    ClientRecord,
    ClientSpec,
    ClientType,
    GrantType,
)
from tokenservice_server.domain.token_cache import TokenCache
from tokenservice_server.storage import keys
from tokenservice_server.storage.scripts import ScriptRegistry

__all__ = ["RedisClientStore", "decode_client", "encode_client"]


def encode_client(record: ClientRecord) -> list[str]:
    """Flat field/value list for HSET (empty optional fields are left out)."""
    client, spec = record.client, record.spec
    fields: dict[str, str] = {
        "id": client.client_id,
        "name": spec.display_name,
        "type": spec.client_type.value,
        "grants": " ".join(grant.value for grant in spec.grant_types),
        "scopes": " ".join(spec.scopes),
        "redirect_uris": json.dumps(list(spec.redirect_uris)),
        "audiences": json.dumps(list(spec.audiences)),
        "access_ttl": str(spec.access_token_ttl),
        "refresh_ttl": str(spec.refresh_token_ttl),
        "rate_limit": str(spec.rate_limit_per_minute),
        "created": repr(client.create_time),
        "updated": repr(client.update_time),
        "gen": str(record.generation),
    }
    if record.secret_hash is not None:
        fields["secret"] = record.secret_hash
    if record.previous_secret_hash is not None and client.previous_secret_expire_time:
        fields["prev_secret"] = record.previous_secret_hash
        fields["prev_secret_exp"] = repr(client.previous_secret_expire_time)
    return [item for pair in fields.items() for item in pair]


def decode_client(raw: dict[bytes, bytes] | list[bytes]) -> ClientRecord:
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    data = {key.decode(): value.decode() for key, value in raw.items()}
    spec = ClientSpec(
        display_name=data.get("name", ""),
        client_type=ClientType(data["type"]),
        grant_types=tuple(GrantType(grant) for grant in data["grants"].split()),
        scopes=tuple(data["scopes"].split()),
        redirect_uris=tuple(json.loads(data.get("redirect_uris", "[]"))),
        audiences=tuple(json.loads(data.get("audiences", "[]"))),
        access_token_ttl=int(data.get("access_ttl", "0")),
        refresh_token_ttl=int(data.get("refresh_ttl", "0")),
        rate_limit_per_minute=int(data.get("rate_limit", "0")),
    )
    previous_until = float(data["prev_secret_exp"]) if "prev_secret_exp" in data else None
    client = Client(
        client_id=data["id"],
        spec=spec,
        create_time=float(data["created"]),
        update_time=float(data["updated"]),
        previous_secret_expire_time=previous_until,
    )
    return ClientRecord(
        client=client,
        secret_hash=data.get("secret"),
        previous_secret_hash=data.get("prev_secret"),
        generation=int(data["gen"]),
    )


class RedisClientStore:
    def __init__(self, redis: Redis, scripts: ScriptRegistry) -> None:
        self._redis = redis
        self._scripts = scripts
        self.token_cache: TokenCache | None = None  # dropped from at once on revocation

    async def create(self, record: ClientRecord) -> bool:
        created = await self._scripts.call(
            "create_client",
            keys=[keys.client_key(record.client_id), keys.CLIENTS_INDEX],
            args=[record.client_id, *encode_client(record)],
        )
        return bool(created)

    async def get(self, client_id: str) -> ClientRecord | None:
        raw = cast("dict[bytes, bytes]", await self._redis.hgetall(keys.client_key(client_id)))
        return decode_client(raw) if raw else None

    async def list_after(self, after: str, limit: int) -> list[ClientRecord]:
        rows: list[Any] = await self._scripts.call(
            "list_clients",
            keys=[keys.CLIENTS_INDEX],
            args=[after, limit, keys.CLIENT_PREFIX],
        )
        return [decode_client(row) for row in rows]

    async def replace(self, record: ClientRecord, expected_generation: int) -> bool:
        replaced = await self._scripts.call(
            "replace_client",
            keys=[keys.client_key(record.client_id)],
            args=[expected_generation, *encode_client(record)],
        )
        return bool(replaced)

    async def delete(self, client_id: str) -> int | None:
        revoked = int(
            await self._scripts.call(
                "delete_client",
                keys=[
                    keys.client_key(client_id),
                    keys.client_tokens_key(client_id),
                    keys.CLIENTS_INDEX,
                    keys.AUTH_STATS,
                ],
                args=[client_id, keys.AUTH_ROOT],
            )
        )
        if self.token_cache is not None:
            self.token_cache.invalidate([f"c:{client_id}"])
        return None if revoked < 0 else revoked
