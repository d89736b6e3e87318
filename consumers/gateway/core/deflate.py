"""Compressed frames (permessage-deflate, RFC 7692) made once and shared by the clients in step.

With context takeover, a client's inflater keeps what it has inflated before,
and each message may refer back to it: the bytes of a compressed message
depend on every compressed message the client got before it. Clients that got
the same messages since the same starting point can therefore share the same
bytes. A ``Node`` is one compressed message of such a chain; a client follows
one chain (``Stream.node``), and the compressor moves along to the chain's
last node, where the next message is compressed once for every client there.

A chain starts (a ``root``) from a fresh compressor, which refers to nothing
before it: any client can take a root's frame whatever it inflated before. A
client starts a new chain when it joins, when its next message is not the
chain's (it fell out of step: a snapshot of its own, a frame that went through
its outbox), and for everyone at each new ``generation`` (``tick``), so that
clients that went their own way meet again on the roots of the next message.

Frames the websocket library writes itself (replies, the outbox's slow path)
go uncompressed (RSV1 clear): RFC 7692 lets a sender leave a message
uncompressed, and it does not enter the client's window, so a chain stays
true across them. Pure code: no I/O, no clock (the shell calls ``tick``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Final, Protocol

from consumers.gateway.core.session import Counts

WINDOW_BITS: Final = 13
"""Our compressor's window (8 KiB): about eight deltas back. Measured on Monterey's deltas
at the target's window, a 32 KiB one (15 bits) saves 1 to 2% more for three times the
memory (a compressor here takes 46 KiB)."""
MEM_LEVEL: Final = 4
"""zlib's memLevel: 4 compresses our deltas as well as 8, in an eighth of the hash memory."""
LEVEL: Final = 6
_TAIL: Final = b"\x00\x00\xff\xff"
"""What a sync flush ends with, and RFC 7692 has the sender strip (the receiver adds it)."""


class Compressor(Protocol):
    """What ``zlib.compressobj`` returns, as far as a chain uses it."""

    def compress(self, data: bytes, /) -> bytes: ...

    def flush(self, mode: int = ..., /) -> bytes: ...


def text_frame(data: bytes, *, compressed: bool = False) -> bytes:
    """A final, unmasked text frame from server to client (RFC 6455), with no extension or,
    when ``compressed``, RSV1 set: ``data`` is deflated (RFC 7692)."""
    first = 0xC1 if compressed else 0x81
    n = len(data)
    if n < 126:
        head = bytes((first, n))
    elif n < 1 << 16:
        head = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + n.to_bytes(8, "big")
    return head + data


class Node:
    """One message compressed in a chain: the frame every client at the node's parent shares."""

    __slots__ = ("child", "compressor", "frame", "generation", "payload")

    def __init__(
        self, payload: bytes, frame: bytes, compressor: Compressor, generation: int
    ) -> None:
        self.payload = payload
        """Kept so that its ``id`` stays its own while the node lives."""
        self.frame = frame
        self.compressor: Compressor | None = compressor
        """The chain's compressor, while this node is the chain's last."""
        self.child: Node | None = None
        self.generation = generation


@dataclass(slots=True)
class Stream:
    """Where one client is: the last node it got, and what it agreed to."""

    window_bits: int = WINDOW_BITS
    """At most the window the client agreed to keep (``server_max_window_bits``)."""
    takeover: bool = True
    """False when the client asked for ``server_no_context_takeover``: roots only."""
    node: Node | None = field(default=None, repr=False)


class SharedDeflate:
    """Every chain of the process; ``frame`` is the only call per frame."""

    def __init__(
        self, counts: Counts | None = None, window_bits: int = WINDOW_BITS, level: int = LEVEL
    ) -> None:
        self.counts = Counts() if counts is None else counts
        self.window_bits = window_bits
        self.level = level
        self.generation = 0
        self.roots: dict[tuple[int, int], Node] = {}
        self._ends: list[Node] = []
        """The nodes given a compressor in this generation (a chain's last holds it)."""

    def stream(self, window_bits: int = 15, takeover: bool = True) -> Stream:
        """A new client's place, given the window and context takeover it agreed to."""
        return Stream(window_bits=min(window_bits, self.window_bits), takeover=takeover)

    def tick(self) -> None:
        """Start a new generation: every client's next frame starts a chain, shared by all.
        The old chains take no more messages: their compressors (~46 KiB each) are freed,
        also those of races that went quiet, whose clients still point at their last node."""
        self.generation += 1
        self.roots.clear()
        for node in self._ends:
            node.compressor = None
        self._ends.clear()

    def frame(self, stream: Stream, payload: bytes) -> bytes:
        """The compressed frame of ``payload`` for the client at ``stream``, which moves on."""
        counts = self.counts
        node = stream.node
        got: Node | None = None
        if node is not None and stream.takeover and node.generation == self.generation:
            child = node.child
            if child is None and node.compressor is not None:
                got = node.child = self._node(node.compressor, payload)
                node.compressor = None
                counts.deflated.inc()
            elif child is not None and child.payload is payload:
                got = child
                counts.deflate_shared.inc()
            # else its next message is not the chain's: out of step, a root below
        if got is None:
            key = (id(payload), stream.window_bits)
            got = self.roots.get(key)
            if got is None:
                compressor = zlib.compressobj(
                    self.level, zlib.DEFLATED, -stream.window_bits, MEM_LEVEL
                )
                got = self.roots[key] = self._node(compressor, payload)
                counts.deflated.inc()
            else:
                counts.deflate_shared.inc()
        stream.node = got
        counts.deflate_in_bytes.inc(len(payload))
        counts.deflate_out_bytes.inc(len(got.frame))
        return got.frame

    def _node(self, compressor: Compressor, payload: bytes) -> Node:
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        if data.endswith(_TAIL):
            data = data[:-4]
        node = Node(payload, text_frame(data, compressed=True), compressor, self.generation)
        self._ends.append(node)
        return node
