"""Fixtures start real servers (Valkey/Redis, Sentinel, gRPC) on free 127.0.0.1 ports."""

pytest_plugins = [
    "tests.harness.redis_fixtures",
    "tests.harness.grpc_server",
]
