"""Storage layer: Redis connections for the three topologies, and the Lua scripts.

The domain talks to Redis only through this package; it never imports protobuf messages.
"""

from tokenservice_server.storage.connection import (
    RedisConnections,
    connect_redis,
    open_redis,
)
from tokenservice_server.storage.embedded import EmbeddedValkey, EmbeddedValkeyError
from tokenservice_server.storage.retry import RETRY_BUDGET
from tokenservice_server.storage.scripts import (
    LUA_DIR,
    ScriptHeader,
    ScriptHeaderError,
    ScriptRegistry,
)
from tokenservice_server.storage.sentinel import NoReplicasError

__all__ = [
    "LUA_DIR",
    "RETRY_BUDGET",
    "EmbeddedValkey",
    "EmbeddedValkeyError",
    "NoReplicasError",
    "RedisConnections",
    "ScriptHeader",
    "ScriptHeaderError",
    "ScriptRegistry",
    "connect_redis",
    "open_redis",
]
