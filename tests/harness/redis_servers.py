"""Real Redis/Valkey servers for the tests: standalone, TLS and a Sentinel topology.

Every process binds 127.0.0.1 only, gets a free port, keeps its config, data and log in its
own directory, and is stopped by its fixture. Two guards against leaks besides the fixtures:
an ``atexit`` hook kills whatever is still running, and the servers are started through
``setpriv --pdeathsig`` so the kernel stops them even if pytest itself is killed.
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from tests.harness.tls import TlsMaterial
from tokenservice_server.storage.embedded import (
    config_quote,
    free_tcp_port,
    log_tail,
    spawn_server,
    valkey_binary,
)

__all__ = [
    "LOOPBACK",
    "RedisProcess",
    "SentinelTopology",
    "wait_until",
]

LOOPBACK = "127.0.0.1"
_LIVE: set[RedisProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        process.kill()


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str
) -> None:
    """Poll ``condition`` until true; raise ``TimeoutError`` naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


class RedisProcess:
    """One ``valkey-server`` (default) or ``redis-server`` process on 127.0.0.1.

    ``start()`` may be called again after ``stop()``/``kill()``: same port, same directory
    (with ``appendonly=True`` the data comes back too).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: Path | None = None,
        port: int | None = None,
        appendonly: bool = False,
        extra_config: Sequence[str] = (),
        unix_socket: bool = False,
        tls: TlsMaterial | None = None,
        sentinel: bool = False,
        name: str = "redis",
    ) -> None:
        self.workdir = workdir
        self.binary = binary or valkey_binary()
        self.port = port or free_tcp_port()
        self.appendonly = appendonly
        self.extra_config = list(extra_config)
        self.tls = tls
        self.sentinel = sentinel
        self.name = name
        self.host = LOOPBACK
        # AF_UNIX paths are limited to ~107 bytes; pytest's tmp_path can be longer.
        self.unix_socket_path: Path | None = (
            Path(tempfile.mkdtemp(prefix="rs-")) / "redis.sock" if unix_socket else None
        )
        self._process: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"<RedisProcess {self.name} {self.host}:{self.port} pid={self.pid}>"

    # -- addresses ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def unix_url(self) -> str:
        assert self.unix_socket_path is not None, "started without unix_socket=True"
        return f"unix://{self.unix_socket_path}"

    @property
    def config_path(self) -> Path:
        return self.workdir / ("sentinel.conf" if self.sentinel else "redis.conf")

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client (TLS with the test client certificate when TLS is on)."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "socket_timeout": 5,
            "socket_connect_timeout": 2,
            "decode_responses": True,
        }
        if self.tls:
            options.update(
                ssl=True,
                ssl_ca_certs=str(self.tls.ca_cert),
                ssl_certfile=str(self.tls.client_cert),
                ssl_keyfile=str(self.tls.client_key),
            )
        options.update(kwargs)
        return redis.Redis(**options)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, *, timeout: float = 10.0, wait: bool = True) -> None:
        """Start (or restart, on the same port) and wait until it answers PING."""
        if self.is_running():
            raise RuntimeError(f"{self!r} is already running")
        self.config_path.write_text(self._config(), encoding="utf-8")
        argv: list[str | Path] = [self.binary, self.config_path]
        if self.sentinel:
            argv.append("--sentinel")
        with self.log_path.open("ab") as console:  # errors before the logfile opens
            self._process = spawn_server(argv, cwd=self.workdir, stdout=console)
        _LIVE.add(self)
        if wait:
            self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float = 10.0) -> None:
        """Wait until the server answers PING (or asks for AUTH)."""
        try:
            wait_until(self._answers, timeout=timeout, interval=0.02, what=f"{self!r} to start")
        except TimeoutError:
            tail = log_tail(self.log_path)
            self.kill()
            raise RuntimeError(f"{self!r} did not start; log tail:\n{tail}") from None

    def stop(self, *, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _LIVE.discard(self)

    def cleanup(self) -> None:
        """Stop, and remove the unix socket's directory (the workdir belongs to the caller)."""
        self.stop()
        if self.unix_socket_path is not None:
            shutil.rmtree(self.unix_socket_path.parent, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL: the server dies mid-flight, as in a crash or ``kill -9``."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        _LIVE.discard(self)

    # -- internals ------------------------------------------------------------------------

    def _config(self) -> str:
        lines = [
            f"bind {LOOPBACK}",
            "protected-mode yes",
            "daemonize no",
            f"dir {config_quote(self.workdir)}",
            f"logfile {config_quote(self.log_path)}",
        ]
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {self.port}",
                f"tls-cert-file {config_quote(self.tls.server_cert)}",
                f"tls-key-file {config_quote(self.tls.server_key)}",
                f"tls-ca-cert-file {config_quote(self.tls.ca_cert)}",
                "tls-auth-clients optional",
            ]
        else:
            lines.append(f"port {self.port}")
        if not self.sentinel:
            lines += ['save ""', f"appendonly {'yes' if self.appendonly else 'no'}"]
        if self.unix_socket_path is not None:
            lines += [f"unixsocket {config_quote(self.unix_socket_path)}", "unixsocketperm 700"]
        return "\n".join([*lines, *self.extra_config]) + "\n"

    def _answers(self) -> bool:
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{self!r} exited; log tail:\n{log_tail(self.log_path)}")
        with socket.create_connection(self.address, timeout=0.5) as raw:
            if self.tls:
                context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
                context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
                with context.wrap_socket(raw, server_hostname=self.host) as conn:
                    conn.sendall(b"PING\r\n")
                    reply = conn.recv(64)
            else:
                raw.sendall(b"PING\r\n")
                reply = raw.recv(64)
        return reply.startswith((b"+PONG", b"-NOAUTH"))


