"""A real Prometheus scrapes a running service: every tokenservice_* and grpc_* metric
that the alert rules or the dashboard read exists, under the names they use."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

from tests.harness.grpc_server import Credentials, issue_token
from tests.harness.redis_servers import RedisProcess
from tests.helpers import free_port
from tests.integration.cache_support import Cache, cache_db
from tests.monitoring.support import (
    alerts,
    binary,
    dashboard_exprs,
    metric_names,
    own_metric,
)
from tokenservice.v1 import token_service_pb2
from tokenservice_server.app import Application
from tokenservice_server.storage import cache_keys

# Read by the rules or the dashboard, but exported by other programs (redis_exporter,
# kube-state-metrics, cert-manager) or by Prometheus itself: not checked here.
EXCLUDED = {
    "up",
    "redis_up",
    "redis_instance_info",
    "redis_connected_slaves",
    "redis_master_link_up",
    "redis_connected_slave_lag_seconds",
    "redis_memory_used_bytes",
    "redis_memory_max_bytes",
    "redis_evicted_keys_total",
    "redis_rejected_connections_total",
    "redis_sentinel_master_status",
    "redis_sentinel_master_ckquorum_status",
    "kube_cronjob_status_last_successful_time",
    "kube_job_status_failed",
    "certmanager_certificate_expiration_timestamp_seconds",
    "certmanager_certificate_ready_status",
}


def _referenced() -> set[str]:
    exprs = [rule["expr"] for rule in alerts()] + dashboard_exprs()
    return set().union(*(metric_names(expr) for expr in exprs))


def test_the_exclusion_list_names_only_external_metrics() -> None:
    referenced = _referenced()
    external = {name for name in referenced if not own_metric(name)}
    assert external == EXCLUDED, "keep EXCLUDED in step with the rules and dashboard"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read().decode())


async def _workload(app: Application, channel: grpc.aio.Channel, admin: Credentials) -> None:
    token = await issue_token(channel, admin)
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.headers["authorization"] = f"Bearer {token}"
    request.attributes.source.address.socket_address.address = "192.0.2.10"
    await stub.Check(request, timeout=5)
    await stub.Check(external_auth_pb2.CheckRequest(), timeout=5)  # no credentials
    with pytest.raises(grpc.aio.AioRpcError):  # a wrong secret: a failed issuance
        await issue_token(channel, Credentials(admin.client_id, admin.client_secret + "x"))
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary(
            "/tokenservice.v1.TokenService/IssueToken",
            request_serializer=token_service_pb2.IssueTokenRequest.SerializeToString,
            response_deserializer=token_service_pb2.IssueTokenResponse.FromString,
        )(token_service_pb2.IssueTokenRequest(client_id="x"), timeout=5)
    cache = Cache(channel, token)
    await cache.set("metrics", "a", b"1")
    await cache.set("metrics", "b", b"2")  # over the cap of 1: evicts "a"
    await cache.get("metrics", "b")
    await cache.get("metrics", "missing")


async def test_prometheus_scrapes_every_metric_the_rules_and_dashboard_read(
    server: Application,
    channel: grpc.aio.Channel,
    admin_credentials: Credentials,
    valkey: RedisProcess,
    tmp_path: Path,
) -> None:
    prometheus = binary("prometheus")
    cache_db(valkey).hset(cache_keys.CONFIG, cache_keys.config_field("metrics", "max_entries"), 1)
    await _workload(server, channel, admin_credentials)

    assert server.addresses is not None
    target = f"{server.addresses.metrics_host}:{server.addresses.metrics_port}"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "tokenservice", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    expected = {name for name in _referenced() if own_metric(name)}
    assert expected, "the rules and dashboard read no tokenservice metric?"
    base = f"http://127.0.0.1:{port}/api/v1"
    names: set[str] = set()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                answer = await asyncio.to_thread(_get, f"{base}/label/__name__/values")
                names = set(answer["data"])
            except OSError:
                names = set()
            if expected <= names:
                break
            await asyncio.sleep(0.25)
        query = urllib.parse.urlencode({"query": 'up{job="tokenservice"}'})
        up = await asyncio.to_thread(_get, f"{base}/query?{query}")
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
    prometheus_log = (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:]
    assert expected <= names, (
        f"missing in Prometheus: {sorted(expected - names)}\nprometheus log:\n{prometheus_log}"
    )
    # TokenServiceDown reads up{job="tokenservice"}: the target is up under that job.
    assert [sample["value"][1] for sample in up["data"]["result"]] == ["1"]
