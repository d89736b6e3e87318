"""Who may connect: limits counted when a connection is accepted, checks of its handshake.

``Admission.accept`` runs before a byte of the connection is read, so that an
address (or everyone together) cannot make the gateway hold more unfinished
handshakes than its limits; ``handshake`` checks the Origin and the token of a
``/ws`` request; ``metrics`` decides who may read ``/metrics``.
"""

from __future__ import annotations

import hmac
from collections.abc import Hashable
from dataclasses import dataclass

from consumers.gateway.core.session import Counts
from consumers.gateway.core.settings import GatewaySettings


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    """The ``rejected_total`` label."""
    text: str
    """What the client is told."""


class Admission:
    """The connections held per address, and the checks that refuse one."""

    def __init__(self, settings: GatewaySettings, counts: Counts) -> None:
        self.settings = settings
        self.counts = counts
        self.by_address: dict[str, set[Hashable]] = {}

    def connections(self) -> int:
        return sum(len(held) for held in self.by_address.values())

    def accept(self, key: Hashable, address: str) -> Refusal | None:
        """A new connection from ``address``: refused, or held until ``release``."""
        settings = self.settings
        if settings.max_clients is not None and self.connections() >= settings.max_clients:
            return self._refuse(503, "capacity", "the gateway is full; try again later")
        held = self.by_address.get(address, set())
        limit = settings.max_connections_per_address
        if limit is not None and len(held) >= limit:
            return self._refuse(429, "per_address", f"at most {limit} connections per address")
        self.by_address[address] = held
        held.add(key)
        return None

    def release(self, key: Hashable, address: str) -> None:
        held = self.by_address.get(address)
        if held is not None:
            held.discard(key)
            if not held:
                del self.by_address[address]

    def handshake(self, origins: list[str], token: str | None) -> Refusal | None:
        """Check a ``/ws`` request: its ``Origin`` headers, and ``?token=`` (None: not given)."""
        settings = self.settings
        allowed = settings.allowed_origins
        if len(origins) > 1:
            # A browser sends one; two are a forgery that one reading or another would pass.
            return self._refuse(403, "origin", "more than one Origin header")
        if allowed is not None:
            if not origins:
                if not settings.allow_missing_origin:
                    return self._refuse(403, "origin", "an Origin header is required")
            elif origins[0] not in allowed:
                return self._refuse(403, "origin", "this origin is not allowed")
        if settings.token is not None and not _same(token, settings.token):
            return self._refuse(401, "token", "a valid ?token= is required")
        return None

    def metrics(self, *, local: bool, token: str | None) -> Refusal | None:
        """Whether ``/metrics`` on the public port may be read by this request.

        With a token set it must be given (``Authorization: Bearer`` or ``?token=``); without
        one, only from this host and not through a proxy (``local``). A listener of its own
        (``metrics_port``) takes ``/metrics`` off the public port altogether.
        """
        settings = self.settings
        if settings.metrics_port is not None:
            return self._refuse(404, "metrics", "not found: /metrics")
        if settings.token is not None:
            if _same(token, settings.token):
                return None
            return self._refuse(401, "metrics", "/metrics needs the token")
        if local:
            return None
        return self._refuse(403, "metrics", "/metrics is served to this host only")

    def _refuse(self, status: int, reason: str, text: str) -> Refusal:
        self.counts.rejected[reason] += 1
        return Refusal(status, reason, text)


def _same(given: str | None, token: str) -> bool:
    # Constant time: how much of a guess was right must not show in the time taken.
    return given is not None and hmac.compare_digest(given.encode(), token.encode())
