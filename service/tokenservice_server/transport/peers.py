"""Who is at the other end of a gRPC call, for per-IP rate limits."""

from __future__ import annotations

import functools
from urllib.parse import unquote

from tokenservice_server.domain.access_check import canonical_ip

__all__ = ["peer_ip"]


@functools.lru_cache(maxsize=4096)
def peer_ip(peer: str | None) -> str:
    """The IP of a grpc peer string (``ipv4:10.0.0.1:5000``, ``ipv6:[::1]:5000``, maybe
    percent-encoded); '' for unix sockets and anything unparseable. The address is
    parsed by ``canonical_ip``, which keeps the addresses it has seen (one parse per
    client, not per IssueToken); the peer strings themselves repeat per connection, so
    the answer is kept too (bounded: a flood of new connections only misses)."""
    family, _, rest = unquote(peer or "").partition(":")
    if family not in ("ipv4", "ipv6"):
        return ""
    return canonical_ip(rest.rpartition(":")[0].strip("[]"))