class SentinelTopology:
    """1 master, 2 replicas, 3 sentinels (quorum 2), failover in about 3 s; TLS optional.

    The sentinels start knowing each other and the replicas (``known-sentinel`` /
    ``known-replica`` lines, the state a sentinel writes into its own config), so the
    topology is ready without waiting for the 2 s hello cycle.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: Path | None = None,
        tls: TlsMaterial | None = None,
        master_name: str = "tokenservice",
        password: str | None = None,
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
    ) -> None:
        self.master_name = master_name
        self.password = password
        self.sentinel_password = sentinel_password
        auth = [f"requirepass {password}", f"masterauth {password}"] if password else []
        # With TLS, replicas and sentinels also reach the data nodes over TLS.
        tls_links = ["tls-replication yes"] if tls else []
        common = ["repl-diskless-sync-delay 0", *auth, *tls_links]
        self.nodes = [
            RedisProcess(workdir / f"node{index}", binary=binary, tls=tls,
                         extra_config=common, name=f"node{index}")
            for index in range(3)
        ]  # fmt: skip
        master = self.nodes[0]
        for replica in self.nodes[1:]:
            replica.extra_config.append(f"replicaof {master.host} {master.port}")
        ids = [secrets.token_hex(20) for _ in range(3)]
        self.sentinels = [
            RedisProcess(workdir / f"sentinel{index}", binary=binary, tls=tls, sentinel=True,
                         name=f"sentinel{index}")
            for index in range(3)
        ]  # fmt: skip
        name = master_name
        for index, sentinel in enumerate(self.sentinels):
            lines = [
                *tls_links,
                f"sentinel myid {ids[index]}",
                f"sentinel monitor {name} {master.host} {master.port} 2",
                f"sentinel down-after-milliseconds {name} {down_after_ms}",
                f"sentinel failover-timeout {name} {failover_timeout_ms}",
                f"sentinel parallel-syncs {name} 1",
            ]
            if password:
                lines.append(f"sentinel auth-pass {name} {password}")
            if sentinel_password:
                lines += [
                    f"requirepass {sentinel_password}",
                    f"sentinel sentinel-pass {sentinel_password}",
                ]
            lines += [f"sentinel known-replica {name} {r.host} {r.port}" for r in self.nodes[1:]]
            lines += [
                f"sentinel known-sentinel {name} {other.host} {other.port} {ids[other_index]}"
                for other_index, other in enumerate(self.sentinels)
                if other is not sentinel
            ]
            sentinel.extra_config = lines

    @property
    def sentinel_addresses(self) -> list[str]:
        """``HOST:PORT`` strings, the format of ``RedisSettings.sentinels``."""
        return [f"{s.host}:{s.port}" for s in self.sentinels]

    def start(self, *, timeout: float = 15.0) -> None:
        # Start each group at once: a sentinel that finds its peers not yet listening marks
        # them down for a second.
        for process in self.nodes:
            process.start(wait=False)
        for process in self.nodes:
            process.wait_ready()
        wait_until(self._replicas_in_sync, timeout=timeout, what="replicas to sync")
        for process in self.sentinels:
            process.start(wait=False)
        for process in self.sentinels:
            process.wait_ready()
        wait_until(self._sentinels_agree, timeout=timeout, what="sentinels to see the topology")

    def stop(self) -> None:
        for process in [*self.sentinels, *self.nodes]:
            process.stop()

    # -- inspection -----------------------------------------------------------------------

    def node_client(self, node: RedisProcess) -> redis.Redis:
        return node.client(password=self.password)

    def sentinel_client(self, sentinel: RedisProcess) -> redis.Redis:
        return sentinel.client(password=self.sentinel_password)

    def current_master(self) -> tuple[str, int]:
        """The master address according to the first sentinel that answers."""
        for sentinel in self.sentinels:
            if not sentinel.is_running():
                continue
            try:
                with self.sentinel_client(sentinel) as client:
                    host, port = client.sentinel_get_master_addr_by_name(self.master_name)
                    return str(host), int(port)
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answered")

    def master_node(self) -> RedisProcess:
        address = self.current_master()
        return next(node for node in self.nodes if node.address == address)

    def kill_master(self) -> RedisProcess:
        """``kill -9`` the current master; return its process."""
        node = self.master_node()
        node.kill()
        return node

    def wait_for_new_master(
        self, old: tuple[str, int], *, timeout: float = 15.0
    ) -> tuple[str, int]:
        """Wait until every sentinel names a master other than ``old`` that says it is one."""

        def promoted() -> bool:
            addresses = set()
            for sentinel in self.sentinels:
                with self.sentinel_client(sentinel) as client:
                    host, port = client.sentinel_get_master_addr_by_name(self.master_name)
                    addresses.add((str(host), int(port)))
            if len(addresses) != 1 or old in addresses:
                return False
            with self.node_client(self.master_node()) as client:
                return client.info("replication")["role"] == "master"

        wait_until(promoted, timeout=timeout, interval=0.1, what="a new master")
        return self.current_master()

    def restart_as_replica(self, node: RedisProcess, *, timeout: float = 15.0) -> None:
        """Start a killed node again (same port, empty data) as a replica of the current
        master, and wait until it is in sync and every sentinel lists it again, so the
        next round still has two replicas."""
        master = self.current_master()
        node.extra_config = [
            line for line in node.extra_config if not line.startswith("replicaof ")
        ] + [f"replicaof {master[0]} {master[1]}"]
        node.start()

        def rejoined() -> bool:
            with self.node_client(node) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
            for sentinel in self.sentinels:
                with self.sentinel_client(sentinel) as client:
                    state = client.sentinel_master(self.master_name)
                    replicas = client.sentinel_slaves(self.master_name)
                    if int(state["num-slaves"]) < 2 or any(
                        r["is_sdown"] or r["is_odown"] for r in replicas
                    ):
                        return False
            return True

        wait_until(rejoined, timeout=timeout, interval=0.1, what=f"{node!r} to rejoin")

    def graceful_failover(self, *, timeout: float = 15.0) -> tuple[str, int]:
        """``SENTINEL FAILOVER``: promote a replica while the master is alive; return the
        new master once every sentinel names it and the old one follows it."""
        old = self.current_master()
        with self.sentinel_client(self.sentinels[0]) as client:
            client.execute_command("SENTINEL", "FAILOVER", self.master_name)
        new = self.wait_for_new_master(old, timeout=timeout)
        old_node = next(node for node in self.nodes if node.address == old)

        self._wait_following(old_node, timeout)
        return new

    def paused_switchover(
        self, *, pause_ms: int = 10_000, timeout: float = 15.0
    ) -> tuple[str, int]:
        """The switchover procedure of docs/reliability.md: ``CLIENT PAUSE WRITE`` on the
        master, ``SENTINEL FAILOVER``, then make the old master follow the new one at once
        (``REPLICAOF``; Sentinel would take up to 10 s), drop its clients (they reconnect
        through Sentinel) and unpause. Returns the new master once the old one follows."""
        old_node = self.master_node()
        with self.node_client(old_node) as client:
            client.execute_command("CLIENT", "PAUSE", pause_ms, "WRITE")
        try:
            with self.sentinel_client(self.sentinels[0]) as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", self.master_name)
            new = self.wait_for_new_master(old_node.address, timeout=timeout)
            with self.node_client(old_node) as client:
                client.execute_command("REPLICAOF", *new)
                client.execute_command("CLIENT", "KILL", "TYPE", "normal")
        finally:
            with self.node_client(old_node) as client:
                client.execute_command("CLIENT", "UNPAUSE")

        self._wait_following(old_node, timeout)
        return new

    def _wait_following(self, old_node: RedisProcess, timeout: float) -> None:
        """Until the old master replicates the new one with its link up."""

        def demoted() -> bool:
            with self.node_client(old_node) as client:
                info = client.info("replication")
                return bool(info["role"] == "slave" and info.get("master_link_status") == "up")

        wait_until(demoted, timeout=timeout, interval=0.1, what="the old master to follow")

    def _replicas_in_sync(self) -> bool:
        for replica in self.nodes[1:]:
            with self.node_client(replica) as client:
                if client.info("replication").get("master_link_status") != "up":
                    return False
        return True

    def _sentinels_agree(self) -> bool:
        for sentinel in self.sentinels:
            with self.sentinel_client(sentinel) as client:
                state = client.sentinel_master(self.master_name)
                if int(state["num-slaves"]) != 2 or int(state["num-other-sentinels"]) != 2:
                    return False
                peers = [
                    *client.sentinel_slaves(self.master_name),
                    *client.sentinel_sentinels(self.master_name),
                ]
                if any(peer["is_sdown"] or peer["is_odown"] for peer in peers):
                    return False
        return True
