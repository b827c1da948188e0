"""Redis key names of the data model (SPEC section 4), in one place.

Credentials appear in keys only as SHA-256 digests. Index members name a token by kind
and digest (``a:<digest>`` access, ``r:<digest>`` refresh), so one index can hold both.
"""

from __future__ import annotations

__all__ = [
    "ACCESS_TOKEN_PREFIX",
    "AUDIT_STREAM",
    "AUTH_ROOT",
    "AUTH_STATS",
    "BLACKLIST_PREFIX",
    "CLIENTS_INDEX",
    "CLIENT_PREFIX",
    "CODE_PREFIX",
    "FAMILY_PREFIX",
    "INDEX_CLEANUP",
    "RATE_LIMIT_PREFIX",
    "REFRESH_CLEANUP",
    "REFRESH_TOKEN_PREFIX",
    "SESSION_CLEANUP",
    "SESSION_PREFIX",
    "SESSION_TOKENS_PREFIX",
    "SUBJECT_TOKENS_PREFIX",
    "TOKEN_CLEANUP",
    "access_token_key",
    "access_token_member",
    "blacklist_key",
    "client_key",
    "client_tokens_key",
    "code_key",
    "family_key",
    "rate_limit_key",
    "refresh_token_key",
    "refresh_token_member",
    "session_key",
    "session_tokens_key",
    "subject_tokens_key",
]

CLIENT_PREFIX = "auth:client:"
CLIENTS_INDEX = "auth:clients"  # sorted set of client ids (score 0, lexicographic pages)
CLIENT_TOKENS_PREFIX = "auth:client_tokens:"  # set of token members per client
ACCESS_TOKEN_PREFIX = "auth:access_token:"
REFRESH_TOKEN_PREFIX = "auth:refresh_token:"
BLACKLIST_PREFIX = "auth:blacklist:"
CODE_PREFIX = "auth:code:"
SESSION_PREFIX = "auth:session:"
SESSION_TOKENS_PREFIX = "auth:session_tokens:"  # set of token members bound to a session
SUBJECT_TOKENS_PREFIX = "auth:subject_tokens:"  # set of token members issued for a user
FAMILY_PREFIX = "auth:family:"  # set of token members of one grant (code + refresh chain)
# Sorted sets member -> expiry (Unix seconds), for the cleanup job and live counts.
# Revocation removes members at once, so ZCOUNT(now, +inf) counts live ones exactly.
TOKEN_CLEANUP = "auth_token_cleanup"  # access tokens ('a:<sha256>')
REFRESH_CLEANUP = "auth_refresh_token_cleanup"  # refresh tokens ('r:<sha256>')
SESSION_CLEANUP = "auth_session_cleanup"  # sessions (session id)
# Sorted set '<member>|<client>|<family>|<session>|<subject>' -> expiry (Unix seconds):
# which index sets name a token, so the cleanup job can remove it from exactly those
# once it expired. Revocation and rotation leave it alone (the sets still name the token).
INDEX_CLEANUP = "auth_index_cleanup"
AUTH_STATS = "auth_stats"
AUDIT_STREAM = "auth_audit"  # bounded stream of administrative actions (audit trail)
RATE_LIMIT_PREFIX = "auth:rate_limit:"  # GCRA buckets: auth:rate_limit:{scope}:{id}
#: Scripts derive keys from records they read (a code's subject, a token's family);
#: they get this root and append the suffixes above (standalone/Sentinel only, never
#: Redis Cluster, where every key would have to be declared).
AUTH_ROOT = "auth:"


def client_key(client_id: str) -> str:
    return CLIENT_PREFIX + client_id


def client_tokens_key(client_id: str) -> str:
    return CLIENT_TOKENS_PREFIX + client_id


def access_token_key(digest: str) -> str:
    return ACCESS_TOKEN_PREFIX + digest


def access_token_member(digest: str) -> str:
    return "a:" + digest


def refresh_token_key(digest: str) -> str:
    return REFRESH_TOKEN_PREFIX + digest


def refresh_token_member(digest: str) -> str:
    return "r:" + digest


def code_key(digest: str) -> str:
    return CODE_PREFIX + digest


def session_key(session_id: str) -> str:
    return SESSION_PREFIX + session_id


def session_tokens_key(session_id: str) -> str:
    return SESSION_TOKENS_PREFIX + session_id


def subject_tokens_key(subject: str) -> str:
    return SUBJECT_TOKENS_PREFIX + subject


def family_key(family_id: str) -> str:
    return FAMILY_PREFIX + family_id


def blacklist_key(digest: str) -> str:
    return BLACKLIST_PREFIX + digest


def rate_limit_key(scope: str, bucket_id: str) -> str:
    return f"{RATE_LIMIT_PREFIX}{scope}:{bucket_id}"
