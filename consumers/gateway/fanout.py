"""Writing frames to many clients fast: the one module that reaches below websockets' API.

A server frame without extensions is the same bytes for every client, so the
fan-out encodes each payload once per turn of the event loop and hands each
client's frames to its transport in one write, beside the library rather than
through ``ServerConnection.send`` (which encodes per client and awaits). That
needs attributes websockets does not document (``send_in_progress``,
``send_data``, ``send_context``, ``protocol.writes``,
``protocol.expect_continuation_frame``) and
its module-level handshake limits: ``check_websockets`` names any that a
release lacks before the gateway listens, and ``TESTED`` lists the releases
this was tested with (``tests/consumers/gateway/test_fanout.py`` fails on others).

A client that asks for permessage-deflate (every browser does) gets
``InboundDeflate``: the library inflates what the client sends and leaves what
it sends itself uncompressed, and the fan-out writes compressed frames made
once for every client in step (``core.deflate``), through the library's public
extension API.
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version
from typing import TYPE_CHECKING

import websockets
import websockets.http11
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame as WireFrame
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import ExtensionParameter

from chequered import log as logmod
from consumers.gateway.core.deflate import WINDOW_BITS, SharedDeflate, Stream, text_frame
from consumers.gateway.core.session import Counts, Frame, Session
from consumers.gateway.core.settings import GatewaySettings

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from websockets.extensions.base import Extension

log = logmod.get(__name__)

TESTED = ("16", "17")
"""websockets major releases whose internals this module was tested with (pyproject pins them)."""

CONNECTION_ATTRIBUTES = (
    "send_in_progress",
    "send_data",
    "send_context",
    "transport",
    "protocol",
)
PROTOCOL_ATTRIBUTES = (
    "writes",
    "expect_continuation_frame",
    "state",
    "extensions",
    "send_text",
    "data_to_send",
)
HTTP11_SETTINGS = ("MAX_LINE_LENGTH", "MAX_NUM_HEADERS")


class UnsupportedWebsockets(RuntimeError):
    """The installed websockets lacks something the fast path or the handshake limits use."""


def check_websockets(connection: type[ServerConnection] = ServerConnection) -> None:
    """Fail at start-up, naming the attribute, when this websockets release lacks one we use."""
    missing = [
        f"websockets.http11.{name}"
        for name in HTTP11_SETTINGS
        if not hasattr(websockets.http11, name)
    ]
    protocol = ServerProtocol()
    missing += [
        f"ServerProtocol.{name}" for name in PROTOCOL_ATTRIBUTES if not hasattr(protocol, name)
    ]
    # Instance attributes are set by its methods (__init__, connection_made): look for
    # them in their code, which needs no connection and no event loop.
    assigned: set[str] = set()
    for cls in connection.__mro__:
        for member in vars(cls).values():
            code = getattr(member, "__code__", None)
            if code is not None:
                assigned.update(code.co_names)
    missing += [
        f"ServerConnection.{name}"
        for name in CONNECTION_ATTRIBUTES
        if not hasattr(connection, name) and name not in assigned
    ]
    if missing:
        tested = ", ".join(f"{major}.x" for major in TESTED)
        raise UnsupportedWebsockets(
            f"websockets {version('websockets')} lacks {', '.join(missing)}, which the "
            f"gateway's fan-out uses (tested with releases {tested}); install a "
            "tested release (pyproject.toml pins the range)"
        )


def limit_handshakes(settings: GatewaySettings) -> None:
    """Apply the handshake's header limits (websockets keeps them module-wide, per process)."""
    websockets.http11.MAX_LINE_LENGTH = settings.max_line_bytes
    websockets.http11.MAX_NUM_HEADERS = settings.max_headers


_OPEN = State.OPEN


