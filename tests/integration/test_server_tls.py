"""Server TLS and mTLS on the gRPC listener (issue 7, item 7).

TLS and mTLS calls succeed; a plaintext call to the TLS port, and an mTLS call without a
client certificate, fail; the client-certificate identity reaches the caller-authorization
layer (it is audited with the admin call) and can be restricted to a list; a certificate
replaced on disk is served to new connections without a restart.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.harness.grpc_server import AppFactory, bearer, bootstrap_admin, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.harness.tls import TlsMaterial, generate_tls_material
from tests.helpers import eventually
from tokenservice.v1 import client_registry_pb2, client_registry_pb2_grpc, token_service_pb2
from tokenservice_server.app import Application
from tokenservice_server.storage.audit_store import RedisAuditStore

CLIENT_IDENTITY = "tokenservice test client"


def _tls(material: TlsMaterial, *, mtls: bool = False, **extra: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "cert_file": str(material.server_cert),
        "key_file": str(material.server_key),
    }
    if mtls:
        settings["client_ca_file"] = str(material.ca_cert)
    return {**settings, **extra}


def _credentials(material: TlsMaterial, *, client_cert: bool) -> grpc.ChannelCredentials:
    if not client_cert:
        return grpc.ssl_channel_credentials(root_certificates=material.ca_cert.read_bytes())
    return grpc.ssl_channel_credentials(
        root_certificates=material.ca_cert.read_bytes(),
        private_key=material.client_key.read_bytes(),
        certificate_chain=material.client_cert.read_bytes(),
    )


def _target(app: Application) -> str:
    assert app.addresses is not None
    return f"localhost:{app.addresses.grpc_port}"


async def _health(channel: grpc.aio.Channel) -> int:
    answer = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(answer.status)


async def _fails(channel: grpc.aio.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
    return refused.value.code()


async def test_tls_call_succeeds_and_plaintext_fails(
    app_factory: AppFactory, valkey: RedisProcess, tls_material: TlsMaterial
) -> None:
    app = await app_factory(redis={"url": valkey.url}, tls=_tls(tls_material))
    credentials = _credentials(tls_material, client_cert=False)
    async with grpc.aio.secure_channel(_target(app), credentials) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel(_target(app)) as plain:
        assert await _fails(plain) is grpc.StatusCode.UNAVAILABLE
    # A server certificate from a CA the client does not trust is refused too.
    untrusted = grpc.ssl_channel_credentials(
        root_certificates=tls_material.client_cert.read_bytes()
    )
    async with grpc.aio.secure_channel(_target(app), untrusted) as channel:
        assert await _fails(channel) is grpc.StatusCode.UNAVAILABLE


async def test_mtls_requires_a_client_certificate_and_audits_its_identity(
    app_factory: AppFactory, valkey: RedisProcess, tls_material: TlsMaterial
) -> None:
    app = await app_factory(redis={"url": valkey.url}, tls=_tls(tls_material, mtls=True))
    admin = await bootstrap_admin(app)
    async with grpc.aio.secure_channel(
        _target(app), _credentials(tls_material, client_cert=False)
    ) as without:
        assert await _fails(without) is grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.insecure_channel(_target(app)) as plain:
        assert await _fails(plain) is grpc.StatusCode.UNAVAILABLE

    async with grpc.aio.secure_channel(
        _target(app), _credentials(tls_material, client_cert=True)
    ) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
        token = await issue_token(channel, admin)
        created = await client_registry_pb2_grpc.ClientRegistryStub(channel).CreateClient(
            client_registry_pb2.CreateClientRequest(
                client=client_registry_pb2.Client(
                    client_id="via-mtls",
                    client_type=client_registry_pb2.CLIENT_TYPE_CONFIDENTIAL,
                    allowed_grant_types=[token_service_pb2.GRANT_TYPE_CLIENT_CREDENTIALS],
                )
            ),
            metadata=bearer(token),
            timeout=5,
        )
    assert created.client.client_id == "via-mtls"
    [(_, event)] = await RedisAuditStore(app.redis.auth, 10_000).recent(10)
    assert event.action == "client.create"
    assert event.actor == admin.client_id
    assert event.actor_identity == CLIENT_IDENTITY


async def test_allowed_client_identities_restrict_mtls_callers(
    app_factory: AppFactory, valkey: RedisProcess, tls_material: TlsMaterial
) -> None:
    credentials = _credentials(tls_material, client_cert=True)
    allowed = await app_factory(
        redis={"url": valkey.url},
        tls=_tls(tls_material, mtls=True, allowed_client_identities=[CLIENT_IDENTITY]),
    )
    async with grpc.aio.secure_channel(_target(allowed), credentials) as channel:
        assert await _health(channel) == health_pb2.HealthCheckResponse.SERVING
    others = await app_factory(
        redis={"url": valkey.url},
        tls=_tls(tls_material, mtls=True, allowed_client_identities=["billing"]),
    )
    async with grpc.aio.secure_channel(_target(others), credentials) as channel:
        assert await _fails(channel) is grpc.StatusCode.PERMISSION_DENIED


async def test_a_certificate_replaced_on_disk_is_served_without_restart(
    app_factory: AppFactory, valkey: RedisProcess, tls_material: TlsMaterial, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    for name in ("server.crt", "server.key"):
        shutil.copy(tls_material.server_cert.parent / name, live / name)
    app = await app_factory(
        redis={"url": valkey.url},
        tls={"cert_file": str(live / "server.crt"), "key_file": str(live / "server.key")},
    )
    renewed = generate_tls_material(tmp_path / "renewed")  # another CA, as after a CA rollover
    old_ca = _credentials(tls_material, client_cert=False)
    new_ca = _credentials(renewed, client_cert=False)
    async with grpc.aio.secure_channel(_target(app), old_ca) as established:
        assert await _health(established) == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.secure_channel(_target(app), new_ca) as channel:
            assert await _fails(channel) is grpc.StatusCode.UNAVAILABLE

        # Renewal as cert-manager does it: new files moved into place (key first).
        for source, name in (
            (renewed.server_key, "server.key"),
            (renewed.server_cert, "server.crt"),
        ):
            staged = live / f".{name}.new"
            shutil.copy(source, staged)
            os.replace(staged, live / name)

        async def new_connections_get_the_new_certificate() -> bool:
            async with grpc.aio.secure_channel(_target(app), new_ca) as channel:
                try:
                    return bool(await _health(channel) == health_pb2.HealthCheckResponse.SERVING)
                except grpc.aio.AioRpcError:
                    return False

        await eventually(new_connections_get_the_new_certificate, timeout=10, interval=0.2)
        async with grpc.aio.secure_channel(_target(app), old_ca) as channel:
            assert await _fails(channel) is grpc.StatusCode.UNAVAILABLE
        # The connection made before the renewal keeps working.
        assert await _health(established) == health_pb2.HealthCheckResponse.SERVING
