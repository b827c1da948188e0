"""Redis key names of the data model (SPEC section 4), in one place.

Credentials appear in keys only as SHA-256 digests. Index members name a token by kind
and digest, so one index can hold both kinds: an access token is ``A`` followed by the raw
32-byte digest (written by the Lua scripts; 33 bytes instead of 66, as every live token
pays for its members), a refresh token ``r:<hex digest>``. ``a:<hex digest>``
(:func:`access_token_member`) is the text form the scripts accept as an argument, and
the form access tokens were indexed under before the compact one; both are still read.
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
    "access_cleanup_entry",
    "access_token_key",
    "access_token_member",
    "blacklist_key",
    "client_key",
    "client_tokens_key",
    "code_key",
    "compact_access_member",
    "family_key",
    "member_digest",
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
# An access token's member is its cleanup entry (below) with the compact member
# ('A<raw sha256>|<client>|<family>|<session>|<subject>'); legacy ones are 'a:<sha256>'.
TOKEN_CLEANUP = "auth_token_cleanup"
REFRESH_CLEANUP = "auth_refresh_token_cleanup"  # refresh tokens ('r:<sha256>')
SESSION_CLEANUP = "auth_session_cleanup"  # sessions (session id)
# Sorted set '<member>|<client>|<family>|<session>|<subject>' -> expiry (Unix seconds):
# which index sets name a refresh token (or a legacy access token), so the cleanup job
# can remove it from exactly those once it expired. Revocation and rotation leave it
# alone (the sets still name the token).
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
    """Text form of an access token's index member (script argument; legacy stored form)."""
    return "a:" + digest


def compact_access_member(digest: str) -> bytes:
    """How index sets store an access token: ``A`` + the raw 32-byte SHA-256."""
    return b"A" + bytes.fromhex(digest)


def access_cleanup_entry(
    digest: str, client_id: str, family: str = "", session: str = "", subject: str = ""
) -> bytes:
    """An access token's ``auth_token_cleanup`` member, as the scripts write it."""
    parts = (client_id, family, session, subject)
    return compact_access_member(digest) + b"|" + "|".join(parts).encode()


def member_digest(member: bytes | str) -> tuple[str, str]:
    """(kind letter ``a``/``r``, hex digest) of an index member or cleanup entry, any form."""
    raw = member.encode() if isinstance(member, str) else member
    if raw[:1] == b"A":
        return "a", raw[1:33].hex()
    return raw[:1].decode(), raw[2:66].decode()


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
