"""Redis key names of the data model (SPEC section 4), in one place.

Credentials appear in keys only as SHA-256 digests. Index members name a token by kind
and digest (``a:<digest>`` access, ``r:<digest>`` refresh), so one index can hold both.
"""

from __future__ import annotations

__all__ = [
    "ACCESS_TOKEN_PREFIX",
    "AUTH_STATS",
    "BLACKLIST_PREFIX",
    "CLIENTS_INDEX",
    "CLIENT_PREFIX",
    "REFRESH_TOKEN_PREFIX",
    "TOKEN_CLEANUP",
    "access_token_key",
    "access_token_member",
    "blacklist_key",
    "client_key",
    "client_tokens_key",
]

CLIENT_PREFIX = "auth:client:"
CLIENTS_INDEX = "auth:clients"  # sorted set of client ids (score 0, lexicographic pages)
CLIENT_TOKENS_PREFIX = "auth:client_tokens:"  # set of token members per client
ACCESS_TOKEN_PREFIX = "auth:access_token:"
REFRESH_TOKEN_PREFIX = "auth:refresh_token:"
BLACKLIST_PREFIX = "auth:blacklist:"
TOKEN_CLEANUP = "auth_token_cleanup"  # sorted set: member -> expiry (Unix seconds)
AUTH_STATS = "auth_stats"


def client_key(client_id: str) -> str:
    return CLIENT_PREFIX + client_id


def client_tokens_key(client_id: str) -> str:
    return CLIENT_TOKENS_PREFIX + client_id


def access_token_key(digest: str) -> str:
    return ACCESS_TOKEN_PREFIX + digest


def access_token_member(digest: str) -> str:
    return "a:" + digest


def blacklist_key(digest: str) -> str:
    return BLACKLIST_PREFIX + digest