class InboundDeflate(PerMessageDeflate):
    """permessage-deflate as agreed with the client, except for the frames we send.

    What the client sends is inflated as usual; what the library sends (replies, the
    outbox's slow path) goes uncompressed, which RFC 7692 allows and which leaves the
    client's window as the fan-out's shared chains know it; the fan-out compresses the
    standings itself (``core.deflate``). No compressor per client is kept.
    """

    def __init__(self, agreed: PerMessageDeflate) -> None:
        super().__init__(
            agreed.remote_no_context_takeover,
            True,  # keeps the library from making a compressor of its own
            agreed.remote_max_window_bits,
            agreed.local_max_window_bits,
        )
        self.takeover = not agreed.local_no_context_takeover
        """Whether we may refer back to earlier messages (no ``server_no_context_takeover``)."""

    def encode(self, frame: WireFrame) -> WireFrame:
        return frame


class SharedDeflateFactory(ServerPerMessageDeflateFactory):
    """Offers ``InboundDeflate``: our window at most ``WINDOW_BITS``, the client's messages
    inflated one by one (``client_no_context_takeover``: no inflater kept between them)."""

    def __init__(self) -> None:
        super().__init__(
            client_no_context_takeover=True,
            server_max_window_bits=WINDOW_BITS,
        )

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, agreed = super().process_request_params(params, accepted_extensions)
        return response, InboundDeflate(agreed)


