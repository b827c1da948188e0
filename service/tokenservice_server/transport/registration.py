"""Registering generated services on the server as generic handlers only.

The generated ``add_*Servicer_to_server`` functions of grpcio >= 1.62 register each
method twice: as a generic handler and as a *registered method* of the core server. With
grpcio 1.85's asyncio server, the registered methods made every RPC of every service
(registered or not) cost ~14,000 more instructions: Health/Check 366,000 against
379,700, a cached Check 431,100 against 448,900 (``make bench-instructions``;
docs/performance.md, sixth pass). Our own services were never registered that way, so
Health and reflection, the only registered ones, are served through the generic path too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc

__all__ = ["GenericRegistration"]


class GenericRegistration:
    """Stands in for the server in a generated ``add_*Servicer_to_server``: passes the
    generic handlers on and drops the registered-method table (same handlers)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, Any]
    ) -> None:
        """Not registered: :meth:`add_generic_rpc_handlers` already serves them."""
