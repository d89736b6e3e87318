"""The load client's websocket connection: websockets' sans-I/O protocol on an asyncio Protocol.

``Session`` drives ``websockets.client.ClientProtocol`` (bytes in, messages and
bytes out, no I/O), with ``FrameReader`` for the server's frames (inflating
them when permessage-deflate was agreed);
``SessionProtocol`` is the thin asyncio shell that puts it on a transport. No
task, future or queue per frame: each read is parsed whole and its messages
handed on in one go.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable, Sequence
from typing import cast

from websockets.client import ClientProtocol
from websockets.exceptions import ProtocolError
from websockets.extensions.base import ClientExtensionFactory
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import SEND_EOF, State
from websockets.uri import parse_uri

OnMessage = Callable[[bytes, float], None]
"""Called with each whole message (text or binary) and the wall time it was read at."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""A message larger than this closes the connection as an error (1009)."""

PROTOCOL_BUFFER_BYTES = 16 * 1024
"""Read buffer of each ``SessionProtocol``: a few frames per read; a backlog takes more reads."""

_TEXT, _BINARY, _CONT = Opcode.TEXT, Opcode.BINARY, Opcode.CONT


class Session:
    """One websocket client connection without I/O: feed it bytes, send what it gives back.

    websockets' ``ClientProtocol`` makes the opening handshake (sent on
    creation) and every frame the client sends. Once open, the frames the server
    sends are read by ``FrameReader``, which inflates them as agreed when the
    server took permessage-deflate; with any other extension the protocol reads
    them. ``receive`` hands each
    whole message to ``on_message`` and leaves the answers owed to the server
    (pong, close) in ``writes()``.
    """

    def __init__(
        self,
        url: str,
        on_message: OnMessage,
        *,
        compression: bool = False,
        max_size: int = MAX_MESSAGE_BYTES,
    ) -> None:
        # None, not []: an empty list sends an empty extensions header, which servers refuse.
        extensions: list[ClientExtensionFactory] | None = (
            [ClientPerMessageDeflateFactory()] if compression else None
        )
        self.protocol = protocol = ClientProtocol(
            parse_uri(url), extensions=extensions, max_size=max_size
        )
        protocol.send_request(protocol.connect())
        self._on_message = on_message
        self._max_size = max_size
        self._head = bytearray()
        """The handshake response so far (until its end is found)."""
        self.frames: FrameReader | None = None
        """Reads the server's frames once open, unless an extension is in use."""
        self._fragments: list[bytes] = []
        self.refused = ""
        """Why the opening handshake failed (empty while it has not)."""
        self.closing = False
        """The connection is over: the server closed it or sent what it may not."""

    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN

    def receive(self, received: bytes | memoryview, now: float) -> bool:
        """Take bytes read from the server (a view of a reused buffer is fine: none is kept).

        True if they held only messages: nothing to send, no change of state.
        """
        frames = self.frames
        if frames is not None:
            return frames.feed(received, now)
        protocol = self.protocol
        data = bytes(received)
        if protocol.state is State.CONNECTING:
            data = self._handshake_part(data)
            if self.frames is not None:
                if data:
                    self.frames.feed(data, now)
                return False
        protocol.receive_data(data)
        self._handle(protocol.events_received(), now)
        if protocol.state is State.CLOSING or protocol.state is State.CLOSED:
            self.closing = True
        return False

    def _handshake_part(self, data: bytes) -> bytes:
        """Give the protocol the response's head only; what follows it is frames."""
        fed = len(self._head)
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            return data
        cut = end + 4 - fed
        protocol = self.protocol
        protocol.receive_data(data[:cut])
        self._handle(protocol.events_received(), 0.0)
        if protocol.state is State.OPEN:
            extensions = protocol.extensions
            if not extensions:
                self.frames = FrameReader(self._on_message, self._control, self._max_size)
            elif len(extensions) == 1 and isinstance(extensions[0], PerMessageDeflate):
                agreed = extensions[0]
                self.frames = FrameReader(
                    self._on_message,
                    self._control,
                    self._max_size,
                    inflate=Inflate(
                        agreed.remote_max_window_bits, agreed.remote_no_context_takeover
                    ),
                )
            else:  # an extension the lean reader does not know: the protocol reads
                protocol.receive_data(data[cut:])
                self._handle(protocol.events_received(), 0.0)
                return b""
        return data[cut:]

    def receive_eof(self, now: float) -> None:
        protocol = self.protocol
        if self.frames is None:
            protocol.receive_eof()
            # A refusal without a length is only whole at the end of the stream.
            self._handle(protocol.events_received(), now)
        if not self.refused and protocol.state is State.CONNECTING:
            self.refused = "closed during the handshake"
        self.closing = True

    def _handle(self, events: Sequence[object], now: float) -> None:
        for event in events:
            if type(event) is Frame:
                opcode = event.opcode
                if opcode is _TEXT or opcode is _BINARY:
                    if event.fin:
                        self._on_message(bytes(event.data), now)
                    else:
                        self._fragments = [bytes(event.data)]
                elif opcode is _CONT:
                    self._fragments.append(bytes(event.data))
                    if event.fin:
                        whole = b"".join(self._fragments)
                        self._fragments = []
                        self._on_message(whole, now)
                # ping and close: the protocol has queued the answer in writes()
            elif isinstance(event, Response):
                self._handshake(event)

    def _handshake(self, response: Response) -> None:
        failure = self.protocol.handshake_exc
        if failure is None:
            return
        if response.status_code != 101:
            self.refused = (
                f"handshake refused: HTTP/1.1 {response.status_code} {response.reason_phrase}"
            )
        else:
            self.refused = f"handshake: {failure}"

    def _control(self, opcode: int, payload: bytes) -> None:
        """A ping, a close or a broken frame from the lean reader: answer as RFC 6455 says."""
        protocol = self.protocol
        if opcode == OP_PING:
            protocol.send_pong(payload)
        elif opcode == OP_CLOSE:
            try:
                close = Close.parse(payload)
                protocol.send_close(close.code, close.reason)
            except (ProtocolError, UnicodeDecodeError):
                protocol.send_close(1002)
            self.closing = True
        elif opcode in (_TOO_BIG, _MASKED, _BROKEN):
            protocol.send_close(1009 if opcode == _TOO_BIG else 1002)
            self.closing = True

    def send_text(self, text: bytes) -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_text(text)

    def close(self) -> None:
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)

    def writes(self) -> list[bytes]:
        """What to send now; ``SEND_EOF`` (b"") means: end the stream."""
        return self.protocol.data_to_send()

    def failure(self) -> str:
        """Why the connection cannot open, once that is known ("" otherwise)."""
        if self.refused:
            return self.refused
        failure = self.protocol.handshake_exc
        return f"handshake: {failure}" if failure is not None else ""


OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING = 0x0, 0x1, 0x2, 0x8, 0x9
_TOO_BIG, _MASKED, _BROKEN = -1, -2, -3
"""Told to the control callback for a frame that ends the connection."""
_TAIL = b"\x00\x00\xff\xff"


class Inflate:
    """The client's side of permessage-deflate (RFC 7692) for the messages it receives."""

    __slots__ = ("bits", "fresh", "inflater")

    def __init__(self, window_bits: int, no_context_takeover: bool) -> None:
        self.bits = window_bits
        self.fresh = no_context_takeover
        """The server does not refer back to earlier messages: one inflater per message."""
        self.inflater = zlib.decompressobj(-window_bits)

    def message(self, data: bytes, max_size: int) -> bytes | None:
        """The message inflated; None when it would be larger than ``max_size``.
        ``zlib.error`` when it is not deflate data that follows what came before."""
        if self.fresh:
            self.inflater = zlib.decompressobj(-self.bits)
        inflater = self.inflater
        out = inflater.decompress(data + _TAIL, max_size)
        if inflater.unconsumed_tail:
            return None
        return out


class FrameReader:
    """The frames a server sends (RFC 6455 section 5.2), parsed in place, and inflated where
    permessage-deflate was agreed (RFC 7692).

    websockets' own reader is a generator, a ``Frame`` object and an enum lookup
    per frame: alone, 3.2 µs of CPU per 1.4 KB frame (a frame per read) against
    1.7 µs here; in a client process of 200 connections on uvloop, 4 to 6 µs
    more per frame, half the client's budget of 10 µs for the whole frame.
    """

    def __init__(
        self,
        on_message: OnMessage,
        on_control: Callable[[int, bytes], None],
        max_size: int,
        *,
        inflate: Inflate | None = None,
    ) -> None:
        self._on_message = on_message
        self._on_control = on_control
        self._max_size = max_size
        self._inflate = inflate
        self._rsv = 0x40 if inflate is not None else 0
        """The RSV bits a message's first frame may carry: RSV1, with permessage-deflate."""
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._compressed = False
        self._broken = False

    def feed(self, data: bytes | memoryview, now: float) -> bool:
        """Parse what arrived; False if it held a control frame (the answer is owed)."""
        if self._broken:
            return True
        buf = self._buf
        if buf:
            buf += data
            view: bytes | bytearray | memoryview = buf
        else:
            view = data  # the usual case: the read holds whole frames, no copy
        n = len(view)
        pos = 0
        plain = True
        while n - pos >= 2:
            b0 = view[pos]
            b1 = view[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = view[pos + 2] << 8 | view[pos + 3]
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(view[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80 or length > self._max_size:
                # A server never masks (RFC 6455 5.1); an oversized frame is refused.
                self._broken = True
                self._on_control(_MASKED if b1 & 0x80 else _TOO_BIG, b"")
                return False
            start = pos + head
            if n - start < length:
                break
            pos = start + length
            payload = bytes(view[start:pos])
            opcode = b0 & 0x0F
            rsv = b0 & 0x70
            if rsv and (rsv & ~self._rsv or opcode not in (OP_TEXT, OP_BINARY)):
                # RSV bits that no agreed extension gives meaning to (RFC 6455 5.2).
                self._broken = True
                self._on_control(_BROKEN, b"")
                return False
            if opcode in (OP_TEXT, OP_BINARY):
                if b0 & 0x80:
                    if not rsv:
                        self._on_message(payload, now)
                    elif not self._message(payload, now):
                        return False
                else:
                    self._fragments = [payload]
                    self._compressed = bool(rsv)
            elif opcode == OP_CONT:
                self._fragments.append(payload)
                if b0 & 0x80:
                    whole = b"".join(self._fragments)
                    self._fragments = []
                    if not self._compressed:
                        self._on_message(whole, now)
                    elif not self._message(whole, now):
                        return False
            elif opcode in (OP_PING, OP_CLOSE):
                self._on_control(opcode, payload)
                plain = False
                if opcode == OP_CLOSE:
                    self._broken = True  # nothing after a close counts
                    return False
        if view is buf:
            del buf[:pos]
        elif pos < n:
            buf += view[pos:]
        return plain

    def _message(self, data: bytes, now: float) -> bool:
        """Inflate a compressed message and hand it on; False (the connection is over) when
        it inflates past ``max_size``."""
        assert self._inflate is not None
        try:
            whole = self._inflate.message(data, self._max_size)
        except zlib.error:
            self._broken = True
            self._on_control(_BROKEN, b"")  # not deflate data: a protocol error, 1002
            return False
        if whole is None:
            self._broken = True
            self._on_control(_TOO_BIG, b"")
            return False
        self._on_message(whole, now)
        return True


class SessionProtocol(asyncio.BufferedProtocol):
    """A ``Session`` on an asyncio transport: one connection, woken by the loop itself.

    Buffered: the transport reads into this connection's buffer, where a plain
    ``Protocol``'s transport allocates a fresh 256 KiB bytes object per read,
    which glibc maps and unmaps each time (on the stock loop, more CPU than
    everything else the read costs).
    """

    def __init__(
        self,
        url: str,
        on_message: OnMessage,
        *,
        compression: bool = False,
        buffer_bytes: int = PROTOCOL_BUFFER_BYTES,
    ) -> None:
        self.session = Session(url, on_message, compression=compression)
        self._buffer = memoryview(bytearray(buffer_bytes))
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's is no subclass of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            failure = self.session.failure()
            self.opened.set_exception(
                ConnectionError(failure) if failure else exc or ConnectionError("closed")
            )
        if not self.closed.done():
            self.closed.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer

    def buffer_updated(self, nbytes: int) -> None:
        session = self.session
        if session.receive(self._buffer[:nbytes], time.time()):
            return  # messages only: the usual case
        if not self.opened.done():
            if session.open:
                self.opened.set_result(None)
            elif failure := session.failure():
                self.opened.set_exception(ConnectionError(failure))
        self._flush()
        if session.closing and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        self.session.receive_eof(time.time())
        self._flush()
        return None

    def send_text(self, text: bytes) -> None:
        self.session.send_text(text)
        self._flush()

    def close(self) -> None:
        self.session.close()
        self._flush()
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data in self.session.writes():
            if data == SEND_EOF:
                transport.close()
                return
            transport.write(data)
