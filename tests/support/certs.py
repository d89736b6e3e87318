"""A throw-away certificate authority and server certificate, made with the openssl CLI.

The TLS tests need a CA the client trusts and a server certificate for
127.0.0.1 and localhost signed by it; nothing is kept beyond the test's folder.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL_TIMEOUT_S = 30.0
VALID_DAYS = 2


@dataclass(frozen=True, slots=True)
class Certs:
    ca: Path
    """The CA certificate, PEM: what a client trusts."""
    cert: Path
    """The server certificate, PEM, for IP 127.0.0.1 and DNS localhost."""
    key: Path
    """The server's private key, PEM, unencrypted."""


def openssl() -> str | None:
    return shutil.which("openssl")


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(
        [openssl() or "openssl", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=OPENSSL_TIMEOUT_S,
    )


def make_certs(folder: Path, *, name: str = "chequered test") -> Certs:
    """A new CA and a server certificate signed by it, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _run(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(VALID_DAYS),
        "-subj", f"/CN={name} CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=folder,
    )  # fmt: skip
    _run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
         cwd=folder)  # fmt: skip
    (folder / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", str(VALID_DAYS),
        "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip
    return Certs(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
