"""The token endpoint's rate-limit buckets, as the grant scripts take them.

Counting a token request happens inside the script that issues its tokens (KEYS and ARGV
below, consumed by ``_gcra.lua`` ``admit_token_request``), so a successful request costs
one round trip, limits included.
"""

from __future__ import annotations

from typing import Any

from tokenservice_server.domain.rate_limiting import Admission, TokenRequestLimits
from tokenservice_server.storage import keys

__all__ = ["limited", "token_limit_args", "token_limit_keys"]


def token_limit_keys(limits: TokenRequestLimits) -> list[str]:
    return [
        keys.rate_limit_key("issue_client", limits.client_id),
        keys.rate_limit_key("issue_ip", limits.client_ip),
    ]


def token_limit_args(limits: TokenRequestLimits) -> list[int]:
    return [limits.period_ms, limits.client_limit, limits.ip_limit]


def limited(wait_us: Any, bucket: Any) -> Admission:
    """The refusal a script reported as {microseconds to wait, bucket}."""
    label = bucket.decode() if isinstance(bucket, bytes) else str(bucket)
    return Admission(allowed=False, retry_after=int(wait_us) / 1_000_000, limited_by=label)
