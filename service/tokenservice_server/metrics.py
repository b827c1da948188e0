"""Prometheus metrics, one registry per server instance, served on their own HTTP port.

Counters and histograms are ``lean_metrics``' (updated from the event loop's thread
only, exported as prometheus_client's); gauges are prometheus_client's.

gRPC families follow the names the ecosystem's dashboards expect (go-grpc-prometheus,
py-grpc-prometheus): ``grpc_server_started_total``, ``grpc_server_handled_total`` and
``grpc_server_handling_seconds``.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from tokenservice_server import __version__
from tokenservice_server.lean_metrics import LeanCounter as Counter
from tokenservice_server.lean_metrics import LeanHistogram as Histogram
from tokenservice_server.runtime_metrics import register_runtime_metrics

__all__ = ["MetricsServer", "ServerMetrics"]

# `*_created` series double the exposition size and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Buckets sized for RPCs that cost 0.1 ms - 100 ms, with a tail for failover windows.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


@dataclass
class ServerMetrics:
    """Every metric the server exports, registered on a private registry."""

    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def __post_init__(self) -> None:
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            labels,
            registry=self.registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*labels, "grpc_code"),
            registry=self.registry,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of RPCs handled by the server.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Stream messages received by the server.",
            labels,
            registry=self.registry,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Stream messages sent by the server.",
            labels,
            registry=self.registry,
        )
        self.redis_up = Gauge(
            "tokenservice_redis_up",
            "1 when the last Redis probe answered (auth and cache DBs), else 0.",
            registry=self.registry,
        )
        self.redis_probe_seconds = Histogram(
            "tokenservice_redis_probe_seconds",
            "Round-trip time of the periodic Redis health probe.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.check_results = Counter(
            "tokenservice_check_total",
            "Envoy ext_authz checks answered, by result (allowed or the denial's reason).",
            ("result",),
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "tokenservice_rate_limited_total",
            "Requests refused by a rate limit, by the bucket that refused them.",
            ("bucket",),
            registry=self.registry,
        )
        self.cache_requests = Counter(
            "tokenservice_cache_requests_total",
            "CacheService key operations by namespace and result "
            "(hit, miss, set, delete, invalidate); each key of a batch counts once.",
            ("namespace", "result"),
            registry=self.registry,
        )
        self.cache_evictions = Counter(
            "tokenservice_cache_evictions_total",
            "Cache entries evicted (least recently used) to keep a namespace within its cap.",
            ("namespace",),
            registry=self.registry,
        )
        self.tokens_issued = Counter(
            "tokenservice_tokens_issued_total",
            "IssueToken requests by grant type and result (issued, or the error reason "
            "in lower case, e.g. invalid_client, invalid_grant, rate_limited).",
            ("grant", "result"),
            registry=self.registry,
        )
        # Redis client instrumentation (storage/instrumented.py, bound in redis_metrics.py).
        # ``db`` is the logical database (auth or cache); ``command`` is a command name the
        # code issues (a bounded set), PIPELINE or MULTI for a batch.
        self.redis_command_seconds = Histogram(
            "tokenservice_redis_command_duration_seconds",
            "Latency of Redis commands as the service sees them, retries included.",
            ("db", "command"),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.redis_command_errors = Counter(
            "tokenservice_redis_command_errors_total",
            "Redis commands that failed, by kind (connection, timeout, response, noscript, "
            "other); a retried command that finally succeeded is not counted.",
            ("db", "error"),
            registry=self.registry,
        )
        self.redis_failovers = Counter(
            "tokenservice_redis_failovers_total",
            "Sentinel failovers observed: the master address Sentinel names changed.",
            registry=self.registry,
        )
        self.redis_pool_connections = Gauge(
            "tokenservice_redis_pool_connections",
            "Connections of the Redis clients by state (in_use, idle: the pool; shared: the "
            "pipelined connection of the hot-path commands, 0 or 1).",
            ("db", "state"),
            registry=self.registry,
        )
        self.redis_pool_max_connections = Gauge(
            "tokenservice_redis_pool_max_connections",
            "Size limit of the Redis client pools (redis.max_connections).",
            ("db",),
            registry=self.registry,
        )
        for db in ("auth", "cache"):
            for error in ("connection", "timeout", "response", "noscript", "other"):
                self.redis_command_errors.labels(db=db, error=error)
        # The rate-limit buckets (storage/lua): exported at 0 from the start.
        for bucket in ("ip", "client", "route", "issue_client", "issue_ip"):
            self.rate_limited.labels(bucket=bucket)
        self.build_info = Gauge(
            "tokenservice_build_info",
            "Always 1; labels carry the running version.",
            ("version",),
            registry=self.registry,
        )
        self.build_info.labels(version=__version__).set(1)
        register_runtime_metrics(self.registry)  # process_*, python_gc_*, GC pauses


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape on stderr."""

    def log_message(self, format: str, *args: object) -> None:
        return


class MetricsServer:
    """The ``/metrics`` HTTP endpoint (prometheus_client's threaded WSGI server)."""

    def __init__(self, metrics: ServerMetrics, host: str, port: int) -> None:
        self._metrics = metrics
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve in a daemon thread; return the bound port."""

        class _Server(ThreadingWSGIServer):
            address_family = socket.AF_INET6 if ":" in self._host else socket.AF_INET

        app = make_wsgi_app(self._metrics.registry)
        self._server = make_server(
            self._host, self._port, app, _Server, handler_class=_QuietHandler
        )
        # A short poll interval lets shutdown return at once instead of after ~0.5 s.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="metrics-http",
            daemon=True,
        )
        self._thread.start()
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
