"""A throwaway certificate authority and server certificate for `--tls` (trustme)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

from batch.errors import ConfigError

__all__ = ["TlsFiles", "make_tls_files"]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Where the server's key and certificate chain and the CA certificate were written."""

    certfile: Path
    keyfile: Path
    ca_path: Path


def make_tls_files(directory: Path, ca_file: Path | None = None) -> TlsFiles:
    """Make a CA and a server certificate for 127.0.0.1, ::1 and localhost.

    The server files go into `directory` (private to this server); the CA certificate, which
    clients must trust (`SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE`, `verify=`), goes to `ca_file` or
    into `directory`.
    """
    ca = trustme.CA(organization_name="autopilot-batch emulator")
    cert = ca.issue_cert("127.0.0.1", "::1", "localhost")
    files = TlsFiles(directory / "server.pem", directory / "server.key", directory / "ca.pem")
    cert.private_key_pem.write_to_path(str(files.keyfile))
    files.certfile.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca_path = ca_file or files.ca_path
    try:
        ca_path.parent.mkdir(parents=True, exist_ok=True)
        ca.cert_pem.write_to_path(str(ca_path))
    except OSError as error:
        raise ConfigError(
            f"cannot write the CA certificate to {ca_path}: {error.strerror}"
        ) from None
    return TlsFiles(files.certfile, files.keyfile, ca_path)
