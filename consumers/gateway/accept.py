"""Admission at accept time: a connection over the limits is refused before it is read.

websockets reads a whole request head before ``process_request`` sees it; the
limits per address and in all must apply earlier, or unfinished handshakes
fill the memory. ``serve(create_connection=...)`` takes this subclass, which
asks the gate as the connection is made and, when refused, answers the status
at once and discards whatever the client sends until it hangs up (a reset
would hide the answer from it), for ``refusal_linger_s`` at most.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Response
from websockets.server import ServerProtocol


class Gate(Protocol):
    def accept(self, conn: ServerConnection, address: str) -> Response | None:
        """None to let the connection in; else the response that refuses it."""
        ...

    def release(self, conn: ServerConnection, address: str) -> None: ...


class GuardedConnection(ServerConnection):
    """A server connection admitted (or refused) when it is accepted (``guarded`` binds it)."""

    gate: Gate
    linger_s: float

    def __init__(self, protocol: ServerProtocol, server: Server, **kwargs: Any) -> None:
        super().__init__(protocol, server, **kwargs)
        self.peer = ""
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
        response = self.gate.accept(self, self.peer)
        if response is None:
            return
        self.refused = True
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(response.serialize())
        if transport.can_write_eof():
            # A client that already hung up (a flood's connect-and-drop) cannot be
            # half-closed: the refusal is counted all the same, and the socket dropped.
            try:
                transport.write_eof()
            except OSError:
                transport.abort()
                return
        self.loop.call_later(self.linger_s, transport.abort)

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            super().data_received(data)

    def eof_received(self) -> None:
        if self.refused:
            self.transport.close()
            return
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.refused:
            self.gate.release(self, self.peer)


def guarded(gate: Gate, linger_s: float) -> type[GuardedConnection]:
    """The connection class for ``serve(create_connection=...)``, which takes a class."""
    return type("Guarded", (GuardedConnection,), {"gate": gate, "linger_s": linger_s})
