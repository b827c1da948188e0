"""The bootstrap admin client: the first credential an operator holds."""

from __future__ import annotations

from tokenservice_server.domain import scopes
from tokenservice_server.domain.clients import ClientSpec, ClientType, GrantType

__all__ = ["ADMIN_CLIENT_SCOPES", "admin_client_spec"]

ADMIN_CLIENT_SCOPES = (
    scopes.ADMIN,
    scopes.AUTHORIZE,
    scopes.INTROSPECT,
    "cache:*:read",
    "cache:*:write",
)


def admin_client_spec() -> ClientSpec:
    return ClientSpec(
        display_name="tokenservice admin (bootstrap)",
        client_type=ClientType.CONFIDENTIAL,
        grant_types=(GrantType.CLIENT_CREDENTIALS,),
        scopes=tuple(sorted(ADMIN_CLIENT_SCOPES)),
    )
