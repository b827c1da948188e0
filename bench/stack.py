"""The processes under test: a Valkey, one or more servers, and Envoy.

Every process binds 127.0.0.1 on a free port, keeps its files under one temporary
directory, and is started with ``setpriv --pdeathsig`` where available, so nothing
outlives the bench even if it is killed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis
import yaml

from tokenservice_server.storage.embedded import free_tcp_port, valkey_binary

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PEPPER = "bench-pepper-0123456789abcdef0123456789abcdef"  # pragma: allowlist secret
ADMIN_SECRET = "bench-admin-secret-0123456789abcdef0123456789"  # pragma: allowlist secret
ADMIN_CLIENT_ID = "tokenservice-admin"
_SETPRIV = shutil.which("setpriv")


#: Where the bench's processes run (``place``): the servers on one core, everything else
#: (Valkey, Envoy, the load generators) on the others. None: wherever the kernel puts them.
SERVER_CPUS: set[int] | None = None
OTHER_CPUS: set[int] | None = None


def place(pinned: bool) -> None:
    """Pin the servers to CPU 0 and the rest to the other CPUs (2 or more CPUs), so the
    load generators and Valkey never take the server's core; or undo it."""
    global SERVER_CPUS, OTHER_CPUS
    cpus = sorted(os.sched_getaffinity(0))
    if pinned and len(cpus) >= 2:
        SERVER_CPUS, OTHER_CPUS = {cpus[0]}, set(cpus[1:])
    else:
        SERVER_CPUS = OTHER_CPUS = None


def on_cpus(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that confines the child (and every thread it starts) to ``cpus``."""
    if cpus is None:
        return None
    chosen = set(cpus)
    return lambda: os.sched_setaffinity(0, chosen)


def _guarded(argv: Sequence[str]) -> list[str]:
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "TERM", "--", *argv]
    return list(argv)


def _wait(condition: Any, *, timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (OSError, redis.RedisError):
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready within {timeout} s")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Valkey:
    """A Valkey without persistence (the bench measures the service, not fsync)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / "valkey"
        self.workdir.mkdir(parents=True)
        self.port = free_tcp_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            str(valkey_binary()),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "no",
            "--maxmemory-policy", "noeviction",
        ]  # fmt: skip
        log = (self.workdir / "valkey.log").open("ab")
        self.process = subprocess.Popen(
            _guarded(argv), stdout=log, stderr=subprocess.STDOUT, preexec_fn=on_cpus(OTHER_CPUS)
        )
        client = self.client()
        _wait(client.ping, timeout=20, what="valkey", process=self.process)

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis.from_url(self.url, db=db)

    def stop(self) -> None:
        _stop(self.process)


