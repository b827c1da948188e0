"""One promtool case per alert: series on which it must fire, series on which it must not.

``firing`` and ``healthy`` map a series (PromQL selector syntax) to promtool's expanding
notation (``0+60x60``: start at 0, add 60 per 1 m step, 60 steps). ``labels`` are the
labels the firing alert carries besides ``alertname`` and ``severity``. The test builds a
promtool unit-test file from these, with the annotations copied from the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CASES", "AlertCase"]


@dataclass(frozen=True)
class AlertCase:
    alert: str
    firing: dict[str, str]
    healthy: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    at: str = "30m"
    #: Sample and rule-evaluation step; long windows use a coarse one to keep promtool fast.
    interval: str = "1m"


_TS = 'grpc_service="tokenservice.v1.TokenService",grpc_method="IssueToken",grpc_type="unary"'
_CHECK = 'grpc_service="envoy.service.auth.v3.Authorization",grpc_method="Check",grpc_type="unary"'
_POD = 'job="tokenservice",instance="10.0.0.1:9464",pod="tokenservice-a"'
_POD_LABELS = {"job": "tokenservice", "instance": "10.0.0.1:9464", "pod": "tokenservice-a"}
_REDIS = 'job="ts/redis",namespace="ts",pod="redis-0",instance="10.0.1.1:9121"'
_REDIS_LABELS = {
    "job": "ts/redis",
    "namespace": "ts",
    "pod": "redis-0",
    "instance": "10.0.1.1:9121",
}
_RPC_LABELS = {"grpc_service": "tokenservice.v1.TokenService", "grpc_method": "IssueToken"}
_CRON = 'namespace="ts",job="kube-state-metrics"'
_CERT = 'namespace="ts",name="tokenservice-tls"'
_DAY = 86_400
_ISSUED = 'tokenservice_tokens_issued_total{grant="client_credentials",result='
_ROLE = 'redis_instance_info{job="ts/redis",namespace="ts",'
_LAST_SUCCESS = f"kube_cronjob_status_last_successful_time{{{_CRON},"
_EXPIRY = f"certmanager_certificate_expiration_timestamp_seconds{{{_CERT}}}"


def _histogram(name: str, labels: str, buckets: dict[str, str]) -> dict[str, str]:
    return {f'{name}_bucket{{{labels},le="{le}"}}': values for le, values in buckets.items()}


CASES: list[AlertCase] = [
    AlertCase(
        "TokenServiceDown",
        firing={f"up{{{_POD}}}": "0x30"},
        healthy={f"up{{{_POD}}}": "1x30"},
        labels=_POD_LABELS,
        at="10m",
    ),
    AlertCase(
        "TokenServiceHighErrorRatio",
        firing={
            f'grpc_server_handled_total{{{_TS},grpc_code="OK"}}': "0+60x60",
            f'grpc_server_handled_total{{{_TS},grpc_code="UNAVAILABLE"}}': "0+12x60",
        },
        healthy={
            f'grpc_server_handled_total{{{_TS},grpc_code="OK"}}': "0+60x60",
            f'grpc_server_handled_total{{{_TS},grpc_code="UNAVAILABLE"}}': "0+0.6x60",
            # Client errors are not server errors.
            f'grpc_server_handled_total{{{_TS},grpc_code="UNAUTHENTICATED"}}': "0+60x60",
        },
        labels=_RPC_LABELS,
    ),
    AlertCase(
        "TokenServiceInternalErrors",
        firing={
            f'grpc_server_handled_total{{{_TS},grpc_code="OK"}}': "0+60x60",
            f'grpc_server_handled_total{{{_TS},grpc_code="INTERNAL"}}': "0+1x60",
        },
        healthy={
            f'grpc_server_handled_total{{{_TS},grpc_code="OK"}}': "0+60x60",
            f'grpc_server_handled_total{{{_TS},grpc_code="INTERNAL"}}': "0x60",
        },
        labels=_RPC_LABELS,
    ),
    AlertCase(
        "TokenServiceHighLatency",
        firing=_histogram(
            "grpc_server_handling_seconds",
            _TS,
            {"0.1": "0+10x60", "0.5": "0+100x60", "+Inf": "0+100x60"},
        ),
        healthy=_histogram(
            "grpc_server_handling_seconds",
            _TS,
            {"0.1": "0+100x60", "0.5": "0+100x60", "+Inf": "0+100x60"},
        ),
        labels=_RPC_LABELS,
    ),
    AlertCase(
        "TokenServiceCheckLatencyHigh",
        firing=_histogram(
            "grpc_server_handling_seconds",
            _CHECK,
            {"0.05": "0+10x60", "0.25": "0+100x60", "+Inf": "0+100x60"},
        ),
        healthy=_histogram(
            "grpc_server_handling_seconds",
            _CHECK,
            {"0.05": "0+100x60", "0.25": "0+100x60", "+Inf": "0+100x60"},
        ),
    ),
    AlertCase(
        "TokenServiceCheckDenialSpike",
        firing={
            'tokenservice_check_total{result="allowed"}': "0+60x60",
            'tokenservice_check_total{result="invalid_token"}': "0+60x60",
        },
        healthy={
            'tokenservice_check_total{result="allowed"}': "0+60x60",
            'tokenservice_check_total{result="invalid_token"}': "0+3x60",
        },
    ),
    AlertCase(
        "TokenServiceTokenIssuanceFailing",
        firing={
            _ISSUED + '"issued"}': "0+60x60",
            _ISSUED + '"invalid_client"}': "0+60x60",
        },
        healthy={
            _ISSUED + '"issued"}': "0+60x60",
            _ISSUED + '"invalid_client"}': "0+1x60",
        },
        labels={"grant": "client_credentials"},
        at="40m",
    ),
    AlertCase(
        "TokenServiceCheckRateLimited",
        firing={
            'tokenservice_check_total{result="allowed"}': "0+60x60",
            'tokenservice_check_total{result="rate_limited"}': "0+12x60",
        },
        healthy={
            'tokenservice_check_total{result="allowed"}': "0+60x60",
            'tokenservice_check_total{result="rate_limited"}': "0+1x60",
        },
    ),
    AlertCase(
        "TokenServiceTokenEndpointRateLimited",
        firing={'tokenservice_rate_limited_total{bucket="issue_ip"}': "0+60x60"},
        healthy={'tokenservice_rate_limited_total{bucket="issue_ip"}': "0+6x60"},
        labels={"bucket": "issue_ip"},
    ),
    AlertCase(
        "TokenServiceVersionSkew",
        firing={
            'tokenservice_build_info{pod="a",version="0.1.0"}': "1x120",
            'tokenservice_build_info{pod="b",version="0.2.0"}': "1x120",
        },
        healthy={
            'tokenservice_build_info{pod="a",version="0.2.0"}': "1x120",
            'tokenservice_build_info{pod="b",version="0.2.0"}': "1x120",
        },
        at="90m",
    ),
    AlertCase(
        "TokenServiceCacheHitRatioLow",
        firing={
            'tokenservice_cache_requests_total{namespace="recipes",result="hit"}': "0+60x90",
            'tokenservice_cache_requests_total{namespace="recipes",result="miss"}': "0+240x90",
        },
        healthy={
            'tokenservice_cache_requests_total{namespace="recipes",result="hit"}': "0+240x90",
            'tokenservice_cache_requests_total{namespace="recipes",result="miss"}': "0+60x90",
        },
        labels={"namespace": "recipes"},
        at="60m",
    ),
    AlertCase(
        "TokenServiceCacheEvictionsHigh",
        firing={
            'tokenservice_cache_evictions_total{namespace="recipes"}': "0+60x90",
            'tokenservice_cache_requests_total{namespace="recipes",result="set"}': "0+60x90",
        },
        healthy={
            'tokenservice_cache_evictions_total{namespace="recipes"}': "0x90",
            'tokenservice_cache_requests_total{namespace="recipes",result="set"}': "0+60x90",
        },
        labels={"namespace": "recipes"},
        at="60m",
    ),
    AlertCase(
        "TokenServiceRedisDown",
        firing={f"tokenservice_redis_up{{{_POD}}}": "0x10"},
        healthy={f"tokenservice_redis_up{{{_POD}}}": "1x10"},
        labels=_POD_LABELS,
        at="5m",
    ),
    AlertCase(
        "TokenServiceRedisLatencyHigh",
        firing=_histogram(
            "tokenservice_redis_command_duration_seconds",
            'db="auth",command="EVALSHA"',
            {"0.01": "0+10x60", "0.1": "0+100x60", "+Inf": "0+100x60"},
        ),
        healthy=_histogram(
            "tokenservice_redis_command_duration_seconds",
            'db="auth",command="EVALSHA"',
            {"0.01": "0+100x60", "0.1": "0+100x60", "+Inf": "0+100x60"},
        ),
        labels={"db": "auth"},
    ),
    AlertCase(
        "TokenServiceRedisErrors",
        firing={'tokenservice_redis_command_errors_total{db="auth",error="timeout"}': "0+60x60"},
        healthy={
            'tokenservice_redis_command_errors_total{db="auth",error="timeout"}': "0+1x60",
            # NOSCRIPT after a failover is reloaded transparently: not an error to page on.
            'tokenservice_redis_command_errors_total{db="auth",error="noscript"}': "0+60x60",
        },
        labels={"db": "auth", "error": "timeout"},
    ),
    AlertCase(
        "TokenServiceRedisFailover",
        firing={f"tokenservice_redis_failovers_total{{{_POD}}}": "0x10 1x20"},
        healthy={f"tokenservice_redis_failovers_total{{{_POD}}}": "0x30"},
        at="15m",
    ),
    AlertCase(
        "TokenServiceRedisFailoverFlapping",
        firing={f"tokenservice_redis_failovers_total{{{_POD}}}": "0+1x30"},
        healthy={f"tokenservice_redis_failovers_total{{{_POD}}}": "0x20 1x40"},
        at="50m",
    ),
    AlertCase(
        "TokenServiceRedisPoolSaturated",
        firing={
            'tokenservice_redis_pool_connections{pod="a",db="auth",state="in_use"}': "120x20",
            'tokenservice_redis_pool_connections{pod="a",db="auth",state="idle"}': "8x20",
            'tokenservice_redis_pool_max_connections{pod="a",db="auth"}': "128x20",
        },
        healthy={
            'tokenservice_redis_pool_connections{pod="a",db="auth",state="in_use"}': "10x20",
            'tokenservice_redis_pool_connections{pod="a",db="auth",state="idle"}': "118x20",
            'tokenservice_redis_pool_max_connections{pod="a",db="auth"}': "128x20",
        },
        labels={"pod": "a", "db": "auth"},
        at="10m",
    ),
    AlertCase(
        "TokenServiceTokenCacheBypassed",
        firing={f"tokenservice_token_cache_invalidation_up{{{_POD}}}": "1x5 0x10"},
        healthy={f"tokenservice_token_cache_invalidation_up{{{_POD}}}": "1x5 0x1 1x10"},
        labels=_POD_LABELS,
        at="10m",
    ),
    AlertCase(
        "RedisInstanceDown",
        firing={f"redis_up{{{_REDIS}}}": "0x10"},
        healthy={f"redis_up{{{_REDIS}}}": "1x10"},
        labels=_REDIS_LABELS,
        at="5m",
    ),
    AlertCase(
        "RedisNoMaster",
        firing={
            f"redis_up{{{_REDIS}}}": "1x10",
            f'redis_instance_info{{{_REDIS},role="slave"}}': "1x10",
        },
        healthy={
            f"redis_up{{{_REDIS}}}": "1x10",
            f'redis_instance_info{{{_REDIS},role="master"}}': "1x10",
        },
        labels={"namespace": "ts"},
        at="5m",
    ),
    AlertCase(
        "RedisMultipleMasters",
        firing={
            _ROLE + 'pod="redis-0",role="master"}': "1x10",
            _ROLE + 'pod="redis-1",role="master"}': "1x10",
        },
        healthy={
            _ROLE + 'pod="redis-0",role="master"}': "1x10",
            _ROLE + 'pod="redis-1",role="slave"}': "1x10",
        },
        labels={"namespace": "ts"},
        at="5m",
    ),
    AlertCase(
        "RedisSentinelFailoverInProgress",
        firing={
            'redis_sentinel_master_status{pod="sentinel-0",master_name="tokenservice",'
            'master_address="10.0.1.1:6379",master_status="odown"}': "0x10"
        },
        healthy={
            'redis_sentinel_master_status{pod="sentinel-0",master_name="tokenservice",'
            'master_address="10.0.1.1:6379",master_status="ok"}': "1x10"
        },
        labels={
            "pod": "sentinel-0",
            "master_name": "tokenservice",
            "master_address": "10.0.1.1:6379",
            "master_status": "odown",
        },
        at="5m",
    ),
    AlertCase(
        "RedisSentinelQuorumLost",
        firing={'redis_sentinel_master_ckquorum_status{pod="sentinel-0",master_name="ts"}': "0x10"},
        healthy={
            'redis_sentinel_master_ckquorum_status{pod="sentinel-0",master_name="ts"}': "1x10"
        },
        labels={"pod": "sentinel-0", "master_name": "ts"},
        at="5m",
    ),
    AlertCase(
        "RedisReplicaDown",
        firing={
            'redis_connected_slaves{job="ts/redis",namespace="ts",pod="redis-0"}': "1x20",
            'redis_connected_slaves{job="ts/redis",namespace="ts",pod="redis-1"}': "0x20",
        },
        healthy={
            'redis_connected_slaves{job="ts/redis",namespace="ts",pod="redis-0"}': "2x20",
            'redis_connected_slaves{job="ts/redis",namespace="ts",pod="redis-1"}': "0x20",
        },
        labels={"namespace": "ts"},
        at="10m",
    ),
    AlertCase(
        "RedisReplicationBroken",
        firing={f"redis_master_link_up{{{_REDIS}}}": "0x10"},
        healthy={f"redis_master_link_up{{{_REDIS}}}": "1x10"},
        labels=_REDIS_LABELS,
        at="5m",
    ),
    AlertCase(
        "RedisReplicaLag",
        firing={f'redis_connected_slave_lag_seconds{{{_REDIS},slave_ip="10.0.1.2"}}': "30x20"},
        healthy={f'redis_connected_slave_lag_seconds{{{_REDIS},slave_ip="10.0.1.2"}}': "0x20"},
        labels={"namespace": "ts", "pod": "redis-0", "slave_ip": "10.0.1.2"},
        at="10m",
    ),
    AlertCase(
        "RedisMemoryNearMax",
        firing={
            f"redis_memory_used_bytes{{{_REDIS}}}": "90x20",
            f"redis_memory_max_bytes{{{_REDIS}}}": "100x20",
        },
        healthy={
            f"redis_memory_used_bytes{{{_REDIS}}}": "50x20",
            f"redis_memory_max_bytes{{{_REDIS}}}": "100x20",
        },
        labels=_REDIS_LABELS,
        at="15m",
    ),
    AlertCase(
        "RedisOutOfMemory",
        firing={
            f"redis_memory_used_bytes{{{_REDIS}}}": "97x20",
            f"redis_memory_max_bytes{{{_REDIS}}}": "100x20",
        },
        healthy={
            f"redis_memory_used_bytes{{{_REDIS}}}": "90x20",
            f"redis_memory_max_bytes{{{_REDIS}}}": "100x20",
        },
        labels=_REDIS_LABELS,
        at="10m",
    ),
    AlertCase(
        "RedisMaxmemoryNotSet",
        firing={f"redis_memory_max_bytes{{{_REDIS}}}": "0x90"},
        healthy={f"redis_memory_max_bytes{{{_REDIS}}}": "100x90"},
        labels=_REDIS_LABELS,
        at="70m",
    ),
    AlertCase(
        "RedisEvictingKeys",
        firing={f"redis_evicted_keys_total{{{_REDIS}}}": "0+5x20"},
        healthy={f"redis_evicted_keys_total{{{_REDIS}}}": "0x20"},
        labels=_REDIS_LABELS,
        at="10m",
    ),
    AlertCase(
        "RedisRejectedConnections",
        firing={f"redis_rejected_connections_total{{{_REDIS}}}": "0+5x20"},
        healthy={f"redis_rejected_connections_total{{{_REDIS}}}": "0x20"},
        labels=_REDIS_LABELS,
        at="10m",
    ),
    AlertCase(
        "TokenServiceCleanupJobNotRun",
        firing={_LAST_SUCCESS + 'cronjob="tokenservice-cleanup-tokens"}': "0x60"},
        healthy={_LAST_SUCCESS + 'cronjob="tokenservice-cleanup-tokens"}': "0+60x60"},
        labels={"namespace": "ts", "cronjob": "tokenservice-cleanup-tokens"},
        at="60m",
    ),
    AlertCase(
        "TokenServiceCleanupJobFailed",
        firing={
            f'kube_job_status_failed{{{_CRON},job_name="tokenservice-cleanup-cache-29000000"}}': (
                "1x10"
            )
        },
        healthy={
            f'kube_job_status_failed{{{_CRON},job_name="tokenservice-cleanup-cache-29000000"}}': (
                "0x10"
            )
        },
        labels={"namespace": "ts", "job_name": "tokenservice-cleanup-cache-29000000"},
        at="10m",
    ),
    AlertCase(
        "TokenServiceBackupNotRun",
        firing={_LAST_SUCCESS + 'cronjob="tokenservice-backup"}': "0x120"},
        healthy={_LAST_SUCCESS + 'cronjob="tokenservice-backup"}': "0+900x120"},
        labels={"namespace": "ts", "cronjob": "tokenservice-backup"},
        at="27h",
        interval="15m",
    ),
    AlertCase(
        "TokenServiceCertificateExpiringSoon",
        firing={_EXPIRY: f"{10 * _DAY}x90"},
        healthy={_EXPIRY: f"{90 * _DAY}x90"},
        labels={"namespace": "ts", "name": "tokenservice-tls"},
        at="70m",
    ),
    AlertCase(
        "TokenServiceCertificateExpiryCritical",
        firing={_EXPIRY: f"{2 * _DAY}x20"},
        healthy={_EXPIRY: f"{10 * _DAY}x20"},
        labels={"namespace": "ts", "name": "tokenservice-tls"},
        at="15m",
    ),
    AlertCase(
        "TokenServiceCertificateNotReady",
        firing={f'certmanager_certificate_ready_status{{{_CERT},condition="False"}}': "1x30"},
        healthy={
            f'certmanager_certificate_ready_status{{{_CERT},condition="False"}}': "0x30",
            f'certmanager_certificate_ready_status{{{_CERT},condition="True"}}': "1x30",
        },
        labels={"namespace": "ts", "name": "tokenservice-tls"},
        at="20m",
    ),
]
