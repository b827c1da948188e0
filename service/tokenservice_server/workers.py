"""``tokenservice serve --workers N``: one server process per core on one port.

The pattern of grpc's multiprocessing example: the parent process never creates a gRPC
server; it prepares what must exist once, then spawns N workers that each run the
ordinary server (``app.serve``) bound to the same port with ``grpc.so_reuseport=1``, so
the kernel spreads new connections across them.

* **Embedded Valkey** is started once, by the parent (which also keeps the pepper file
  and bootstraps the admin client, as a single server does); the workers connect to it
  by URL. It is stopped after the last worker has exited.
* **Port 0** is resolved to a free port by the parent, so every worker shares one.
* **Metrics**: worker ``i`` (0-based) serves Prometheus on the metrics port + ``i``
  (``9464``, ``9465``, ... by default); scrape each one. Health is per worker (each
  answers ``grpc.health.v1.Health`` for its own Redis connections).
* **Shutdown**: SIGTERM or SIGINT to the parent is forwarded (SIGTERM) to every worker,
  each drains for ``shutdown_grace`` seconds as a single server does, and the parent
  exits 0 once all have exited cleanly. A worker that dies on its own stops the others
  and the parent exits 1 (let the supervisor restart the whole set).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import socket
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

from tokenservice_server.config import RedisTopology, Settings, parse_host_port
from tokenservice_server.logging import configure_logging, get_logger

__all__ = ["serve_workers", "worker_settings"]

_log = get_logger("tokenservice.workers")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def worker_settings(settings: Settings, index: int, *, port: int) -> Settings:
    """Worker ``index``'s settings: the shared gRPC port, its own metrics port."""
    host, _ = parse_host_port(settings.listen)
    metrics_host, metrics_port = parse_host_port(settings.metrics_listen)
    return settings.model_copy(
        update={
            "listen": _address(host, port),
            "metrics_listen": _address(metrics_host, metrics_port + index if metrics_port else 0),
        }
    )


def _worker(settings: Settings, index: int) -> None:
    from tokenservice_server.app import serve
    from tokenservice_server.cli import _run

    configure_logging(settings.log_format, settings.log_level)
    get_logger("tokenservice.workers").info("worker_started", worker=index, pid=os.getpid())
    raise SystemExit(_run(serve(settings, reuse_port=True), settings))


async def _bootstrap_admin(settings: Settings, shared: Settings) -> None:
    from tokenservice_server.storage.connection import open_redis
    from tokenservice_server.wiring import bootstrap_embedded_admin, build_components

    async with open_redis(shared.redis, log=_log) as redis:
        components = build_components(shared, redis)
        path = await bootstrap_embedded_admin(components, settings)
    _log.info(
        "admin_client_ready", client_id=settings.auth.admin_client_id, credentials_file=str(path)
    )


def serve_workers(settings: Settings, workers: int) -> int:
    """Run ``workers`` server processes until SIGTERM/SIGINT; the process exit status."""
    from pydantic import SecretStr

    from tokenservice_server.storage.embedded import EmbeddedValkey
    from tokenservice_server.wiring import resolve_pepper

    host, port = parse_host_port(settings.listen)
    port = port or _free_port(host)
    embedded: EmbeddedValkey | None = None
    shared = settings
    if settings.redis.topology is RedisTopology.EMBEDDED:
        embedded = EmbeddedValkey(settings.redis.data_dir, port=settings.redis.embedded_port)
        embedded.start()
        redis = settings.redis.model_copy(update={"url": embedded.url})
        auth = settings.auth.model_copy(
            update={"secret_pepper": SecretStr(resolve_pepper(settings).decode("utf-8"))}
        )
        shared = settings.model_copy(update={"redis": redis, "auth": auth})
    try:
        if embedded is not None:
            asyncio.run(_bootstrap_admin(settings, shared))
        return _supervise(shared, workers, port)
    finally:
        if embedded is not None:
            embedded.stop()


def _supervise(settings: Settings, workers: int, port: int) -> int:
    context = multiprocessing.get_context("spawn")  # no gRPC or event loop state inherited
    processes = [
        context.Process(
            target=_worker,
            args=(worker_settings(settings, index, port=port), index),
            name=f"tokenservice-worker-{index}",
        )
        for index in range(workers)
    ]
    stopping = False

    def stop(signum: int = 0, frame: FrameType | None = None) -> None:
        nonlocal stopping
        if not stopping:
            _log.info("shutdown_requested", workers=len(processes))
        stopping = True
        for process in processes:
            if process.pid is not None and process.exitcode is None:
                os.kill(process.pid, signal.SIGTERM)

    previous: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, stop)
    failed = False
    try:
        for process in processes:
            process.start()
        _log.info(
            "workers_started",
            grpc=_address(parse_host_port(settings.listen)[0], port),
            pids=[process.pid for process in processes],
        )
        while any(process.exitcode is None for process in processes):
            wait([p.sentinel for p in processes if p.exitcode is None], timeout=0.5)
            for process in processes:
                if process.exitcode is not None and not stopping:
                    _log.error("worker_exited", pid=process.pid, exit_code=process.exitcode)
                    failed = True
                    stop()
        for process in processes:
            process.join()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    failed = failed or any(process.exitcode != 0 for process in processes)
    _log.info("workers_stopped", failed=failed)
    return 1 if failed else 0
