"""Server TLS credentials that follow the certificate files on disk.

cert-manager (or any renewal) replaces the certificate, key and client CA files in
place; restarting every replica for that would be an outage waiting to happen. gRPC asks
the fetcher below for the certificate configuration on every new TLS handshake; it
answers "unchanged" (None) after a ``stat`` of the three files, and re-reads them only
when one changed (modification time, size or inode). A half-written or mismatched pair
is not served: the previous configuration stays in force and a warning is logged, and
the next handshake tries again. Established connections keep their session.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import grpc

from tokenservice_server.config import ServerTlsSettings
from tokenservice_server.logging import get_logger

__all__ = ["ReloadingServerCertificates", "server_credentials"]

_log = get_logger("tokenservice.tls")

_Stamp = tuple[tuple[int, int, int], ...]


def _stamp(paths: tuple[Path, ...]) -> _Stamp:
    stamps = []
    for path in paths:
        info = os.stat(path)
        stamps.append((info.st_mtime_ns, info.st_size, info.st_ino))
    return tuple(stamps)


class ReloadingServerCertificates:
    """The certificate-configuration fetcher of :func:`grpc.dynamic_ssl_server_credentials`."""

    def __init__(self, tls: ServerTlsSettings) -> None:
        assert tls.cert_file is not None
        assert tls.key_file is not None
        self._cert = tls.cert_file
        self._key = tls.key_file
        self._ca = tls.client_ca_file
        self._paths = tuple(p for p in (self._cert, self._key, self._ca) if p is not None)
        self._lock = threading.Lock()  # gRPC may call the fetcher from its own threads
        self.reloads = 0
        self._stamp, self.initial = self._load()

    def _load(self) -> tuple[_Stamp, grpc.ServerCertificateConfiguration]:
        before = _stamp(self._paths)
        cert, key = self._cert.read_bytes(), self._key.read_bytes()
        ca = self._ca.read_bytes() if self._ca is not None else None
        # The key must belong to the certificate: a renewal caught between its two file
        # writes would otherwise break every new handshake.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert, self._key)
        if _stamp(self._paths) != before:
            raise OSError("certificate files changed while being read")
        return before, grpc.ssl_server_certificate_configuration([(key, cert)], ca)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                if _stamp(self._paths) == self._stamp:
                    return None
                self._stamp, configuration = self._load()
            except (OSError, ssl.SSLError, ValueError) as exc:
                _log.warning("tls_reload_failed", error=str(exc), cert_file=str(self._cert))
                return None
            self.reloads += 1
        _log.info("tls_certificates_reloaded", cert_file=str(self._cert), reloads=self.reloads)
        return configuration


def server_credentials(tls: ServerTlsSettings) -> grpc.ServerCredentials:
    """TLS (mTLS when ``client_ca_file`` is set) credentials that reload from disk."""
    fetcher = ReloadingServerCertificates(tls)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial,
        cast("Callable[[], grpc.ServerCertificateConfiguration]", fetcher),  # None: unchanged
        require_client_authentication=tls.client_ca_file is not None,
    )