class Server:
    """``tokenservice serve`` against ``valkey``, configured through TOKENSERVICE_* only."""

    def __init__(
        self, workdir: Path, valkey: Valkey, *, name: str = "server", env: Mapping[str, str] = {}
    ) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)  # a name may be started again
        self.name = name
        self.port = free_tcp_port()
        self.metrics_port = free_tcp_port()
        self.target = f"127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "TOKENSERVICE_LISTEN": self.target,
            "TOKENSERVICE_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
            "TOKENSERVICE_REDIS__URL": valkey.url,
            "TOKENSERVICE_AUTH__SECRET_PEPPER": PEPPER,
            "TOKENSERVICE_AUTH__ADMIN_CLIENT_SECRET": ADMIN_SECRET,
            "TOKENSERVICE_AUTH__ADMIN_CLIENT_ID": ADMIN_CLIENT_ID,
            "TOKENSERVICE_LOG_LEVEL": "warning",
            "TOKENSERVICE_LOG_FORMAT": "json",
            # The probe would otherwise PING every second; round trips exclude PING anyway.
            "TOKENSERVICE_HEALTH_INTERVAL": "30",
            # 0 = unlimited: the limiter must not refuse the load (and costs no round trip).
            "TOKENSERVICE_RATE_LIMIT__PER_IP": "0",
            "TOKENSERVICE_RATE_LIMIT__PER_CLIENT": "0",
            "TOKENSERVICE_RATE_LIMIT__PER_ROUTE": "0",
            "TOKENSERVICE_RATE_LIMIT__TOKEN_PER_IP": "0",
            "TOKENSERVICE_RATE_LIMIT__TOKEN_PER_CLIENT": "0",
            "TOKENSERVICE_AUTH__ACCESS_TOKEN_TTL": "3600",
            "TOKENSERVICE_CACHE__MAX_ENTRIES_PER_NAMESPACE": "100000",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def init(self) -> None:
        """``tokenservice init``: scripts and the admin client (idempotent)."""
        subprocess.run(
            [str(BIN / "tokenservice"), "init"],
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )

    def start(self) -> None:
        # No setpriv wrapper: the pid we sample must be the server's own python process.
        log = (self.workdir / "server.log").open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "tokenservice"), "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=on_cpus(SERVER_CPUS),
        )
        _wait(self._ready, timeout=30, what=f"tokenservice {self.name}", process=self.process)

    def _ready(self) -> bool:
        return bool(self.scrape())

    def scrape(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def redis_round_trips(self) -> int:
        """Round trips the server made to Redis so far, PING (health probe) excluded.

        ``tokenservice_redis_command_duration_seconds`` observes once per command sent
        and once per pipeline/transaction executed (see storage/instrumented.py): one
        observation is one network round trip, however many commands a script or a
        pipeline carries.
        """
        total = 0.0
        pattern = re.compile(
            r"^tokenservice_redis_command_duration_seconds_count\{([^}]*)\} ([0-9.e+]+)$"
        )
        for line in self.scrape().splitlines():
            match = pattern.match(line)
            if match and 'command="PING"' not in match.group(1):
                total += float(match.group(2))
        return int(total)

    def stop(self) -> None:
        _stop(self.process)


def envoy_config(
    *, listen_port: int, admin_port: int, tokenservice_port: int, ext_authz: bool
) -> dict[str, Any]:
    """deploy/envoy/envoy.yaml with its ports moved, and the application replaced by a
    ``direct_response`` (so the upstream costs nothing); without ``ext_authz`` the filter and
    its per-route settings are removed, everything else identical."""
    config: dict[str, Any] = yaml.safe_load(
        (ROOT / "deploy" / "envoy" / "envoy.yaml").read_text(encoding="utf-8")
    )
    config["admin"]["address"]["socket_address"] = {
        "address": "127.0.0.1",
        "port_value": admin_port,
    }
    resources = config["static_resources"]
    (listener,) = resources["listeners"]
    listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": listen_port}
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    manager.pop("access_log", None)  # one stdout line per request would dominate
    for host in manager["route_config"]["virtual_hosts"]:
        for route in host["routes"]:
            route.pop("route", None)
            route["direct_response"] = {"status": 200, "body": {"inline_string": "ok\n"}}
            if not ext_authz:
                route.pop("typed_per_filter_config", None)
    if not ext_authz:
        manager["http_filters"] = [
            f for f in manager["http_filters"] if f["name"] != "envoy.filters.http.ext_authz"
        ]
    for cluster in resources["clusters"]:
        if cluster["name"] == "tokenservice":
            cluster["type"] = "STATIC"
            (group,) = cluster["load_assignment"]["endpoints"]
            (endpoint,) = group["lb_endpoints"]
            endpoint["endpoint"]["address"]["socket_address"] = {
                "address": "127.0.0.1",
                "port_value": tokenservice_port,
            }
    resources["clusters"] = [c for c in resources["clusters"] if c["name"] == "tokenservice"]
    return config


class Envoy:
    def __init__(self, workdir: Path, *, tokenservice_port: int, ext_authz: bool) -> None:
        self.name = "envoy-authz" if ext_authz else "envoy-plain"
        self.workdir = workdir / self.name
        self.workdir.mkdir(parents=True)
        self.port = free_tcp_port()
        self.admin_port = free_tcp_port()
        self.config_path = self.workdir / "envoy.yaml"
        config = envoy_config(
            listen_port=self.port,
            admin_port=self.admin_port,
            tokenservice_port=tokenservice_port,
            ext_authz=ext_authz,
        )
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        argv = [
            str(BIN / "envoy"),
            "-c", str(self.config_path),
            "--use-dynamic-base-id",
            "--concurrency", "1",
            "--log-level", "warning",
            "--log-path", str(self.workdir / "envoy.log"),
        ]  # fmt: skip
        log = (self.workdir / "stdout.log").open("ab")
        self.process = subprocess.Popen(
            _guarded(argv), stdout=log, stderr=subprocess.STDOUT, preexec_fn=on_cpus(OTHER_CPUS)
        )
        url = f"http://127.0.0.1:{self.admin_port}/ready"

        def ready() -> bool:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)

        _wait(ready, timeout=30, what=self.name, process=self.process)

    def stop(self) -> None:
        _stop(self.process)