class Writer:
    """The connection side of one session (``core.session.Port``): its writes and its close."""

    def __init__(
        self, ws: ServerConnection, fanout: Fanout, settings: GatewaySettings, address: str
    ) -> None:
        self.ws = ws
        self.protocol = ws.protocol
        self.transport = ws.transport
        self.fanout = fanout
        self.settings = settings
        self.write_limit = settings.write_limit
        self.address = address
        self.session: Session | None = None
        self.wake_event = asyncio.Event()
        self.sending = False
        self.closing: asyncio.Task[None] | None = None
        self.written_bytes = 0
        """Bytes written by ``flush`` not yet counted in the metrics."""
        # Without extensions (compression is off) a server's frame is the same bytes for
        # every client: it is then encoded once and shared (see ``flush``). With our
        # permessage-deflate, clients in step share compressed frames (``core.deflate``).
        extensions = ws.protocol.extensions
        self.plain_frames = not extensions
        self.stream: Stream | None = None
        if len(extensions) == 1 and isinstance(extensions[0], InboundDeflate):
            agreed = extensions[0]
            self.stream = fanout.deflate.stream(agreed.local_max_window_bits, agreed.takeover)

    # -- core.session.Port ------------------------------------------------

    def gone(self) -> bool:
        # Past the handshake a connection is OPEN, then CLOSING, then CLOSED.
        return self.closing is not None or self.protocol.state is not _OPEN

    def room(self, pending: int) -> bool:
        return (
            not self.sending
            and self.closing is None
            and self.protocol.state is _OPEN
            and self.transport.get_write_buffer_size() + pending < self.write_limit
        )

    def flush_later(self) -> None:
        self.fanout.flush_later(self)

    def wake(self) -> None:
        self.wake_event.set()

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake without waiting for it (the handler keeps reading)."""
        if self.closing is None:
            self.closing = asyncio.create_task(self._close(code, reason))

    # -- writing ----------------------------------------------------------

    def flush(self, wire: dict[int, tuple[bytes, bytes]] | None = None) -> int:
        """Hand the frames due to this client to the transport in one write.

        ``wire`` shares the encoded frames among the clients flushed together (keyed by
        the payload's id; the payload is kept beside its frame so that the id stays its own).
        Returns how many frames were written; the caller counts them.
        """
        assert self.session is not None
        due, size = self.session.take()
        if not due:
            return 0
        ws = self.ws
        protocol = ws.protocol
        if (
            protocol.state is not _OPEN
            or ws.send_in_progress is not None
            or protocol.expect_continuation_frame
        ):
            return 0  # closing (nothing more is owed to it), or never: no fragmented sends here
        try:
            if protocol.writes:
                ws.send_data()  # whatever the library has queued (a pong) goes first
            stream = self.stream
            if stream is not None:
                frames = [self._deflated(stream, frame) for frame in due]
            elif self.plain_frames:
                frames = []
                for frame in due:
                    data = frame.data
                    known = None if wire is None else wire.get(id(data))
                    if known is None:
                        known = (data, text_frame(data))
                        if wire is not None:
                            wire[id(data)] = known
                    frames.append(known[1])
            else:
                for frame in due:
                    protocol.send_text(frame.data)
                frames = protocol.data_to_send()
            if len(frames) == 1:
                ws.transport.write(frames[0])
            else:
                ws.transport.writelines(frames)
        except Exception as exc:  # a transport that went away meanwhile: the handler sees it
            log.debug("client_write_failed", client=self.address, error=str(exc))
            return 0
        self.written_bytes += size
        return len(due)

    async def _close(self, code: int, reason: str) -> None:
        # close() waits for the transport to drain, which a client that does not read never
        # lets happen: past close_timeout the connection is dropped.
        try:
            async with asyncio.timeout(self.settings.close_timeout_s):
                await self.ws.close(code, reason)
        except TimeoutError:
            log.info("client_dropped", client=self.address, code=code, reason=reason)
            self.ws.transport.abort()

    async def run(self) -> None:
        """Write the outbox at the client's pace, until the connection closes."""
        assert self.session is not None
        outbox = self.session.outbox
        while True:
            await self.wake_event.wait()
            self.wake_event.clear()
            while outbox:
                # The frames due before the outbox filled go first.
                self.fanout.count(self, self.flush())
                frame = outbox.pop()
                self.sending = True
                try:
                    # Waits while the transport buffer is over write_limit: only this client waits.
                    await self._send(frame)
                except ConnectionClosed:
                    return
                finally:
                    self.sending = False
                self.fanout.counts.frames_out.inc()
                self.fanout.counts.bytes_out.inc(len(frame.data))

    def _deflated(self, stream: Stream, frame: Frame) -> bytes:
        """A frame's bytes for a client that compresses. Standings are the same for every
        client in step: compressed once, shared. A reply may echo what the client sent: it
        goes plain (no compression oracle)."""
        if frame.kind == "reply":
            return text_frame(frame.data)
        return self.fanout.deflate.frame(stream, frame.data)

    async def _send(self, frame: Frame) -> None:
        """One frame of the outbox, written when the transport takes it. A client that
        compresses gets standings compressed here too, in the order of its chain: a slow
        client is the one that gains most from smaller frames."""
        stream = self.stream
        ws = self.ws
        if stream is None:
            await ws.send(frame.data, text=True)
            return
        # As ``send``: the connection must be open; the write is followed by the drain.
        async with ws.send_context():
            ws.transport.write(self._deflated(stream, frame))


class Fanout:
    """Writes, at the end of each turn of the event loop, the frames due to every client."""

    def __init__(
        self,
        counts: Counts,
        call_soon: Callable[[Callable[[], None]], object],
        clock: Callable[[], float],
        deflate_epoch_s: float,
    ) -> None:
        self.counts = counts
        self.deflate = SharedDeflate(counts)
        self._call_soon = call_soon
        self._clock = clock
        self._epoch_s = deflate_epoch_s
        self._next_epoch = clock() + deflate_epoch_s
        self._due: list[Writer] = []
        self._scheduled = False

    def flush_later(self, writer: Writer) -> None:
        self._due.append(writer)
        if not self._scheduled:
            self._scheduled = True
            self._call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self.deflate.roots:
            now = self._clock()
            if now >= self._next_epoch:
                # Clients that went their own way meet again on the next message's root.
                self.deflate.tick()
                self._next_epoch = now + self._epoch_s
        writers, self._due = self._due, []
        wire: dict[int, tuple[bytes, bytes]] = {}
        for writer in writers:
            self.count(writer, writer.flush(wire))

    def count(self, writer: Writer, frames: int) -> None:
        if frames:
            self.counts.frames_out.inc(frames)
            self.counts.bytes_out.inc(writer.written_bytes)
            self.counts.writes.inc()
            writer.written_bytes = 0
