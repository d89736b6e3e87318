"""Broker passwords kept out of sight: from a file or the environment, and the public ones named.

A password in ``--broker mqtt://user:password@host`` shows in ``ps`` to every
user of the machine; these let the URL carry the user alone.
"""

from __future__ import annotations

import ipaddress
from typing import Final

PASSWORD_ENV: Final = "CHEQUERED_BROKER_PASSWORD"
"""Environment variable holding the broker password of a URL that names only its user."""
MAX_PASSWORD_FILE_BYTES: Final = 4096
"""A password file larger than this is refused: it is not a password file."""

DEVELOPMENT_PASSWORDS: Final = frozenset(
    {"producer-dev-only", "controller-dev-only", "projector-dev-only", "gateway-dev-only"}
)
"""The passwords of broker/secure/passwords, published in broker/secure/README.md."""


def is_development_password(password: str | None) -> bool:
    return password in DEVELOPMENT_PASSWORDS


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (a name other than ``localhost`` is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def password_from_file_text(text: str) -> str:
    """The password a file holds: its first line, without the line end."""
    return text.splitlines()[0] if text else ""
